# The Dagster package set. Every file in ./packages is one package, written in nixpkgs' callPackage
# convention, so the same files work under nixpkgs, under Flox (.flox/pkgs/) and under the bootstrap
# scope below. Adding ./packages/foo.nix adds the attribute `foo`; nothing here lists packages by name.
#
#   nix-build nix -A dagster-webserver                       # scope chosen automatically
#   nix-build nix -A dagster --argstr scope bootstrap        # bare Nix, no nixpkgs
#   nix-build nix -A dagster --arg pkgs 'import <nixpkgs> {}'
{
  # "nixpkgs": nixpkgs' buildPythonPackage, pure and sandbox-friendly.
  # "bootstrap": a small scope on builtins.derivation with the host's Python (see ./bootstrap).
  # "auto": nixpkgs when `pkgs` is given or <nixpkgs> is on NIX_PATH, bootstrap otherwise.
  scope ? "auto"
, pkgs ? null
, pins ? builtins.fromJSON (builtins.readFile ./pins.json)
  # "release" (sdists of one pinned Dagster release) or "git" (a repository at a rev).
, source ? pins.source
  # Interpreter of the bootstrap scope; its builders run as nixbld users and cannot read /root.
, hostPython ? "/usr/bin/python3"
  # false: evaluate the bootstrap scope without a wheel lock for this interpreter (nix/bootstrap/lock.py
  # reads the package set's declarations to make that lock; nothing built from such a scope would work).
, requireWheelLock ? true
  # The bootstrap scope's Nix system, by default builtins.currentSystem (which pure evaluation lacks: ../flake.nix
  # passes it for each system it exposes).
, system ? null
  # Where the expressions find each other (an attribute set holding every package of this set): by default
  # the set itself. ../flake.nix's overlay passes the extended python3Packages, so that an override of one
  # package there (overridePythonAttrs, a later extension) reaches the packages that depend on it.
, packagesFrom ? null
}:
let
  inherit (builtins) attrNames filter foldl' functionArgs intersectAttrs listToAttrs match readDir;

  nixpkgsOnPath = builtins.tryEval <nixpkgs>;
  chosenScope =
    if scope == "auto" then (if pkgs != null || nixpkgsOnPath.success then "nixpkgs" else "bootstrap")
    else if scope == "nixpkgs" || scope == "bootstrap" then scope
    else throw "nix/default.nix: scope must be \"auto\", \"nixpkgs\" or \"bootstrap\", not \"${scope}\"";

  base =
    if chosenScope == "bootstrap" then import ./bootstrap ({ inherit hostPython requireWheelLock; }
      // (if system == null then { } else { inherit system; }))
    else import ./nixpkgs-scope.nix {
      pkgs = if pkgs != null then pkgs
        else if nixpkgsOnPath.success then import nixpkgsOnPath.value { }
        else throw "nix/default.nix: scope \"nixpkgs\" needs `--arg pkgs 'import <nixpkgs> {}'` or <nixpkgs> on NIX_PATH";
    };

  entries = readDir ./packages;
  # A file's name is the attribute, the formal argument of the packages that depend on it and the Dagster
  # asset key, so it must be a Nix identifier that Dagster accepts too.
  validName = file:
    let name = builtins.head (match "(.*)\\.nix" file); in
    if match "[A-Za-z_][A-Za-z0-9_-]*" name != null then name
    else throw ("nix/default.nix: package file nix/packages/${file} has a name that cannot be a package: "
      + "the name before .nix must be letters, digits, '_' and '-', not starting with a digit or '-' "
      + "([A-Za-z_][A-Za-z0-9_-]*), since it is the attribute, the argument other packages take and the "
      + "Dagster asset key. Rename the file.");
  packageNames = map validName
    (filter (file: entries.${file} == "regular" && match ".*\\.nix" file != null) (attrNames entries));

  # The expressions see the scope, each other, the source pins and the test helpers of their
  # passthru.tests (under names nixpkgs does not use).
  context = base // (if packagesFrom == null then packages else builtins.mapAttrs (name: _: packagesFrom.${name}) packages) // {
    dagsterPins = pins;
    dagsterSource = source;
    packageTests = import ./package-tests.nix { inherit (base) runCommand python3 postgresql; };
  };
  callPackage = file:
    let fn = import file;
    in fn (intersectAttrs (functionArgs fn) context);

  packages = listToAttrs (map (name: {
    inherit name;
    value = callPackage (./packages + "/${name}.nix");
  }) packageNames);
in
packages
