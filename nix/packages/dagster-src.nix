# Dagster's monorepo source tree, in the same layout whichever way it is obtained, so the package
# expressions never change: from the five sdists of one pinned release, or from git at a rev.
# Each package cuts its own directory out with `dagster-src.subdir` (a directory can't be a `src`).
{ runCommand
, fetchgit
, fetchPypi
  # Given by nix/default.nix; the defaults serve callers that only know callPackage (Flox).
, dagsterPins ? builtins.fromJSON (builtins.readFile ../pins.json)
, dagsterSource ? dagsterPins.source
}:
let
  inherit (builtins) attrNames concatStringsSep mapAttrs match replaceStrings throw;

  # Where each Python package lives in github.com/dagster-io/dagster.
  layout = {
    dagster = "python_modules/dagster";
    dagster-graphql = "python_modules/dagster-graphql";
    dagster-pipes = "python_modules/dagster-pipes";
    dagster-webserver = "python_modules/dagster-webserver";
    dagster-shared = "python_modules/libraries/dagster-shared";
  };

  release = dagsterPins.release;
  git = dagsterPins.git;

  sdists = mapAttrs (name: hash: fetchPypi {
    pname = replaceStrings [ "-" ] [ "_" ] name;
    inherit (release) version;
    inherit hash;
  }) release.hashes;

  fromRelease = runCommand "dagster-src-${release.version}" { } (''
    mkdir -p "$out"
  '' + concatStringsSep "" (map (name: ''
    mkdir -p "$out/${layout.${name}}"
    tar -xzf ${sdists.${name}} -C "$out/${layout.${name}}" --strip-components=1
  '') (attrNames release.hashes)));

  fromGit =
    if git.rev == null || match "[0-9a-f]{40}" git.rev == null then
      throw "nix/pins.json: git.rev must be a full 40-hex commit, not ${builtins.toJSON git.rev}; run the update job to pin one"
    else fetchgit {
      inherit (git) url rev;
      hash = if git.hash == null then "" else git.hash;
    };

  tree =
    if dagsterSource == "release" then fromRelease
    else if dagsterSource == "git" then fromGit
    else throw "nix/pins.json: source must be \"release\" or \"git\", not \"${dagsterSource}\"";

  version = if dagsterSource == "release" then release.version else git.version;

  # Cut one package's directory out of the tree. A wrong path (e.g. dagster-shared under
  # python_modules/ instead of python_modules/libraries/) fails naming the closest existing one.
  subdir = path: runCommand "${baseNameOf path}-source-${replaceStrings [ "!" "+" ] [ "-" "-" ] version}" { } ''
    if [ -d "${tree}/${path}" ]; then
      cp -r "${tree}/${path}" "$out"
      exit 0
    fi
    echo "error: dagster-src has no directory '${path}'." >&2
    closest=$(cd "${tree}" && find . -maxdepth 4 -type d -name '${baseNameOf path}' | sed 's|^\./||' | head -n 1)
    if [ -n "$closest" ]; then
      echo "       The closest existing directory is '$closest': use dagster-src.subdir \"$closest\"." >&2
    else
      echo "       Existing package directories:" $(cd "${tree}" && ls -d python_modules/* python_modules/libraries/* 2>/dev/null) >&2
    fi
    exit 1
  '';
in
tree // {
  inherit version subdir layout;
  sourceMode = dagsterSource;
}
