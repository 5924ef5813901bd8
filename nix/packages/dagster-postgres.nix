{ python3Packages, dagster-src, dagster, dagster-postgres, runCommand, python3, packageTests ? import ../package-tests.nix { inherit runCommand python3; } }:
python3Packages.buildPythonPackage rec {
  pname = "dagster-postgres";
  inherit (src) version;
  pyproject = true;
  src = dagster-src.package {
    path = "python_modules/libraries/dagster-postgres";
    distribution = "dagster-postgres";
    # A library: 0.29.27 belongs to Dagster 1.13.27.
    versionScheme = "library";
  };
  build-system = [ python3Packages.hatchling ];
  dependencies = [ dagster ] ++ (with python3Packages; [
    psycopg2-binary
  ]);
  passthru.executables = [ ];
  passthru.tests = {
    imports = packageTests.imports { package = dagster-postgres; };
  };
  pythonImportsCheck = [ "dagster_postgres" ];
}
