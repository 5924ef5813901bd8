{ python3Packages, dagster-src, dagster, dagster-cloud-cli, dagster-dg-core, dagster-rest-resources, dagster-dg-cli, runCommand, python3, packageTests ? import ../package-tests.nix { inherit runCommand python3; } }:
python3Packages.buildPythonPackage rec {
  pname = "dagster-dg-cli";
  inherit (src) version;
  pyproject = true;
  src = dagster-src.package {
    path = "python_modules/libraries/dagster-dg-cli";
    distribution = "dagster-dg-cli";
  };
  build-system = [ python3Packages.hatchling ];
  dependencies = [ dagster dagster-cloud-cli dagster-dg-core dagster-rest-resources ] ++ (with python3Packages; [
    requests
    typer
  ]);
  # `dg`, Dagster's current CLI.
  passthru.executables = [ "dg" ];
  passthru.tests = {
    imports = packageTests.imports { package = dagster-dg-cli; };
    version = packageTests.version { package = dagster-dg-cli; };
  };
  pythonImportsCheck = [ "dagster_dg_cli" ];
}
