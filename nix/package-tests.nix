# Tests of the built packages, each a derivation: a package's `passthru.tests` are its Dagster asset
# checks (dagster_nix_builder/nix/graph.nix exports them). Written against `runCommand` and `python3` only, so
# the same helpers serve the bootstrap scope (builtins.derivation, the host's interpreter) and nixpkgs:
#
#   passthru.tests = {
#     imports = packageTests.imports { package = dagster; modules = [ "dagster" ]; };
#     version = packageTests.version { package = dagster; };
#     webserver = packageTests.webserver { package = dagster-webserver; };
#   };
#
# Every test prints what it checks to the build log (a failure's log tail says what failed and what to
# do), writes a small deterministic text file to $out (what was checked: never a time, a port or a
# temporary path, so `nix build --rebuild` of a passing test compares equal) and writes into no store
# path (Python runs with -B, its children with PYTHONDONTWRITEBYTECODE=1). Each derivation carries
# `blocking` (does a failure stop the packages downstream; default false) and `meta.description` (one
# sentence of what it proves), as attributes Nix does not build with.
#
# This file lies at the top of nix/ (not in a folder) because Flox's layout copies the package set's
# top-level files beside .flox/pkgs/: the package expressions default to `import ../package-tests.nix`.
# `postgresql` (a package with bin/initdb, postgres, psql) serves packageTests.postgres only; without it that
# test's build fails saying so.
{ runCommand, python3, postgresql ? null }:
let
  inherit (builtins) all attrNames concatStringsSep elem filter isList isString length match toJSON;

  # One test: `script` (Python) runs in a clean interpreter (-I: no PYTHON* variables, no user site;
  # -S: not even the interpreter's own site-packages; -B: writes no bytecode) with `env` as its
  # environment variables, and writes $out itself.
  mkTest = { package, test, description, blocking ? false, env ? { }, script }:
    if match "[A-Za-z0-9_]+" test == null then
      throw "nix/package-tests.nix: test name '${test}' is not a Dagster check name ([A-Za-z0-9_]+)"
    else
    runCommand "${package.name}-test-${test}" (env // {
      inherit script;
      testName = test;
      package = "${package}";
      packageName = package.pname or package.name;
      passthru = { inherit blocking; };
      meta = { inherit description; };
    }) ''
      export PYTHONDONTWRITEBYTECODE=1
      ${python3}/bin/python3 -I -S -B -c "$script"
    '';

  # Shared by the scripts: how each reports, and the package's closure as both scopes record it.
  prelude = ''
    import json, os, sys

    PACKAGE = os.environ["package"]
    NAME = os.environ["packageName"]
    TEST = os.environ["testName"]


    def say(line):
        print(f"{NAME} test {TEST}: {line}", flush=True)


    def fail(message):
        print(f"error: {NAME} test {TEST} failed: {message}", file=sys.stderr, flush=True)
        sys.exit(1)


    def finish(lines):
        with open(os.environ["out"], "w") as out:
            out.write("".join(f"{line}\n" for line in [f"{TEST} {PACKAGE}", *lines]))
        say("passed")


    def reap():
        """Collect every exited child (a server the test started, and its children once orphaned)."""
        while True:
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    return
            except ChildProcessError:
                return


    def closure(root):
        """The package and, transitively, what its nix-support/propagated-build-inputs names (the
        interpreter and the Python dependencies, in the bootstrap scope and in nixpkgs alike)."""
        seen, order, queue = set(), [], [root]
        while queue:
            path = queue.pop(0)
            if path in seen:
                continue
            seen.add(path)
            order.append(path)
            try:
                with open(os.path.join(path, "nix-support", "propagated-build-inputs")) as f:
                    queue.extend(f.read().split())
            except (FileNotFoundError, NotADirectoryError):
                pass
        return order


    def site_dirs(paths):
        found = []
        for path in paths:
            lib = os.path.join(path, "lib")
            if os.path.isdir(lib):
                for entry in sorted(os.listdir(lib)):
                    site = os.path.join(lib, entry, "site-packages")
                    if entry.startswith("python3") and os.path.isdir(site):
                        found.append(site)
        return found
  '';

  # A child interpreter imports each module with nothing but `sites` on its path (as the installed
  # programs do: site.addsitedir, so .pth files count) and reports where each came from.
  importChild = ''
    import importlib, json, os, site, sys
    sites, modules = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    for d in sites:
        site.addsitedir(d)
    results = {}
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            results[name] = {"ok": False, "missing": exc.name, "error": f"{type(exc).__name__}: {exc}"}
            continue
        except Exception as exc:
            results[name] = {"ok": False, "missing": None, "error": f"{type(exc).__name__}: {exc}"}
            continue
        where = getattr(module, "__file__", None)
        spec = getattr(module, "__spec__", None)
        if where is None and spec is not None and spec.submodule_search_locations:
            where = list(spec.submodule_search_locations)[0]
        real = os.path.realpath(where) if where else None
        ok = bool(real and real.startswith("/nix/store/"))
        results[name] = {"ok": ok, "file": real, "missing": None,
                         "error": None if ok else f"{name} was loaded from {real}, outside the Nix store"}
    print(json.dumps(results))
  '';

  importsScript = prelude + ''
    import subprocess

    modules = json.loads(os.environ["modules"])
    # python3Packages attribute -> its top-level modules (the bootstrap scope's lock; {} elsewhere).
    providers = {m: attr for attr, mods in json.loads(os.environ["moduleIndex"]).items() for m in mods}
    paths = closure(PACKAGE)
    sites = site_dirs(paths)
    python = next((f"{p}/bin/python3" for p in paths if os.access(f"{p}/bin/python3", os.X_OK)), sys.executable)
    say(f"importing {', '.join(modules)} with {python} -I -S -B and only the package's closure "
        f"({len(paths)} store paths, {len(sites)} site-packages) on sys.path")
    env = {"HOME": os.environ.get("TMPDIR", "/tmp"), "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([python, "-I", "-S", "-B", "-c", os.environ["importChild"], json.dumps(sites),
                           json.dumps(modules)], capture_output=True, text=True, env=env, timeout=600)
    try:
        results = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        fail(f"the import script failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    problems = []
    for module in modules:
        result = results[module]
        if result["ok"]:
            say(f"import {module}: ok, from {result['file']}")
            continue
        reason = f"`import {module}`: {result['error']}"
        missing = result.get("missing")
        if missing:
            top = missing.split(".")[0]
            reason += (f"; module '{top}' is not in the package's closure: it is provided by "
                       f"python3Packages.{providers[top]}, add that to the package's dependencies"
                       if top in providers else
                       f"; module '{top}' is not in the package's closure and no known Nix input provides it")
        say(f"import {module}: FAILED")
        problems.append(reason)
    if problems:
        fail("; ".join(problems))
    finish([f"{m} {results[m]['file']}" for m in modules])
  '';

  versionScript = prelude + ''
    import subprocess, tempfile

    executables = json.loads(os.environ["executables"])
    without = json.loads(os.environ["withoutVersion"])
    expected = os.environ["expectedVersion"]
    problems, lines = [], []
    for exe in executables:
        path = os.path.join(PACKAGE, "bin", exe)
        if not os.path.isfile(path):
            say(f"{exe}: FAILED, {path} does not exist")
            problems.append(f"{path} does not exist")
            continue
        if not os.access(path, os.X_OK):
            say(f"{exe}: FAILED, {path} is not executable")
            problems.append(f"{path} is not executable")
            continue
        if exe in without:
            say(f"{exe}: exists and is executable (declared without --version)")
            lines.append(f"{exe} exists and is executable (no --version)")
            continue
        # An empty environment but for a home of its own: the program must run from the store alone.
        with tempfile.TemporaryDirectory(prefix=f"{exe}-home-") as home:
            say(f"running {exe} --version (environment: HOME, TMPDIR only); expecting exit 0 and {expected!r}")
            try:
                proc = subprocess.run([path, "--version"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, env={"HOME": home, "TMPDIR": home},
                                      cwd=home, text=True, errors="replace", timeout=300)
            except subprocess.TimeoutExpired:
                problems.append(f"{exe} --version did not exit within 300 s")
                continue
        text = proc.stdout.strip()
        for line in text.splitlines()[-20:]:
            print(f"  | {line}", flush=True)
        if proc.returncode == 2 and "no such option" in text.lower():
            problems.append(f"{exe} has no --version option (exit 2: {text[-200:]!r}); declare it in "
                            f"withoutVersion, which only checks that it exists and is executable")
        elif proc.returncode != 0:
            problems.append(f"{exe} --version exited {proc.returncode}: {text[-500:]}")
        elif expected not in text:
            problems.append(f"{exe} --version printed {text[-300:]!r}, expected version {expected}")
        else:
            lines.append(f"{exe} --version: exit 0, prints {expected}")
    if problems:
        fail("; ".join(problems))
    finish(lines)
  '';

  webserverScript = prelude + ''
    import glob, signal, socket, subprocess, tempfile, time, urllib.error, urllib.request

    EXE = os.path.join(PACKAGE, "bin", os.environ["executable"])
    TIMEOUT = float(os.environ["startTimeout"])
    UI_BUILD = "dagster_webserver/webapp/build"


    def stop(signum, frame):
        raise SystemExit(f"stopped by signal {signum}")


    # Nix stops a build with SIGTERM/SIGINT (timeout, Ctrl-C): the `finally` below still kills the server.
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, stop)


    def get(url):
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()


    def missing_ui():
        if glob.glob(os.path.join(PACKAGE, "lib", "python3*", "site-packages", UI_BUILD, "index.html")):
            return ""
        return (f"; {os.path.basename(PACKAGE)} has no {UI_BUILD} (the compiled UI), so it answers 500 on /. "
                "Dagster's git repository does not track it; it is built from js_modules/ with Node and yarn, "
                "which this package set does not do (the release sdists carry it)")


    def kill_group(proc):
        """SIGTERM to the server's process group (it and its code server), SIGKILL after 10 s; returns
        when none of them is left."""
        for signum, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(proc.pid, signum)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                reap()
                try:
                    os.killpg(proc.pid, 0)
                except ProcessLookupError:
                    return
                time.sleep(0.1)


    # Orphans of the server (its code server) become our children, so they are reaped here, not left
    # as zombies that still count as members of its process group (Linux; elsewhere a no-op).
    try:
        import ctypes
        ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


    if not os.access(EXE, os.X_OK):
        fail(f"{EXE} does not exist or is not executable")
    work = tempfile.mkdtemp(prefix="webserver-test-")
    home = os.path.join(work, "dagster_home")
    os.mkdir(home)
    with open(os.path.join(home, "dagster.yaml"), "w") as f:
        f.write("telemetry:\n  enabled: false\n")
    with open(os.path.join(work, "defs.py"), "w") as f:
        f.write("from dagster import Definitions\n\ndefs = Definitions()\n")
    with open(os.path.join(work, "workspace.yaml"), "w") as f:
        f.write("load_from:\n  - python_file: defs.py\n")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    env = {"HOME": work, "TMPDIR": work, "DAGSTER_HOME": home, "PATH": os.environ.get("PATH", ""),
           "PYTHONDONTWRITEBYTECODE": "1"}
    say(f"starting {os.path.basename(EXE)} on 127.0.0.1 (a free port) against a workspace of an empty "
        f"Definitions; expecting /server_info (HTTP 200, JSON) and / (HTTP 200, the UI's HTML) "
        f"within {TIMEOUT:g} s")
    log_path = os.path.join(work, "webserver.log")
    statuses, info, problem = {}, None, None
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([EXE, "-h", "127.0.0.1", "-p", str(port), "-w", "workspace.yaml"], cwd=work,
                                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    started = time.monotonic()
    try:
        while True:
            if proc.poll() is not None:
                problem = f"the webserver exited (status {proc.returncode}) before answering"
                break
            if time.monotonic() - started > TIMEOUT:
                problem = f"the webserver did not answer within {TIMEOUT:g} s"
                break
            try:
                status, body = get(base + "/server_info")
            except OSError:
                time.sleep(0.25)
                continue
            statuses["/server_info"] = status
            if status != 200:
                problem = f"/server_info answered HTTP {status}"
                break
            try:
                info = json.loads(body)
            except ValueError:
                problem = f"/server_info answered HTTP 200 but not JSON: {body[:200]!r}"
                break
            say(f"/server_info: HTTP 200, {json.dumps(info, sort_keys=True)}")
            status, body = get(base + "/")
            statuses["/"] = status
            text = body.decode("utf-8", "replace")
            if status != 200:
                problem = f"/ answered HTTP {status}{missing_ui()}"
            elif "<html" not in text.lower() or "dagster" not in text.lower():
                problem = f"/ answered HTTP 200 but not the UI's HTML: {text[:200]!r}{missing_ui()}"
            else:
                say(f"/: HTTP 200, the UI's HTML ({len(body)} bytes)")
            break
    finally:
        kill_group(proc)
        say("webserver stopped")
    if problem:
        with open(log_path, errors="replace") as f:
            tail = f.read()[-3000:]
        print("webserver log (tail):", file=sys.stderr)
        for line in tail.splitlines():
            print(f"  | {line}", file=sys.stderr)
        fail(f"{problem} (statuses: {statuses or 'no answer'})")
    finish([f"/server_info HTTP 200 {json.dumps(info, sort_keys=True)}", "/ HTTP 200 the UI's HTML"])
  '';

  postgresScript = prelude + ''
    import re, signal, socket, subprocess, tempfile, time

    PG_BIN = os.path.join(os.environ["postgresql"], "bin")
    DATABASE = os.environ["database"]
    SCHEME = os.environ["scheme"]
    ASSET = "nix_postgres_check"
    TIMEOUT = float(os.environ["startTimeout"])


    def stop(signum, frame):
        raise SystemExit(f"stopped by signal {signum}")


    # Nix stops a build with SIGTERM/SIGINT (timeout, Ctrl-C): the `finally` below still stops PostgreSQL.
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, stop)

    if os.environ["postgresql"] == "":
        fail("no PostgreSQL to test against: package-tests.nix was imported without `postgresql` "
             "(import ../package-tests.nix { inherit runCommand python3 postgresql; }, or pass "
             "packageTests.postgres { postgresql = ...; }); in nixpkgs it is pkgs.postgresql, in the bootstrap "
             "scope the host's Debian PostgreSQL (apt-get install postgresql)")
    missing = [p for p in ("initdb", "postgres", "psql") if not os.access(os.path.join(PG_BIN, p), os.X_OK)]
    if missing:
        fail(f"{PG_BIN} has no runnable {', '.join(missing)}: the postgresql input is not a PostgreSQL server "
             "(bootstrap scope: apt-get install postgresql; with Nix's sandbox on, declare "
             "--option extra-sandbox-paths '/usr /lib /lib64')")
    if os.geteuid() == 0:
        fail("the build runs as root, and PostgreSQL refuses to: build with Nix's build users (nixbld)")

    work = tempfile.mkdtemp(prefix="postgres-test-")
    data, home = os.path.join(work, "pgdata"), os.path.join(work, "dagster_home")
    os.mkdir(home)
    paths = closure(PACKAGE)
    sites = site_dirs(paths)
    python = next((f"{p}/bin/python3" for p in paths if os.access(f"{p}/bin/python3", os.X_OK)), sys.executable)
    base_env = {"HOME": work, "TMPDIR": work, "PATH": os.environ.get("PATH", ""), "LC_ALL": "C",
                "PYTHONDONTWRITEBYTECODE": "1"}


    class Problem(Exception):
        pass


    def run(argv, what, env=None, timeout=600, echo=True):
        proc = subprocess.run(argv, cwd=work, env=env or base_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, errors="replace", timeout=timeout)
        for line in proc.stdout.strip().splitlines()[-40:] if echo else []:
            print(f"  | {line}", flush=True)
        if proc.returncode != 0:
            raise Problem(f"{what} exited {proc.returncode}: {proc.stdout.strip()[-1500:]}")
        return proc.stdout


    def run_python(code, what):
        """The code with only the package's closure on sys.path (as the installed programs run: -I -S -B,
        site.addsitedir, PYTHONPATH for children), DAGSTER_HOME set; its last stdout line is JSON."""
        script = os.path.join(work, f"{what.split()[0]}.py")
        with open(script, "w") as f:
            f.write("import json, os, site, sys\n"
                    f"SITES = {sites!r}\n"
                    "for d in SITES:\n    site.addsitedir(d)\n"
                    "os.environ['PYTHONPATH'] = os.pathsep.join(SITES)\n" + code)
        env = {**base_env, "DAGSTER_HOME": home}
        try:
            out = run([python, "-I", "-S", "-B", script], what, env=env)
        except Problem as exc:
            missing = re.findall(r"No module named '([^']+)'|Couldn't import module ([A-Za-z0-9_.]+)", str(exc))
            missing = [a or b for a, b in missing]
            if "psycopg" in missing:
                raise Problem(f"{exc}\nHint: the scheme {SCHEME}:// made SQLAlchemy load psycopg (3), its default "
                              "PostgreSQL driver since SQLAlchemy 2.1, which is not in the package's closure "
                              "(dagster-postgres requires psycopg2-binary): use postgresql+psycopg2 (postgres_db.scheme), "
                              "or add python3Packages.psycopg to the package's dependencies")
            if missing:
                raise Problem(f"{exc}\nHint: module '{missing[0]}' is not in the closure of "
                              f"{os.path.basename(PACKAGE)}; the instance's storage needs it")
            raise
        try:
            return json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise Problem(f"{what} printed no result: {out.strip()[-1500:]}")


    def psql(sql, database=DATABASE):
        return run([os.path.join(PG_BIN, "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                    "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", database, "-c", sql],
                   f"psql -c {sql!r}", timeout=120, echo=False).strip()


    def group_gone(pgid, grace):
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            reap()
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return True
            time.sleep(0.1)
        return False


    def stop_postgres(server):
        """Fast shutdown (SIGINT: the postmaster ends its backends and checkpoints), immediate (SIGQUIT)
        after 30 s, SIGKILL to its process group after 10 more; returns when none of them is left."""
        for signum, grace in ((signal.SIGINT, 30.0), (signal.SIGQUIT, 10.0), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(server.pid, signum)
            except ProcessLookupError:
                break
            if group_gone(server.pid, grace):
                break
        say("postgres stopped")


    # Orphaned backends would become our children, reaped here, not zombies of its process group (Linux).
    try:
        import ctypes
        ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


    problem, server, lines = None, None, []
    log_path = os.path.join(work, "postgres.log")
    try:
        version = run([os.path.join(PG_BIN, "postgres"), "--version"], "postgres --version").strip()
        say(f"initdb (trust authentication, superuser postgres) with {os.path.realpath(os.path.join(PG_BIN, 'initdb'))}: {version}")
        run([os.path.join(PG_BIN, "initdb"), "-D", data, "-A", "trust", "-U", "postgres", "-E", "UTF8",
             "--no-locale", "--no-sync"], "initdb")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        say(f"starting postgres on 127.0.0.1 only (a free port; its unix socket in the build's temporary "
            f"directory); expecting it to accept connections within {TIMEOUT:g} s")
        with open(log_path, "wb") as log:
            server = subprocess.Popen(
                [os.path.join(PG_BIN, "postgres"), "-D", data, "-p", str(port), "-c", "listen_addresses=127.0.0.1",
                 "-c", f"unix_socket_directories={work}", "-c", "fsync=off", "-c", "logging_collector=off",
                 # In its processes' titles ("postgres: <database>: checkpointer"): whose they are.
                 "-c", f"cluster_name={DATABASE}"],
                cwd=work, env=base_env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        started = time.monotonic()
        while True:
            if server.poll() is not None:
                raise Problem(f"postgres exited (status {server.returncode}) before accepting connections")
            if time.monotonic() - started > TIMEOUT:
                raise Problem(f"postgres did not accept connections within {TIMEOUT:g} s")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2):
                    pass
                psql("SELECT 1", database="postgres")
                break
            except (OSError, Problem):
                time.sleep(0.25)
        say(f"postgres accepts connections; creating database {DATABASE}")
        psql(f'CREATE DATABASE "{DATABASE}"', database="postgres")
        major = int(psql("SHOW server_version_num", database="postgres")) // 10000
        with open(os.path.join(home, "dagster.yaml"), "w") as f:
            f.write("storage:\n  postgres:\n    postgres_db:\n      hostname: 127.0.0.1\n"
                    f"      port: {port}\n      username: postgres\n      db_name: {json.dumps(DATABASE)}\n"
                    f"      scheme: {json.dumps(SCHEME)}\n"
                    "telemetry:\n  enabled: false\n")
        say(f"dagster.yaml: storage postgres_db (127.0.0.1, the port, user postgres, database {DATABASE}, "
            f"no password, scheme {SCHEME})")

        say(f"process 1: the Nix-built dagster CLI (dagster._cli.main, as bin/dagster runs it) `dagster instance "
            f"migrate` with {python} -I -S -B and only the closure of {os.path.basename(PACKAGE)} "
            f"({len(paths)} store paths, {len(sites)} site-packages) on sys.path")
        migrated = run_python(
            "sys.argv = ['dagster', 'instance', 'migrate']\n"
            "from dagster._cli import main\n"
            "try:\n    main()\nexcept SystemExit as exc:\n"
            "    if exc.code not in (None, 0):\n        raise\n"
            "import dagster\n"
            "from dagster import DagsterInstance\n"
            "instance = DagsterInstance.get()\n"
            "print(json.dumps({'dagster': os.path.realpath(dagster.__file__),\n"
            "    'storage': [type(s).__module__ + '.' + type(s).__name__ for s in\n"
            "                (instance.run_storage, instance.event_log_storage, instance.schedule_storage)]}))\n",
            "migrate (dagster instance migrate)")
        if not migrated["dagster"].startswith("/nix/store/"):
            raise Problem(f"dagster was imported from {migrated['dagster']}, outside the Nix store")
        say(f"dagster from {migrated['dagster']}; storages {', '.join(migrated['storage'])}")
        if not all(s.startswith("dagster_postgres.") for s in migrated["storage"]):
            raise Problem(f"the instance does not use dagster-postgres' storages: {migrated['storage']}")
        tables = psql("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename").split()
        revision = psql("SELECT string_agg(version_num, ',' ORDER BY version_num) FROM alembic_version")
        say(f"migrated: database {DATABASE} has tables {', '.join(tables)}; alembic revision {revision}")
        for needed in ("runs", "event_logs", "alembic_version"):
            if needed not in tables:
                raise Problem(f"after `dagster instance migrate` the database has no table {needed} (tables: {tables})")

        say(f"process 2: materialize([{ASSET}], instance=DagsterInstance.get())")
        materialized = run_python(
            "from dagster import DagsterInstance, asset, materialize\n"
            f"@asset\ndef {ASSET}():\n    return 42\n"
            f"result = materialize([{ASSET}], instance=DagsterInstance.get())\n"
            "print(json.dumps({'run_id': result.run_id, 'success': result.success}))\n",
            "materialize")
        if not materialized["success"]:
            raise Problem(f"materialize reported failure (run {materialized['run_id']})")
        say(f"materialized: run {materialized['run_id']} succeeded")

        say("process 3: reading the run and the materialization back from the instance")
        read = run_python(
            "from dagster import AssetKey, DagsterInstance\n"
            "instance = DagsterInstance.get()\n"
            f"run_id = {materialized['run_id']!r}\n"
            "run = instance.get_run_by_id(run_id)\n"
            f"event = instance.get_latest_materialization_event(AssetKey({ASSET!r}))\n"
            "print(json.dumps({'run': run.status.value if run else None,\n"
            "    'runs': len(instance.get_runs()),\n"
            "    'event_run': event.run_id if event else None,\n"
            "    'event_type': event.dagster_event.event_type_value if event and event.dagster_event else None}))\n",
            "read back")
        say(f"read back: run status {read['run']}, {read['runs']} run(s) in the instance, latest materialization of "
            f"{ASSET} from run {read['event_run']} ({read['event_type']})")
        if read["run"] != "SUCCESS" or read["event_run"] != materialized["run_id"]:
            raise Problem(f"the instance does not hold the run and its materialization: {read}")
        runs = psql(f"SELECT count(*) FROM runs WHERE run_id = '{materialized['run_id']}'")
        events = psql(f"SELECT count(*) FROM event_logs WHERE run_id = '{materialized['run_id']}' "
                      f"AND dagster_event_type = 'ASSET_MATERIALIZATION'")
        say(f"psql: runs has {runs} row(s) of the run; event_logs has {events} ASSET_MATERIALIZATION row(s) of it")
        if runs != "1" or events != "1":
            raise Problem(f"the database's tables do not hold the run (runs: {runs}) and its materialization "
                          f"(event_logs: {events})")
        lines = [f"PostgreSQL {major} on 127.0.0.1, database {DATABASE}, scheme {SCHEME}, trust authentication",
                 f"dagster instance migrate: storages {', '.join(migrated['storage'])}",
                 f"tables {' '.join(tables)}", f"alembic revision {revision}",
                 f"materialize {ASSET}: run SUCCESS; read back: run SUCCESS, its ASSET_MATERIALIZATION",
                 "psql: runs 1 row, event_logs 1 ASSET_MATERIALIZATION row of the run"]
    except Problem as exc:
        problem = str(exc)
    except subprocess.TimeoutExpired as exc:
        problem = f"{exc.cmd[0]} did not finish within {exc.timeout:g} s"
    finally:
        if server is not None:
            stop_postgres(server)
    if problem:
        if os.path.exists(log_path):
            with open(log_path, errors="replace") as f:
                tail = f.read()[-3000:].splitlines()
            print("postgres log (tail):" if tail else "postgres log: empty", file=sys.stderr)
            for line in tail:
                print(f"  | {line}", file=sys.stderr)
        fail(problem)
    finish(lines)
  '';

  list = xs: concatStringsSep ", " xs;
  defaultPostgresql = postgresql;
in
{
  # Every module imports in a clean interpreter given only the package's closure, each from /nix/store.
  # Blocking: a package that cannot be imported must not be built upon.
  imports = { package, modules ? package.pythonImportsCheck or [ ] }:
    if !(isList modules) || modules == [ ] then
      throw "packageTests.imports of ${package.name}: `modules` must be a non-empty list of module names"
    else mkTest {
      inherit package;
      test = "imports";
      blocking = true;
      description = "In a clean interpreter given only the package's closure, ${list modules} "
        + "import${if length modules == 1 then "s" else ""} and lie${if length modules == 1 then "s" else ""} in the Nix store.";
      env = {
        modules = toJSON modules;
        inherit importChild;
        # The bootstrap scope records which python3Packages attribute provides each module.
        moduleIndex = package.moduleIndex or "{}";
      };
      script = importsScript;
    };

  # In the spirit of nixpkgs' testers.testVersion: each executable answers `--version` with exit 0 and
  # the version, in an empty environment; those in `withoutVersion` only exist and are executable.
  version =
    { package
    , executables ? package.executables or (package.passthru.executables or [ ])
    , version ? package.version
    , withoutVersion ? [ ]
    }:
    let
      unknown = filter (e: !(elem e executables)) withoutVersion;
      answering = filter (e: !(elem e withoutVersion)) executables;
    in
    if !(isList executables) || !(all isString executables) || executables == [ ] then
      throw "packageTests.version of ${package.name}: no executables to check (pass `executables` or set passthru.executables)"
    else if unknown != [ ] then
      throw "packageTests.version of ${package.name}: withoutVersion names ${list unknown}, which ${if length unknown == 1 then "is" else "are"} not among the executables (${list executables})"
    else if answering == [ ] then
      throw "packageTests.version of ${package.name}: every executable is in withoutVersion; at least one must answer --version"
    else mkTest {
      inherit package;
      test = "version";
      description = "${list answering} answer${if length answering == 1 then "s" else ""} --version with exit 0 and version ${version}"
        + (if withoutVersion == [ ] then "."
           else "; ${list withoutVersion} (without --version) ${if length withoutVersion == 1 then "exists and is" else "exist and are"} executable.");
      env = {
        executables = toJSON executables;
        withoutVersion = toJSON withoutVersion;
        expectedVersion = version;
      };
      script = versionScript;
    };

  # The built webserver serves: started on 127.0.0.1 (a free port) against a tiny workspace, it answers
  # /server_info (HTTP 200, JSON) and / (HTTP 200, the UI's HTML); it is always stopped before the build ends.
  webserver = { package, executable ? "dagster-webserver", timeout ? 180 }:
    mkTest {
      inherit package;
      test = "webserver";
      description = "The built ${executable} starts on 127.0.0.1 against a workspace of an empty Definitions "
        + "and answers /server_info (HTTP 200, JSON) and / (HTTP 200, the UI's HTML).";
      env = {
        inherit executable;
        startTimeout = toString timeout;
      };
      script = webserverScript;
    };

  # dagster-postgres against a real PostgreSQL on loopback: initdb in the build's temporary directory,
  # postgres on 127.0.0.1 (a free port), the Nix-built dagster CLI migrates an instance stored there, a
  # second process materializes an asset into it and a third reads the run and the event back; postgres is
  # always stopped before the build ends. `postgresql` defaults to the one this file was imported with.
  # `scheme` is postgres_db.scheme: the default postgresql+psycopg2 names the driver dagster-postgres
  # requires (psycopg2-binary); a plain "postgresql" makes SQLAlchemy >= 2.1 load psycopg 3 instead.
  postgres = { package, postgresql ? defaultPostgresql, database ? "dagster_nix_test"
             , scheme ? "postgresql+psycopg2", timeout ? 60 }:
    mkTest {
      inherit package;
      test = "postgres";
      description = "The Nix-built dagster CLI migrates a Dagster instance stored in a real PostgreSQL on "
        + "127.0.0.1, and a run materializing an asset into it is read back from a second process.";
      env = {
        postgresql = if postgresql == null then "" else "${postgresql}";
        inherit database scheme;
        startTimeout = toString timeout;
      };
      script = postgresScript;
    };
}
