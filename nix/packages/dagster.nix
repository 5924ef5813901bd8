{ python3Packages, dagster-src, dagster-shared, dagster-pipes }:
python3Packages.buildPythonPackage {
  pname = "dagster";
  inherit (dagster-src) version;
  pyproject = true;
  src = dagster-src.subdir "python_modules/dagster";
  build-system = [ python3Packages.hatchling ];
  dependencies = [ dagster-shared dagster-pipes ] ++ (with python3Packages; [
    alembic
    antlr4-python3-runtime
    click
    coloredlogs
    docstring-parser
    filelock
    grpcio
    grpcio-health-checking
    jinja2
    protobuf
    # pydantic was missing in the hand-run report (problem 2); dagster imports it directly.
    pydantic
    python-dotenv
    pytz
    requests
    rich
    six
    sqlalchemy
    structlog
    tabulate
    tomli
    toposort
    tqdm
    tzdata
    universal-pathlib
    watchdog
  ]);
  # Upper bounds Dagster pins for its own CI; nixpkgs may carry a newer release.
  pythonRelaxDeps = [ "grpcio-health-checking" "protobuf" "antlr4-python3-runtime" ];
  # What the cli_version check runs (nothing for a library).
  passthru.executables = [ "dagster" "dagster-daemon" ];
  pythonImportsCheck = [ "dagster" ];
}
