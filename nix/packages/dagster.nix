{ python3Packages, dagster-src, dagster-shared, dagster-pipes, dagster, runCommand, python3, packageTests ? import ../package-tests.nix { inherit runCommand python3; } }:
python3Packages.buildPythonPackage rec {
  pname = "dagster";
  inherit (src) version;
  pyproject = true;
  src = dagster-src.package {
    path = "python_modules/dagster";
    distribution = "dagster";
  };
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
  # Exactly the bounds nixpkgs' python3Packages violate (nixpkgs' runtime-deps check fails on them;
  # tests/test_nixpkgs_versions.py keeps this list exact): 1.13.27 wants coloredlogs<=14.0 (nixpkgs: 15.0.1),
  # grpcio-health-checking<1.82 (nixpkgs: 1.84.0), upper bounds of Dagster's own CI, and protobuf<7
  # (nixpkgs: 7.36.2, the 7.x line), which both open nixpkgs pull requests for Dagster (#518895, #521607)
  # relax too. The bootstrap scope's wheel lock meets all three; the list is the same in both scopes.
  pythonRelaxDeps = [ "coloredlogs" "grpcio-health-checking" "protobuf" ];
  passthru.executables = [ "dagster" "dagster-daemon" ];
  # Its Dagster asset checks, by name. The package takes itself (graph.nix drops the self edge) and the
  # helpers (nix/default.nix passes them; a plain callPackage, as Flox's, imports them).
  passthru.tests = {
    imports = packageTests.imports { package = dagster; };
    version = packageTests.version { package = dagster; };
  };
  pythonImportsCheck = [ "dagster" ];
}
