{ python3Packages, dagster-src, dagster-pipes, runCommand, python3, packageTests ? import ../package-tests.nix { inherit runCommand python3; } }:
python3Packages.buildPythonPackage rec {
  pname = "dagster-pipes";
  inherit (src) version;
  pyproject = true;
  src = dagster-src.package {
    path = "python_modules/dagster-pipes";
    distribution = "dagster-pipes";
  };
  build-system = [ python3Packages.hatchling ];
  passthru.executables = [ ];
  # Its Dagster asset checks, by name. The package takes itself (graph.nix drops the self edge) and the
  # helpers (nix/default.nix passes them; a plain callPackage, as Flox's, imports them).
  passthru.tests = {
    imports = packageTests.imports { package = dagster-pipes; };
  };
  pythonImportsCheck = [ "dagster_pipes" ];
}
