# Dagster's monorepo source tree, in the same layout whichever way it is obtained, so the package
# expressions never change: from the five sdists of one pinned release, or from git at a rev.
# Each package cuts its own directory out with `dagster-src.subdir` (a directory can't be a `src`).
#
# Whatever nix/pins.json says, this evaluates: pins that cannot be built (git.rev not pinned yet, a
# missing or malformed hash, an unknown source) give a derivation whose build fails with the reason.
# So the code location always loads, and an unusable pin is a failed build of dagster-src (blocking
# everything downstream) that says what to do, not an evaluation error that stops everything.
{ runCommand
, fetchgit
, fetchPypi
  # Given by nix/default.nix; the defaults serve callers that only know callPackage (Flox).
, dagsterPins ? builtins.fromJSON (builtins.readFile ../pins.json)
, dagsterSource ? dagsterPins.source or null
}:
let
  inherit (builtins) attrNames concatStringsSep filter isAttrs isList isString map match split substring toJSON;

  # Where each Python package lives in github.com/dagster-io/dagster.
  layout = {
    dagster = "python_modules/dagster";
    dagster-graphql = "python_modules/dagster-graphql";
    dagster-pipes = "python_modules/dagster-pipes";
    dagster-webserver = "python_modules/dagster-webserver";
    dagster-shared = "python_modules/libraries/dagster-shared";
  };
  packages = attrNames layout;

  release = dagsterPins.release or null;
  git = dagsterPins.git or null;

  # Store names allow [A-Za-z0-9+._?=-] only, and a PEP 440 version may hold more: master reports
  # `1!0+dev` (`!` separates an epoch). Names get a sanitized copy; `version` stays the real one.
  nameSafe = s: concatStringsSep "" (map (part: if isList part then "-" else part) (split "[^A-Za-z0-9._-]" s));

  isVersion = v: isString v && match "[0-9A-Za-z!+._-]+" v != null && match "-.*" v == null;
  # "" lets Nix report the real hash (specified/got), as nixpkgs' lib.fakeHash does.
  isHash = h: h == "" || (isString h && match "sha256-[A-Za-z0-9+/]{43}=" h != null);
  howToPin = "run the update job to pin one: dagster job execute -m dagster_nix_builder.definitions -j update_dagster_src -c update.yaml, with update.yaml `ops: {update_pins: {config: {source: git}}}` (README, \"Following upstream\")";

  releaseProblem =
    let
      hashes = release.hashes or null;
      missing = filter (p: (hashes.${p} or null) == null) packages;
      malformed = filter (p: !(isHash (hashes.${p} or ""))) packages;
    in
    if !isAttrs release then "nix/pins.json has no \"release\" object"
    else if !isVersion (release.version or null) then
      "nix/pins.json: release.version must be a version such as \"1.13.27\", not ${toJSON (release.version or null)}"
    else if !isAttrs hashes then "nix/pins.json: release.hashes must be an object of package -> SRI sha256 hash"
    else if missing != [ ] then
      "nix/pins.json: release.hashes has no hash for ${concatStringsSep ", " missing} (all of ${concatStringsSep ", " packages} are needed); run the update job with `version: ${release.version}` to let Nix compute them"
    else if malformed != [ ] then
      "nix/pins.json: release.hashes.${builtins.head malformed} must be an SRI sha256 hash (sha256-<43 base64>=), not ${toJSON hashes.${builtins.head malformed}}"
    else null;

  gitProblem =
    if !isAttrs git then "nix/pins.json has no \"git\" object"
    else if !(isString (git.url or null)) || git.url == "" then
      "nix/pins.json: git.url must be a repository URL or path, not ${toJSON (git.url or null)}"
    else if (git.rev or null) == null then "nix/pins.json: git.rev is not pinned; ${howToPin}"
    else if !(isString git.rev) || match "[0-9a-f]{40}" git.rev == null then
      "nix/pins.json: git.rev must be a full 40-hex commit, not ${toJSON git.rev}; ${howToPin}"
    else if (git.hash or null) == null then
      "nix/pins.json: git.hash is not set for rev ${git.rev}; run the update job with `source: git` and `rev: ${git.rev}` to let Nix compute it"
    else if !(isHash git.hash) then
      "nix/pins.json: git.hash must be an SRI sha256 hash (sha256-<43 base64>=), not ${toJSON git.hash}"
    else if !isVersion (git.version or null) then
      "nix/pins.json: git.version must be a version such as \"1!0+dev\", not ${toJSON (git.version or null)}; the update job writes it from the source's python_modules/dagster/dagster/version.py"
    else null;

  problem =
    if dagsterSource == "release" then releaseProblem
    else if dagsterSource == "git" then gitProblem
    else "nix/pins.json: source must be \"release\" or \"git\", not ${toJSON dagsterSource}";

  # Built only when the pins cannot be: fails with the reason, which Nix shows in the build's log.
  unusable = runCommand "dagster-src-unusable-pins" { reason = problem; } ''
    echo "error: $reason" >&2
    exit 1
  '';

  sdists = builtins.listToAttrs (map (name: {
    inherit name;
    value = fetchPypi {
      pname = builtins.replaceStrings [ "-" ] [ "_" ] name;
      inherit (release) version;
      hash = release.hashes.${name};
    };
  }) packages);

  fromRelease = runCommand "dagster-src-${nameSafe release.version}" { } (''
    mkdir -p "$out"
  '' + concatStringsSep "" (map (name: ''
    mkdir -p "$out/${layout.${name}}"
    tar -xzf ${sdists.${name}} -C "$out/${layout.${name}}" --strip-components=1
  '') packages));

  # The name carries the rev: a rev edited without its hash is then a hash mismatch (Nix prints
  # specified/got), never the old tree reused under the new rev because only the hash names the output.
  fromGit = fetchgit {
    name = "dagster-src-git-${substring 0 12 git.rev}";
    inherit (git) url rev hash;
  };

  tree =
    if problem != null then unusable
    else if dagsterSource == "release" then fromRelease
    else fromGit;

  pinnedVersion =
    if dagsterSource == "release" then release.version or null
    else if dagsterSource == "git" then git.version or null
    else null;
  # The real version (what the source's version.py says; the update job writes it for git): the
  # packages' version attribute, which the cli_version check expects the executables to print. Pins
  # that cannot be built give a name-safe one: nothing is built from it, and every package still evaluates.
  version =
    if !isVersion pinnedVersion then "0"
    else if problem != null then nameSafe pinnedVersion
    else pinnedVersion;

  # Cut one package's directory out of the tree. A wrong path (e.g. dagster-shared under
  # python_modules/ instead of python_modules/libraries/) fails naming the closest existing one.
  subdir = path: runCommand "${baseNameOf path}-source-${nameSafe version}" { } ''
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
  inherit version subdir layout nameSafe;
  sourceMode = dagsterSource;
  # Why the pins cannot be built (null when they can): also the failing build's message.
  pinsProblem = problem;
}
