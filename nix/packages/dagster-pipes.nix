{ python3Packages, dagster-src }:
python3Packages.buildPythonPackage {
  pname = "dagster-pipes";
  inherit (dagster-src) version;
  pyproject = true;
  src = dagster-src.subdir "python_modules/dagster-pipes";
  build-system = [ python3Packages.hatchling ];
  # What the cli_version check runs (nothing for a library).
  passthru.executables = [ ];
  pythonImportsCheck = [ "dagster_pipes" ];
}
