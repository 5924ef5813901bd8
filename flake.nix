# This repository as a flake, with no inputs: it evaluates and builds offline (README, "This repository as a
# flake").
#
#   packages.<system>.<package>        every package of nix/ in the bootstrap scope (nix/bootstrap: a bare Nix,
#                                      no nixpkgs; it borrows the host's /usr/bin/python3 and PostgreSQL)
#   packages.<system>.default          dagster-webserver
#   checks.<system>.<package>-<test>   each package's passthru.tests (its Dagster asset checks)
#   overlays.default                   nixpkgs users: the Dagster packages layered over every python3Packages
#                                      (pythonPackagesExtensions), built with nixpkgs' own buildPythonPackage
#
# The bootstrap scope looks at the host while it evaluates: which wheel lock of nix/bootstrap/wheels.json fits
# /usr/bin/python3 (3.11 on Debian 12, 3.13 on Debian 13) and which PostgreSQL major /usr/lib/postgresql holds.
# Pure evaluation forbids reading those paths (and there is no way to pass a flake arguments), so packages and
# checks need --impure; without it they fail evaluation saying so. The overlay is pure.
{
  description = "Dagster's own Python packages built with Nix: the package set of dagster-nix-builder";

  # What the bootstrap scope's builders borrow from a usr-merged host (Debian 12 and later): with the sandbox on
  # (Debian 13's Nix) they see only the store and sandbox-paths. Nix applies this only when the user accepts it
  # (--accept-flake-config, as root or a trusted user); `--option extra-sandbox-paths '/usr /lib /lib64'` is the
  # same. dagster_nix_builder/nix/settings.py (HOST_PROGRAM_PATHS) passes the same paths to its own builds.
  nixConfig.extra-sandbox-paths = [ "/usr" "/lib" "/lib64" ];

  outputs = { self }:
    let
      inherit (builtins) attrNames concatMap filter listToAttrs mapAttrs;

      systems = [ "x86_64-linux" "aarch64-linux" ];
      forSystems = f: listToAttrs (map (system: { name = system; value = f system; }) systems);

      # builtins.currentSystem exists in impure evaluation only.
      impure = builtins ? currentSystem;
      pureError = name: throw (
        "dagster-nix-builder's flake: ${name} is built by the bootstrap scope, which borrows the host's "
        + "/usr/bin/python3 (its version picks the wheel lock) and /usr/lib/postgresql and must read them while "
        + "evaluating; pure evaluation forbids that. Pass --impure (README, \"This repository as a flake\"), "
        + "or use overlays.default with nixpkgs.");

      # The same call as `nix-build nix --argstr scope bootstrap`, so the same derivations (and store paths).
      bootstrapSet = system: import ./nix { scope = "bootstrap"; inherit system; };
      # Attribute names come from nix/packages/ alone (nothing is evaluated), in pure evaluation too.
      packageNames = attrNames (bootstrapSet "x86_64-linux");

      packagesFor = system:
        let set = bootstrapSet system;
        in listToAttrs (map (name: { inherit name; value = if impure then set.${name} else pureError name; })
          packageNames);

      # <package>-<test> for every passthru.tests entry (the Dagster asset checks of the code location).
      checksFor = system:
        let
          set = bootstrapSet system;
          testsOf = name: if impure then set.${name}.passthru.tests or { } else { };
          checks = listToAttrs (concatMap (package:
            map (test: { name = "${package}-${test}"; value = (testsOf package).${test}; })
              (attrNames (testsOf package)))
            packageNames);
          clashes = filter (name: checks ? ${name}) packageNames;
        in
        if !impure then { flake-needs-impure = pureError "checks"; }
        else if clashes != [ ] then
          throw "flake.nix: a check name <package>-<test> equals the package ${builtins.head clashes}"
        else checks;
    in
    {
      packages = forSystems (system: packagesFor system // { default = (packagesFor system).dagster-webserver; });

      checks = forSystems checksFor;

      # For nixpkgs users: every package of nix/ in each Python package set (python3Packages, python313Packages,
      # ...), through nix/nixpkgs-scope.nix with that set's own buildPythonPackage and interpreter, so
      # python3Packages.dagster is ours (1.13.27) and its dependencies are ours or nixpkgs'. Needs a nixpkgs with
      # pythonPackagesExtensions (22.11 and later).
      overlays.default = final: prev: {
        pythonPackagesExtensions =
          (prev.pythonPackagesExtensions or (throw
            "dagster-nix-builder's overlays.default needs a nixpkgs with pythonPackagesExtensions (22.11 or later)"))
          ++ [
            (pythonFinal: pythonPrev: import ./nix {
              scope = "nixpkgs";
              # nix/nixpkgs-scope.nix takes these names from pkgs: this set's interpreter and packages.
              pkgs = {
                inherit (final) runCommand fetchgit fetchPypi postgresql;
                python3 = pythonFinal.python;
                python3Packages = pythonFinal;
              };
              packagesFrom = pythonFinal;
            })
          ];
      };
    };
}
