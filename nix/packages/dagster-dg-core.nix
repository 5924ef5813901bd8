{ python3Packages, dagster-src, dagster-shared, dagster-cloud-cli, dagster-dg-core, runCommand, python3, packageTests ? import ../package-tests.nix { inherit runCommand python3; } }:
python3Packages.buildPythonPackage rec {
  pname = "dagster-dg-core";
  inherit (src) version;
  pyproject = true;
  src = dagster-src.package {
    path = "python_modules/libraries/dagster-dg-core";
    distribution = "dagster-dg-core";
  };
  build-system = [ python3Packages.hatchling ];
  dependencies = [ dagster-shared dagster-cloud-cli ] ++ (with python3Packages; [
    click
    click-aliases
    gql
    jinja2
    jsonschema
    markdown
    packaging
    python-dotenv
    pyyaml
    rich
    setuptools
    tomlkit
    typer
    typing-extensions
    watchdog
    yaspin
  ])
  # gql[requests]
  ++ python3Packages.gql.optional-dependencies.requests;
  passthru.executables = [ ];
  passthru.tests = {
    imports = packageTests.imports { package = dagster-dg-core; };
  };
  pythonImportsCheck = [ "dagster_dg_core" ];
}
