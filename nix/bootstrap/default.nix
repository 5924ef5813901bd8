# The bootstrap scope: the names the package expressions use (python3Packages.buildPythonPackage,
# runCommand, fetchgit, fetchPypi, the Python packages) on top of builtins.derivation, for a bare Nix
# without nixpkgs. It is honest about what it borrows from the host:
#   - the interpreter (hostPython, default /usr/bin/python3) and /bin/sh, tar, cp, git in builders;
#   - the network, in fixed-output derivations only, through the host's own pip and git configuration.
# Everything else (every third-party wheel, the build backends, the Dagster sources) is fetched into
# the Nix store and verified by hash, so a package's runtime closure is in the store.
{ hostPython ? "/usr/bin/python3"
  # false: a missing lock for this interpreter is an empty one (nix/bootstrap/lock.py, making it, reads the
  # package set's declarations through this scope).
, requireWheelLock ? true
  # "3.13": which lock of ./wheels.json to use; by default found out from hostPython itself.
, hostPythonVersion ? null
, locks ? builtins.fromJSON (builtins.readFile ./wheels.json)
, system ? builtins.currentSystem
}:
let
  inherit (builtins) attrNames concatStringsSep filter genericClosure hashFile head length listToAttrs
    mapAttrs match pathExists readDir toJSON;

  # Evaluation cannot run the interpreter, so its version is read off its name: python3.N itself, or
  # the python3.N beside it with the same contents (Debian's python3 -> python3.N).
  pythonVersion =
    let
      own = match "python([0-9]+\\.[0-9]+)" (baseNameOf hostPython);
      dir = dirOf hostPython;
      siblings = filter (n: match "python[0-9]+\\.[0-9]+" n != null) (attrNames (readDir dir));
      same = filter (n: hashFile "sha256" "${dir}/${n}" == hashFile "sha256" hostPython) siblings;
    in
    if hostPythonVersion != null then hostPythonVersion
    else if !pathExists hostPython then
      throw "nix/bootstrap: the interpreter ${hostPython} does not exist; pass --argstr hostPython /path/to/python3 (CPython 3.11 or newer)"
    else if own != null then head own
    else if length same == 1 then head (match "python(.*)" (head same))
    else throw "nix/bootstrap: cannot tell which Python ${hostPython} is (no single python3.N beside it has its contents); pass --argstr hostPythonVersion 3.N";

  target = "${pythonVersion}-${system}";
  lock = locks.targets.${target} or (if !requireWheelLock then { python = pythonVersion; wheels = { }; wheelhouse = ""; } else throw ''
    nix/bootstrap/wheels.json has no lock for Python ${pythonVersion} on ${system} (interpreter ${hostPython}); it locks ${concatStringsSep ", " (attrNames locks.targets)}.
           Add it: ${hostPython} nix/bootstrap/lock.py --dagster-version ${locks.dagster} --target ${target}'');

  hostPath = "/usr/bin:/bin";
  pybuild = ./pybuild.py;
  sitePackages = "lib/python${lock.python}/site-packages";

  # What fixed-output fetches may take from the caller's environment: the pip/git client configuration.
  clientEnvVars = [
    "PIP_INDEX_URL" "PIP_EXTRA_INDEX_URL" "PIP_FIND_LINKS" "PIP_NO_INDEX" "PIP_TRUSTED_HOST"
    "PIP_CERT" "PIP_CLIENT_CERT" "PIP_CONFIG_FILE" "PIP_DEFAULT_TIMEOUT" "PIP_RETRIES"
    "http_proxy" "https_proxy" "HTTP_PROXY" "HTTPS_PROXY" "no_proxy" "NO_PROXY"
    "SSL_CERT_FILE" "GIT_SSL_CAINFO" "GIT_SSL_NO_VERIFY"
  ];

  # Nix's sandbox shows a builder the store and sandbox-paths only: say so, not "command not found".
  sandboxHint = ''
    if [ ! -e ${hostPython} ] || [ ! -e /usr/bin/tar ]; then
      echo "error: the bootstrap scope borrows the host's ${hostPython}, tar and cp, but this build cannot see them: Nix's sandbox is on (sandbox = true) and hides the host." >&2
      echo "       Declare them per invocation, as root or a trusted user: --option extra-sandbox-paths '/usr /lib /lib64' (dagster-nix-builder passes this itself); or use the nixpkgs scope, which borrows nothing." >&2
      exit 1
    fi
  '';

  shellDerivation = name: script: attrs: derivation ({
    inherit name system;
    builder = "/bin/sh";
    args = [ "-ec" (sandboxHint + script) ];
    PATH = hostPath;
  } // attrs);

  python3 = shellDerivation "python3-host-${lock.python}" ''
    version=$(${hostPython} -c 'import sys; print("%d.%d" % sys.version_info[:2])') || {
      echo "error: the bootstrap scope's interpreter ${hostPython} does not run for the build user (builders run as nixbld users and cannot read /root): use an interpreter every user can run, e.g. --argstr hostPython /usr/bin/python3." >&2
      exit 1
    }
    if [ "$version" != "${lock.python}" ]; then
      echo "error: ${hostPython} is Python $version, but the bootstrap scope chose the lock of Python ${lock.python}." >&2
      echo "       Pass --argstr hostPythonVersion $version (the lock exists or: ${hostPython} nix/bootstrap/lock.py --dagster-version ${locks.dagster} --target $version-${system})" >&2
      exit 1
    fi
    mkdir -p "$out/bin"
    ln -s ${hostPython} "$out/bin/python3"
    ln -s ${hostPython} "$out/bin/python"
    # A virtual environment of the host's interpreter without its site-packages: a process started
    # as this python3 (e.g. a child of a wrapper, which Python starts as sys.executable without -S)
    # runs none of the host's .pth hooks, which may write into any module they find (seen: one appending
    # a CA to certifi's bundle, in the store), and imports nothing from the host.
    real=$(readlink -f ${hostPython})
    printf 'home = %s\ninclude-system-site-packages = false\nversion = %s\n' "''${real%/*}" "$version" > "$out/pyvenv.cfg"
  '' { } // {
    pythonVersion = lock.python;
    inherit sitePackages;
  };

  # As nixpkgs' runCommand: `passthru` and `meta` are attributes of the result, not of the derivation
  # (so they change no hash); the build inputs are nixpkgs' and have no meaning here.
  runCommand = name: env: buildCommand:
    shellDerivation name buildCommand (builtins.removeAttrs env [ "passthru" "meta" "nativeBuildInputs" "buildInputs" ])
    // (env.passthru or { })
    // (if env ? meta then { inherit (env) meta; } else { });

  fetchgit = { url, rev, hash ? "", name ? "source" }:
    shellDerivation name ''
      export HOME="$TMPDIR" GIT_TERMINAL_PROMPT=0
      git init -q "$out"
      cd "$out"
      # The builder's user rarely owns a local upstream; this config lives in the build's own HOME.
      git config --global safe.directory '*'
      git fetch -q --depth 1 -- "$url" "$rev" 2>/dev/null || git fetch -q -- "$url"
      git -c advice.detachedHead=false checkout -q "$rev" --
      rm -rf .git
    '' {
      inherit url rev;
      outputHashMode = "recursive";
      outputHashAlgo = "sha256";
      outputHash = hash;
      impureEnvVars = clientEnvVars;
    };

  # One sdist, fetched by pip from whatever index the caller's pip configuration names. pip reads the
  # sdist's metadata to be sure it is the package asked for, which needs the build backends.
  fetchPypi = { pname, version, hash, extension ? "tar.gz", ... }:
    shellDerivation "${pname}-${version}.${extension}" ''
      export HOME="$TMPDIR" PYTHONPATH="$fetchPath"
      # pip prepares the sdist in $TMPDIR; not under Nix's sandbox's /build (see pybuild.py).
      TMPDIR=$(mktemp -d /tmp/fetchpypi.XXXXXX 2>/dev/null || mktemp -d)
      trap 'rm -rf "$TMPDIR"' EXIT
      ${hostPython} -m pip download --quiet --no-cache-dir --disable-pip-version-check \
        --no-deps --no-binary :all: --no-build-isolation -d "$TMPDIR/dl" "$pname==$version"
      cp "$TMPDIR/dl/$name" "$out"
    '' {
      inherit pname version;
      fetchPath = pythonPathOf [ python3Packages.hatchling python3Packages.setuptools ];
      outputHashMode = "flat";
      outputHashAlgo = "sha256";
      outputHash = hash;
      impureEnvVars = clientEnvVars;
    };

  # All pinned wheels in one fetch: one pip process is far cheaper than one per wheel, and pip checks
  # each file against the sha256 in the lock (--require-hashes) before Nix checks the whole folder.
  wheelhouse = shellDerivation "bootstrap-wheelhouse-dagster-${locks.dagster}-python${lock.python}" ''
    export HOME="$TMPDIR"
    printf '%s\n' "$requirements" > "$TMPDIR/requirements.txt"
    ${hostPython} -m pip download --quiet --no-cache-dir --disable-pip-version-check \
      --no-deps --only-binary :all: --require-hashes -r "$TMPDIR/requirements.txt" -d "$out"
  '' {
    requirements = concatStringsSep "\n"
      (map (n: "${n}==${lock.wheels.${n}.version} --hash=sha256:${lock.wheels.${n}.sha256}") (attrNames lock.wheels));
    outputHashMode = "recursive";
    outputHashAlgo = "sha256";
    outputHash = lock.wheelhouse;
    impureEnvVars = clientEnvVars;
  };

  # The transitive Python dependencies of a list of packages, each once.
  pythonClosure = packages: map (item: item.package) (genericClosure {
    startSet = map (p: { key = p.outPath; package = p; }) packages;
    operator = item: map (p: { key = p.outPath; package = p; }) item.package.pythonDependencies;
  });
  pythonPathOf = packages: concatStringsSep ":" (map (p: "${p}/${sitePackages}") (pythonClosure packages));

  # Which python3Packages attribute provides each top-level module: named in import-check errors.
  moduleIndex = toJSON (mapAttrs (name: wheel: wheel.modules) lock.wheels);

  pythonDerivation = { name, mode, dependencies, extraAttrs, outputs ? [ "out" ] }: derivation ({
    inherit name system outputs;
    builder = "${python3}/bin/python3";
    args = [ "-IS" pybuild mode ];
    PATH = hostPath;
    python = "${python3}/bin/python3";
    inherit sitePackages;
    runtimePath = pythonPathOf dependencies;
    # As in nixpkgs: $out/nix-support/propagated-build-inputs names the interpreter and the direct
    # dependencies, so every package's runtime closure holds its interpreter.
    propagatedBuildInputs = [ python3 ] ++ dependencies;
  } // extraAttrs) // {
    pythonDependencies = dependencies;
  };

  installWheel = attr: wheel:
    let dependencies = map (dep: python3Packages.${dep}) wheel.deps;
    in pythonDerivation {
      name = "python${lock.python}-${attr}-${wheel.version}";
      mode = "install";
      inherit dependencies;
      extraAttrs.wheel = "${wheelhouse}/${wheel.file}";
    } // {
      pname = attr;
      inherit (wheel) version;
      optional-dependencies = mapAttrs (extra: deps: map (dep: python3Packages.${dep}) deps) wheel.extras;
    };

  buildPythonPackage =
    args@{ pname
    , version
    , src
    , build-system ? [ ]
    , dependencies ? [ ]
    , propagatedBuildInputs ? [ ]
    , pythonImportsCheck ? [ ]
    , pythonRelaxDeps ? [ ]
    , passthru ? { }
    , ...
    }:
    let
      pos = builtins.unsafeGetAttrPos "pname" args;
      allDependencies = dependencies ++ propagatedBuildInputs;
    in
    pythonDerivation {
      # A store name allows no '!' or '+' (master reports 1!0+dev); the wheel takes the real version
      # from the source itself.
      name = "${pname}-${concatStringsSep "" (map (part: if builtins.isList part then "-" else part)
        (builtins.split "[^A-Za-z0-9._-]" version))}";
      mode = "build";
      dependencies = allDependencies;
      outputs = [ "out" "dist" ];
      extraAttrs = {
        inherit pname version src;
        buildPath = pythonPathOf (build-system ++ [ python3Packages.packaging ]);
        importsCheck = toJSON pythonImportsCheck;
        relaxDeps = toJSON pythonRelaxDeps;
        inherit moduleIndex;
        # The file name only: an absolute path would make the derivation depend on the checkout's location.
        expression = if pos == null then pname else "${baseNameOf pos.file}:${toString pos.line}";
        SOURCE_DATE_EPOCH = "315532800";
      };
    } // { inherit pname version pythonImportsCheck; } // passthru // { inherit passthru; };

  python3Packages = mapAttrs installWheel lock.wheels // {
    inherit buildPythonPackage;
    python = python3;
  };

  # The host's PostgreSQL from Debian's packages (as python3 borrows the host's interpreter): $out/bin
  # links initdb, postgres, pg_ctl, psql, ... of /usr/lib/postgresql/<major>/bin, the newest major
  # installed (Debian 12: 15, Debian 13: 17), found at evaluation so the major is in the name. Only
  # tests use it (packageTests.postgres); without one the build fails saying how to install it.
  postgresqlRoot = "/usr/lib/postgresql";
  postgresqlMajors = builtins.sort (a: b: builtins.compareVersions a b > 0)
    (filter (n: match "[0-9]+(\\.[0-9]+)?" n != null && pathExists "${postgresqlRoot}/${n}/bin/postgres")
      (if pathExists postgresqlRoot then attrNames (readDir postgresqlRoot) else [ ]));
  postgresql =
    if postgresqlMajors == [ ] then
      shellDerivation "postgresql-host-missing" ''
        echo "error: the bootstrap scope's postgresql borrows the host's PostgreSQL from Debian, but ${postgresqlRoot}/<major>/bin/postgres was not found when this was evaluated: apt-get install postgresql (scripts/setup.sh does; it installs without starting the system's cluster)." >&2
        exit 1
      '' { }
    else
      let
        major = head postgresqlMajors;
        bin = "${postgresqlRoot}/${major}/bin";
      in
      shellDerivation "postgresql-host-${major}" ''
        if [ ! -x ${bin}/postgres ] || [ ! -x ${bin}/initdb ]; then
          echo "error: the bootstrap scope's postgresql borrows the host's PostgreSQL ${major} (${bin}), but this build cannot see ${bin}/postgres and initdb: it was uninstalled since evaluation (apt-get install postgresql), or Nix's sandbox hides it (declare --option extra-sandbox-paths '/usr /lib /lib64')." >&2
          exit 1
        fi
        mkdir -p "$out/bin"
        for program in ${bin}/*; do
          ln -s "$program" "$out/bin/''${program##*/}"
        done
      '' { } // {
        version = major;
        pname = "postgresql";
      };
in
{
  inherit python3 python3Packages runCommand fetchgit fetchPypi postgresql;
  bootstrapWheelhouse = wheelhouse;
}
