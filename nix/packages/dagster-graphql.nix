{ python3Packages, dagster-src, dagster, dagster-graphql, runCommand, python3, packageTests ? import ../package-tests.nix { inherit runCommand python3; } }:
python3Packages.buildPythonPackage rec {
  pname = "dagster-graphql";
  inherit (src) version;
  pyproject = true;
  src = dagster-src.package {
    path = "python_modules/dagster-graphql";
    distribution = "dagster-graphql";
  };
  build-system = [ python3Packages.hatchling ];
  dependencies = [ dagster ] ++ (with python3Packages; [
    gql
    graphene
    requests
    starlette
  ])
  # gql[requests]: its transport needs requests-toolbelt (problem 3 of the hand-run report).
  ++ python3Packages.gql.optional-dependencies.requests;
  passthru.executables = [ "dagster-graphql" ];
  # Its Dagster asset checks, by name. The package takes itself (graph.nix drops the self edge) and the
  # helpers (nix/default.nix passes them; a plain callPackage, as Flox's, imports them).
  passthru.tests = {
    imports = packageTests.imports { package = dagster-graphql; };
    version = packageTests.version { package = dagster-graphql; };
  };
  pythonImportsCheck = [ "dagster_graphql" ];
}
