# Dagster's monorepo source tree, in the same layout whichever way it is obtained, so the package
# expressions never change: from the sdists of one pinned release, or from git at a rev.
#
# Each package says what it is, in its own file and nowhere else: it takes its source with
#
#   src = dagster-src.package {
#     path = "python_modules/libraries/dagster-k8s";        # where it lives in the monorepo
#     distribution = "dagster-k8s";                         # its name on the package index
#     versionScheme = "library";                            # 0.29.27 belongs to Dagster 1.13.27
#   };
#
# This file reads those declarations from the package files beside it (`readDeclarations`): the release
# tree holds the sdist of each, the pins need a hash for each, the wheel lock (nix/bootstrap/lock.py), the update job and
# the sensors read them. A package cuts its directory out of the tree (a directory can't be a `src`).
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
  # attr -> what its `dagster-src.package` call declared; by default read from the files beside this one.
, dagsterDeclarations ? null
}:
let
  inherit (builtins) attrNames attrValues concatStringsSep elem filter fromJSON head isAttrs isList isString
    listToAttrs map match split substring toJSON;

  # The distributions of the set; a bad declaration fails its own package only (see `package`).
  declared = filter (d: d.problem == null) (attrValues allDeclarations);
  packages = map (d: d.distribution) declared;
  fileOf = distribution: (head (filter (d: d.distribution == distribution) declared)).file;

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
      "nix/pins.json: release.hashes has no hash for ${concatStringsSep ", " (map (p: "${p} (declared in ${fileOf p})") missing)}; let the update job pin it: dg launch --job update_dagster_src --config-json '{\"ops\": {\"update_pins\": {\"config\": {\"version\": \"${release.version}\"}}}}' (README, \"Adding a package\")"
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

  # The sdist of each declared distribution at the version its scheme gives, as nixpkgs' fetchPypi names it.
  sdists = listToAttrs (map (d: {
    name = d.distribution;
    value = fetchPypi {
      pname = builtins.replaceStrings [ "-" ] [ "_" ] d.distribution;
      version = d.version;
      hash = release.hashes.${d.distribution};
    };
  }) declared);

  # The release tree is always this derivation, and its build script checks the pins: so this file's
  # value does not depend on the packages' declarations, which depend on it (`package` below).
  fromRelease = runCommand "dagster-src-${nameSafe (toString (release.version or "0"))}" {
    reason = if releaseProblem != null then releaseProblem else "";
  } (
    if releaseProblem != null then ''
      echo "error: $reason" >&2
      exit 1
    '' else ''
      mkdir -p "$out"
      # An sdist must be the distribution and version its package file declares (PKG-INFO says both).
      check() {  # file, distribution, version, sdist's PKG-INFO
        name=$(sed -n 's/^Name: *//p' "$4" | head -n 1 | tr 'A-Z_.' 'a-z--')
        version=$(sed -n 's/^Version: *//p' "$4" | head -n 1)
        if [ "$name" != "$2" ] || [ "$version" != "$3" ]; then
          echo "error: $1 declares $2 $3, but its sdist is $name $version: fix the file's distribution or versionScheme" >&2
          exit 1
        fi
      }
    '' + concatStringsSep "" (map (d: ''
      mkdir -p "$out/${d.path}"
      tar -xzf ${sdists.${d.distribution}} -C "$out/${d.path}" --strip-components=1
      check "${d.file}" "${d.distribution}" "${d.version}" "$out/${d.path}/PKG-INFO"
    '') declared));

  # The name carries the rev: a rev edited without its hash is then a hash mismatch (Nix prints
  # specified/got), never the old tree reused under the new rev because only the hash names the output.
  fromGit = fetchgit {
    name = "dagster-src-git-${substring 0 12 git.rev}";
    inherit (git) url rev hash;
  };

  tree =
    if dagsterSource == "release" then fromRelease
    else if problem != null then unusable
    else fromGit;

  pinnedVersion =
    if dagsterSource == "release" then release.version or null
    else if dagsterSource == "git" then git.version or null
    else null;
  # The real version (what the source's version.py says; the update job writes it for git): the
  # packages' version attribute, which the version check expects the executables to print. Pins
  # that cannot be built give a name-safe one: nothing is built from it, and every package still evaluates.
  version =
    if !isVersion pinnedVersion then "0"
    else if dagsterSource == "git" && problem != null then nameSafe pinnedVersion
    else pinnedVersion;

  # How a package's version relates to Dagster's: "dagster" (the same: dagster-graphql 1.13.27) or
  # "library" (Dagster's libraries: 1.<minor>.<patch> -> 0.<minor + 16>.<patch>, dagster-postgres 0.29.27).
  # From git every package is what master's version.py says (1!0+dev).
  versionSchemes = [ "dagster" "library" ];
  libraryParts = match "1\\.([0-9]+)\\.([0-9]+)(.*)" version;
  schemeProblem = file: scheme:
    if !(elem scheme versionSchemes) then
      "${file}: versionScheme must be one of ${concatStringsSep ", " (map toJSON versionSchemes)}, not ${toJSON scheme}"
    else if scheme == "library" && dagsterSource == "release" && libraryParts == null then
      "${file}: versionScheme \"library\" derives 0.<minor + 16>.<patch> from a Dagster 1.x release, but the release is ${version}"
    else null;
  versionFor = scheme:
    if scheme != "library" || dagsterSource != "release" then version
    else "0.${toString (fromJSON (head libraryParts) + 16)}.${builtins.elemAt libraryParts 1}${builtins.elemAt libraryParts 2}";

  # Cut one package's directory out of the tree. A wrong path (e.g. dagster-shared under
  # python_modules/ instead of python_modules/libraries/) fails naming the file and the closest
  # existing directory; from git, the directory must hold the declared distribution.
  cut = { path, file, distribution ? null }: runCommand "${baseNameOf path}-source-${nameSafe version}" { } ''
    if [ -d "${tree}/${path}" ]; then
      ${if distribution == null || dagsterSource == "release" then "" else ''
      found=$(sed -n 's/^name *= *"\([^"]*\)".*/\1/p' "${tree}/${path}/pyproject.toml" 2>/dev/null | head -n 1 | tr 'A-Z_.' 'a-z--')
      if [ -n "$found" ] && [ "$found" != "${distribution}" ]; then
        echo "error: ${file} declares distribution '${distribution}', but ${path}/pyproject.toml is '$found': fix the file's distribution" >&2
        exit 1
      fi
      ''}
      cp -r "${tree}/${path}" "$out"
      exit 0
    fi
    echo "error: ${file}: dagster-src has no directory '${path}'." >&2
    closest=$(cd "${tree}" && find . -maxdepth 4 -type d -name '${baseNameOf path}' | sed 's|^\./||' | head -n 1)
    if [ -n "$closest" ]; then
      echo "       The closest existing directory is '$closest': use path = \"$closest\"." >&2
    else
      echo "       Existing package directories:" $(cd "${tree}" && ls -d python_modules/* python_modules/libraries/* 2>/dev/null) >&2
    fi
    exit 1
  '';

  subdir = path: cut { inherit path; file = "dagster-src.subdir"; };

  # What a `dagster-src.package { ... }` call declares. A bad declaration does not stop the set: that
  # package's source fails to build with the reason, naming its file.
  declare = args@{ path, distribution, versionScheme ? "dagster" }:
    let
      pos = builtins.unsafeGetAttrPos "path" args;
      file = if pos == null then "a package expression" else "nix/packages/${baseNameOf pos.file}";
      problem =
        if !(isString path) || match "[A-Za-z0-9_./-]+" path == null || match "(.*/)?\\.\\.(/.*)?|/.*" path != null then
          "${file}: path must be a relative directory of the monorepo such as \"python_modules/libraries/dagster-k8s\", not ${toJSON path}"
        else if !(isString distribution) || match "[A-Za-z0-9][A-Za-z0-9._-]*" distribution == null then
          "${file}: distribution must be a package-index name such as \"dagster-k8s\", not ${toJSON distribution}"
        else schemeProblem file versionScheme;
    in {
      inherit path file versionScheme problem;
      distribution = builtins.replaceStrings [ "_" "." ] [ "-" "-" ] (toString distribution);
      version = if problem == null then versionFor versionScheme else "0";
    };

  # What a package expression calls for its source (see the top of this file): the package's directory,
  # with its declaration and the derived `version`.
  package = args:
    let declaration = declare args; in
    (if declaration.problem == null then cut { inherit (declaration) path file distribution; }
     else runCommand "bad-declaration-source" { reason = declaration.problem; } ''
       echo "error: $reason" >&2
       exit 1
     '') // {
      inherit (declaration) version;
      dagsterPackage = declaration;
    };

  # The declarations of the package files beside this one (nix/packages/, or Flox's .flox/pkgs/), read
  # without building or even evaluating the packages: each file is called with stand-ins for its arguments
  # (this file's `package` records its call; buildPythonPackage returns its own arguments) and only its
  # `src` is looked at. So the tree never depends on the packages, which depend on it.
  readDeclarations = dir:
    let
      files = filter (f: match ".*\\.nix" f != null && f != "dagster-src.nix")
        (attrNames (builtins.readDir dir));
      standIns = fn: builtins.mapAttrs (name: _:
        if name == "dagster-src" then { package = args: { dagsterPackage = declare args; }; }
        else if name == "python3Packages" then { buildPythonPackage = args: args; }
        else throw "dagster-src: reading a declaration used the argument '${name}'") (builtins.functionArgs fn);
      declarationOf = file:
        let
          fn = import (dir + "/${file}");
          src = if builtins.isFunction fn then (fn (standIns fn)).src or null else null;
        in if builtins.isAttrs src && src ? dagsterPackage then [ { name = builtins.head (match "(.*)\\.nix" file); value = src.dagsterPackage; } ] else [ ];
    in listToAttrs (builtins.concatMap declarationOf files);

  allDeclarations = if dagsterDeclarations != null then dagsterDeclarations else readDeclarations ./.;
in
tree // {
  inherit version subdir package nameSafe sdists versionFor versionSchemes;
  # attr -> declaration, as the packages made them (the update job, the lock and the sensors read these).
  declarations = allDeclarations;
  sourceMode = dagsterSource;
  # Why the pins cannot be built (null when they can): also the failing build's message.
  pinsProblem = problem;
}
