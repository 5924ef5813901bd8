{ python3Packages, dagster-src, dagster-shared, dagster-cloud-cli, runCommand, python3, packageTests ? import ../package-tests.nix { inherit runCommand python3; } }:
python3Packages.buildPythonPackage rec {
  pname = "dagster-cloud-cli";
  inherit (src) version;
  pyproject = true;
  src = dagster-src.package {
    path = "python_modules/libraries/dagster-cloud-cli";
    distribution = "dagster-cloud-cli";
  };
  build-system = [ python3Packages.hatchling ];
  dependencies = [ dagster-shared ] ++ (with python3Packages; [
    click
    github3-py
    gitpython
    jinja2
    packaging
    pyyaml
    questionary
    requests
    setuptools
    typer
    validators
  ]);
  passthru.executables = [ "dagster-cloud" "dagster-plus" ];
  passthru.tests = {
    imports = packageTests.imports { package = dagster-cloud-cli; };
    version = packageTests.version { package = dagster-cloud-cli; };
  };
  pythonImportsCheck = [ "dagster_cloud_cli" ];
}
