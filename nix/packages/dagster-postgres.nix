{ python3Packages, dagster-src, dagster, dagster-postgres, runCommand, python3
  # Only for its postgres test (a real PostgreSQL on loopback); nixpkgs' pkgs.postgresql under callPackage.
, postgresql ? null
, packageTests ? import ../package-tests.nix { inherit runCommand python3 postgresql; }
}:
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
    postgres = packageTests.postgres { package = dagster-postgres; };
  };
  pythonImportsCheck = [ "dagster_postgres" ];
}
