{ python3Packages, dagster-src, dagster, dagster-graphql }:
python3Packages.buildPythonPackage {
  pname = "dagster-webserver";
  inherit (dagster-src) version;
  pyproject = true;
  src = dagster-src.subdir "python_modules/dagster-webserver";
  build-system = [ python3Packages.hatchling ];
  dependencies = [ dagster dagster-graphql ] ++ (with python3Packages; [
    click
    starlette
    uvicorn
  ])
  # uvicorn[standard]
  ++ python3Packages.uvicorn.optional-dependencies.standard;
  # What the cli_version check runs (nothing for a library).
  passthru.executables = [ "dagster-webserver" "dagster-webserver-debug" ];
  pythonImportsCheck = [ "dagster_webserver" ];
}
