{ python3Packages, dagster-src, dagster-shared, runCommand, python3, packageTests ? import ../package-tests.nix { inherit runCommand python3; } }:
python3Packages.buildPythonPackage rec {
  pname = "dagster-shared";
  inherit (src) version;
  pyproject = true;
  # Not under python_modules/ like the others (problem 4 of the hand-run report).
  src = dagster-src.package {
    path = "python_modules/libraries/dagster-shared";
    distribution = "dagster-shared";
  };
  build-system = [ python3Packages.hatchling ];
  # packaging and pyyaml were missing in the hand-run report (problem 1).
  dependencies = with python3Packages; [
    packaging
    platformdirs
    pydantic
    pyyaml
    tomlkit
    typing-extensions
  ];
  passthru.executables = [ ];
  # Its Dagster asset checks, by name. The package takes itself (graph.nix drops the self edge) and the
  # helpers (nix/default.nix passes them; a plain callPackage, as Flox's, imports them).
  passthru.tests = {
    imports = packageTests.imports { package = dagster-shared; };
  };
  pythonImportsCheck = [ "dagster_shared" ];
}
