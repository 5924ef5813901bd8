{ python3Packages, dagster-src }:
python3Packages.buildPythonPackage {
  pname = "dagster-shared";
  inherit (dagster-src) version;
  pyproject = true;
  # Not under python_modules/ like the others (problem 4 of the hand-run report).
  src = dagster-src.subdir "python_modules/libraries/dagster-shared";
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
  # What the cli_version check runs (nothing for a library).
  passthru.executables = [ ];
  pythonImportsCheck = [ "dagster_shared" ];
}
