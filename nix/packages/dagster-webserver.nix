{ python3Packages, dagster-src, dagster, dagster-graphql, dagster-webserver, runCommand, python3, packageTests ? import ../package-tests.nix { inherit runCommand python3; } }:
python3Packages.buildPythonPackage rec {
  pname = "dagster-webserver";
  inherit (src) version;
  pyproject = true;
  src = dagster-src.package {
    path = "python_modules/dagster-webserver";
    distribution = "dagster-webserver";
  };
  build-system = [ python3Packages.hatchling ];
  dependencies = [ dagster dagster-graphql ] ++ (with python3Packages; [
    click
    starlette
    uvicorn
  ])
  # uvicorn[standard]
  ++ python3Packages.uvicorn.optional-dependencies.standard;
  passthru.executables = [ "dagster-webserver" "dagster-webserver-debug" ];
  # Its Dagster asset checks, by name. The package takes itself (graph.nix drops the self edge) and the
  # helpers (nix/default.nix passes them; a plain callPackage, as Flox's, imports them).
  passthru.tests = {
    imports = packageTests.imports { package = dagster-webserver; };
    # dagster-webserver-debug has no --version option upstream.
    version = packageTests.version { package = dagster-webserver; withoutVersion = [ "dagster-webserver-debug" ]; };
    webserver = packageTests.webserver { package = dagster-webserver; };
  };
  pythonImportsCheck = [ "dagster_webserver" ];
}
