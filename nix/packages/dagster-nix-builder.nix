# This project itself, from the repository's own source ("dogfooding"): the code location that builds the
# set is a package of the set, downstream of the Dagster it runs on (its formal arguments dagster and
# dagster-webserver are its asset edges). tests/test_self_hosting.py runs this code location on the
# Dagster Nix built, from this package's closure, and materializes a package with it.
#
# pyproject.toml is the single source: name, version and [project].dependencies are read from it. A
# requirement whose name is a package of this set takes that package; any other takes python3Packages.<name>
# (the wheel lock: nix/bootstrap/lock.py locks `passthru.requirements` of packages not on the index).
{ python3Packages, dagster, dagster-webserver, dagster-nix-builder, runCommand, python3, packageTests ? import ../package-tests.nix { inherit runCommand python3; } }:
let
  inherit (builtins) any concatStringsSep elem filter head match stringLength substring;

  root = ../..;
  # A copy of nix/ alone (or a package set placed elsewhere) has no project around it: then this package
  # fails to evaluate (the others are unaffected: graph.nix marks it, the asset's build names this message)
  # and declares no requirements or local sources.
  hasProject = builtins.pathExists (root + "/pyproject.toml") && builtins.pathExists (root + "/dagster_nix_builder");
  pyproject = if hasProject then builtins.fromTOML (builtins.readFile (root + "/pyproject.toml")) else throw
    "nix/packages/dagster-nix-builder.nix: this project's own package builds from the repository around the package set, but ${toString root} has no pyproject.toml and dagster_nix_builder/ (a copy of nix/ alone?)";

  # What the wheel is built from, relative to the repository root (with everything beneath a directory),
  # and the names never taken at any depth (caches, the component's state). dagster_nix_builder/components/package_set.py
  # hashes exactly these files (`passthru.localSources`) so its state follows an edit of them.
  localSources = {
    root = toString root;
    include = [ "pyproject.toml" "README.md" "dagster_nix_builder" ];
    exclude = [ "__pycache__" ".local_defs_state" ".mypy_cache" ".pytest_cache" ".ruff_cache" ];
    excludeSuffixes = [ ".pyc" ".pyo" ];
  };
  prefix = localSources.root + "/";
  relative = path: substring (stringLength prefix) (stringLength path) path;
  wanted = path: type:
    let rel = relative path; in
    !(elem (baseNameOf path) localSources.exclude)
    && !(any (suffix: hasSuffix suffix path) localSources.excludeSuffixes)
    && any (top: rel == top || substring 0 (stringLength top + 1) rel == "${top}/") localSources.include;
  hasSuffix = suffix: s: let n = stringLength s; k = stringLength suffix; in n >= k && substring (n - k) k s == suffix;
  # A fixed name: the store path depends on the files' contents only, not on the checkout's directory name.
  src = builtins.path { path = root; name = "dagster-nix-builder-source"; filter = wanted; };

  # PEP 508 name -> PEP 503 normal form (lowercase, runs of -_. as one -): the python3Packages attribute.
  normalize = name: concatStringsSep "-" (filter (p: builtins.isString p && p != "")
    (builtins.split "[-_.]+" (lowerCase name)));
  lowerCase = s: builtins.replaceStrings
    [ "A" "B" "C" "D" "E" "F" "G" "H" "I" "J" "K" "L" "M" "N" "O" "P" "Q" "R" "S" "T" "U" "V" "W" "X" "Y" "Z" ]
    [ "a" "b" "c" "d" "e" "f" "g" "h" "i" "j" "k" "l" "m" "n" "o" "p" "q" "r" "s" "t" "u" "v" "w" "x" "y" "z" ] s;
  nameOf = requirement:
    let found = match "[[:space:]]*([A-Za-z0-9][A-Za-z0-9._-]*).*" requirement; in
    if found == null then throw "nix/packages/dagster-nix-builder.nix: cannot read a name from pyproject.toml's requirement '${requirement}'"
    else normalize (head found);
  requirements = if hasProject then pyproject.project.dependencies else [ ];
  # The requirements this set builds itself (by their formal arguments, so they are the asset's edges).
  fromSet = { inherit dagster dagster-webserver; };
  dependencyOf = requirement: let name = nameOf requirement; in fromSet.${name} or python3Packages.${name};
in
python3Packages.buildPythonPackage {
  pname = pyproject.project.name;
  inherit (pyproject.project) version;
  pyproject = true;
  inherit src;
  build-system = [ python3Packages.setuptools ];
  dependencies = map dependencyOf requirements;
  passthru = {
    # PEP 508 lines, as pyproject.toml has them: what the wheel lock must hold for this package.
    inherit requirements;
    localSources = if hasProject then localSources else null;
    executables = [ ];
    tests = {
      imports = packageTests.imports {
        package = dagster-nix-builder;
        modules = [ "dagster_nix_builder" "dagster_nix_builder.components.package_set" ];
      };
    };
  };
  pythonImportsCheck = [ "dagster_nix_builder" ];
  meta.description = pyproject.project.description;
}
