{ python3Packages, dagster-src, dagster }:
python3Packages.buildPythonPackage {
  pname = "dagster-graphql";
  inherit (dagster-src) version;
  pyproject = true;
  src = dagster-src.subdir "python_modules/dagster-graphql";
  build-system = [ python3Packages.hatchling ];
  dependencies = [ dagster ] ++ (with python3Packages; [
    gql
    graphene
    requests
    starlette
  ])
  # gql[requests]: its transport needs requests-toolbelt (problem 3 of the hand-run report).
  ++ python3Packages.gql.optional-dependencies.requests;
  # What the cli_version check runs (nothing for a library).
  passthru.executables = [ "dagster-graphql" ];
  pythonImportsCheck = [ "dagster_graphql" ];
}
