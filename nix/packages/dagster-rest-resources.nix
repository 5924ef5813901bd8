{ python3Packages, dagster-src, dagster-shared, dagster-rest-resources, runCommand, python3, packageTests ? import ../package-tests.nix { inherit runCommand python3; } }:
python3Packages.buildPythonPackage rec {
  pname = "dagster-rest-resources";
  inherit (src) version;
  pyproject = true;
  src = dagster-src.package {
    path = "python_modules/libraries/dagster-rest-resources";
    distribution = "dagster-rest-resources";
    # A library: 0.29.27 belongs to Dagster 1.13.27.
    versionScheme = "library";
  };
  build-system = [ python3Packages.hatchling ];
  dependencies = [ dagster-shared ] ++ (with python3Packages; [
    httpx
    pydantic
  ]);
  passthru.executables = [ ];
  passthru.tests = {
    imports = packageTests.imports { package = dagster-rest-resources; };
  };
  pythonImportsCheck = [ "dagster_rest_resources" ];
}
