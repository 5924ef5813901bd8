"""Asset checks on built packages: ``imports``, ``cli_version`` and the webserver ``smoke`` check.

Each check runs against the store paths just built, never against the Python running Dagster. A store
path never changes, so a check's result is kept per output path (see :class:`CheckCache`) and reused
by later runs instead of being computed again.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetKey,
    BoolMetadataValue,
    FloatMetadataValue,
    IntMetadataValue,
    JsonMetadataValue,
    MarkdownMetadataValue,
    MetadataValue,
    PathMetadataValue,
    TextMetadataValue,
    TimestampMetadataValue,
)

from . import processes
from .graph import NixPackage, NixPackageGraph, store_hash

if TYPE_CHECKING:
    from dagster import AssetExecutionContext

    from .invocation import PackageOutcome
    from .resource import NixResource

IMPORTS = "imports"
CLI_VERSION = "cli_version"
SMOKE = "smoke"
WEBSERVER_EXECUTABLE = "dagster-webserver"
SMOKE_TIMEOUT_S = 180.0
CHECK_ENV_PATH = "/usr/bin:/bin"
# Bump whenever a check's code changes what it decides or reports: cached results of older code are
# then ignored.
CHECK_CACHE_VERSION = 1
CHECK_CACHE_DIR = ".checks"
# Metadata key marking a result caused by the environment (timeout, signal), never cached.
TRANSIENT = "transient"

_IMPORT_SCRIPT = r"""
import importlib, json, os, sys
results = {}
for name in json.loads(sys.argv[1]):
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        results[name] = {"ok": False, "missing": exc.name, "error": f"{type(exc).__name__}: {exc}"}
        continue
    except Exception as exc:
        results[name] = {"ok": False, "missing": None, "error": f"{type(exc).__name__}: {exc}"}
        continue
    where = getattr(module, "__file__", None)
    if where is None and module.__spec__ is not None and module.__spec__.submodule_search_locations:
        where = list(module.__spec__.submodule_search_locations)[0]
    real = os.path.realpath(where) if where else None
    results[name] = {"ok": bool(real and real.startswith("/nix/store/")), "file": real, "missing": None,
                     "error": None if real and real.startswith("/nix/store/") else f"{name} loaded from {real}"}
print(json.dumps(results))
"""


def check_specs_for(package: NixPackage, asset_key: AssetKey) -> list[AssetCheckSpec]:
    """The checks that apply to ``package``: every Python package (it has a ``dist`` output) gets
    ``imports`` (blocking) and ``cli_version``; a package shipping ``dagster-webserver`` gets ``smoke``."""
    if not package.is_python:
        return []
    specs = [
        AssetCheckSpec(
            IMPORTS,
            asset=asset_key,
            blocking=True,
            description="In a clean interpreter given only the package's closure, every top-level module "
            "imports and lies in the Nix store.",
        ),
    ]
    if package.executables is None or package.executables:
        specs.append(
            AssetCheckSpec(
                CLI_VERSION,
                asset=asset_key,
                description="Each executable in $out/bin answers --version with exit 0 and the expected version.",
            )
        )
    if WEBSERVER_EXECUTABLE in _declared_executables(package):
        specs.append(
            AssetCheckSpec(
                SMOKE,
                asset=asset_key,
                description="The built dagster-webserver starts on 127.0.0.1 against a tiny workspace and "
                "answers /server_info and / with HTTP 200.",
            )
        )
    return specs


def _declared_executables(package: NixPackage) -> set[str]:
    names = set(package.executables or ())
    if package.main_program:
        names.add(package.main_program)
    if package.attr == WEBSERVER_EXECUTABLE or package.pname == WEBSERVER_EXECUTABLE:
        names.add(WEBSERVER_EXECUTABLE)
    return names


def run_checks(
    nix: NixResource,
    graph: NixPackageGraph,
    outcome: PackageOutcome,
    asset_key: AssetKey | None,
    context: AssetExecutionContext | None,
) -> list[AssetCheckResult]:
    """Run the checks selected in ``context`` for the package of ``outcome``."""
    if context is None or asset_key is None:
        return []
    names = {k.name for k in context.selected_asset_check_keys if k.asset_key == asset_key}
    package = outcome.package
    cache = CheckCache(Path(str(nix.resolved("out_link_dir"))) / CHECK_CACHE_DIR)
    recheck = bool(nix.resolved("recheck"))
    checks: list[tuple[str, Callable[[], AssetCheckResult]]] = [
        (IMPORTS, lambda: check_imports(nix, graph, package, asset_key)),
        (CLI_VERSION, lambda: check_cli_version(package, asset_key)),
        (SMOKE, lambda: check_webserver_smoke(package, asset_key)),
    ]
    results = []
    for name, check in checks:
        if name not in names:
            continue
        result = None if recheck else cache.get(name, package, asset_key)
        if result is None:
            # An exception (or a cancelled run) leaves the cache untouched: only finished checks count.
            result = _stamped(check(), time.time())
            cache.put(name, package, result)
        results.append(result)
    for result in results:
        log = context.log.info if result.passed else context.log.error
        cached = result.metadata.get("cached")
        log(f"check {result.check_name} on {package.attr}: {'passed' if result.passed else 'FAILED'}"
            + (" (cached)" if cached is not None and cached.value else "")
            + (f" - {result.description}" if result.description else ""))
    return results


# ---- result cache ----------------------------------------------------------------------------------

_METADATA_TYPES: dict[str, tuple[type, Callable[[Any], Any]]] = {
    "bool": (BoolMetadataValue, MetadataValue.bool),
    "float": (FloatMetadataValue, MetadataValue.float),
    "int": (IntMetadataValue, MetadataValue.int),
    "json": (JsonMetadataValue, MetadataValue.json),
    "md": (MarkdownMetadataValue, MetadataValue.md),
    "path": (PathMetadataValue, MetadataValue.path),
    "text": (TextMetadataValue, MetadataValue.text),
    "timestamp": (TimestampMetadataValue, MetadataValue.timestamp),
}


def _stamped(result: AssetCheckResult, checked_at: float, cached: bool = False) -> AssetCheckResult:
    """``result`` with ``cached`` and ``checked_at`` (when the check really ran) in its metadata."""
    metadata = {
        **result.metadata,
        "cached": MetadataValue.bool(cached),
        "checked_at": MetadataValue.timestamp(checked_at),
    }
    return AssetCheckResult(
        check_name=result.check_name, asset_key=result.asset_key, passed=result.passed,
        severity=result.severity, description=result.description, metadata=metadata,
    )


class CheckCache:
    """Results of checks per output store path, one JSON file each: ``<dir>/<check>-<out hash>.json``.

    An entry is used only if it was written for the same check, output path, expected version and
    :data:`CHECK_CACHE_VERSION`; anything unreadable is ignored (the check simply runs again).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, check: str, package: NixPackage) -> Path:
        """The file holding the result of ``check`` on ``package``'s output."""
        return self.directory / f"{check}-{store_hash(package.out_path or '')}.json"

    @staticmethod
    def _key(check: str, package: NixPackage) -> dict[str, Any]:
        return {
            "cache_version": CHECK_CACHE_VERSION,
            "check": check,
            "out_path": package.out_path,
            "expected_version": package.version,
        }

    def get(self, check: str, package: NixPackage, key: AssetKey) -> AssetCheckResult | None:
        """The cached result of ``check`` on ``package`` (marked ``cached``), or None."""
        if not package.out_path:
            return None
        try:
            data = json.loads(self.path(check, package).read_text())
            if not isinstance(data, dict) or data.get("key") != self._key(check, package):
                return None
            metadata = {}
            for name, entry in data["metadata"].items():
                metadata[name] = _METADATA_TYPES[entry["type"]][1](entry["value"])
            result = AssetCheckResult(
                check_name=check,
                asset_key=key,
                passed=bool(data["passed"]),
                severity=AssetCheckSeverity(data["severity"]),
                description=data["description"],
                metadata=metadata,
            )
            return _stamped(result, float(data["checked_at"]), cached=True)
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return None

    def put(self, check: str, package: NixPackage, result: AssetCheckResult) -> None:
        """Store ``result`` (atomically); results marked transient or with unknown metadata are not."""
        if not package.out_path or TRANSIENT in result.metadata:
            return
        metadata: dict[str, dict[str, Any]] = {}
        for name, value in result.metadata.items():
            if name in ("cached", "checked_at"):
                continue
            kind = next((k for k, (cls, _) in _METADATA_TYPES.items() if type(value) is cls), None)
            if kind is None:
                return  # cannot be written back faithfully: run the check again next time
            metadata[name] = {"type": kind, "value": value.value}
        data = {
            "key": self._key(check, package),
            "passed": result.passed,
            "severity": result.severity.value,
            "description": result.description,
            "metadata": metadata,
            "checked_at": result.metadata["checked_at"].value,
        }
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{check}-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1, sort_keys=True)
            os.replace(tmp, self.path(check, package))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


# ---- imports ---------------------------------------------------------------------------------------


def closure(nix: NixResource, path: str) -> list[str]:
    """The runtime closure of a store path."""
    return nix.run(nix.store_command("--query", "--requisites", path)).stdout.split()


def site_packages(paths: Sequence[str]) -> list[str]:
    """``lib/python3*/site-packages`` directories of ``paths``."""
    return sorted(str(p) for path in paths for p in Path(path).glob("lib/python3*/site-packages") if p.is_dir())


def top_level_modules(package: NixPackage) -> list[str]:
    """Top-level modules of a package: ``top_level.txt``, else packages in site-packages, else the wheel's
    RECORD."""
    sites = site_packages([package.out_path] if package.out_path else [])
    names: set[str] = set()
    for site in sites:
        for top_level in Path(site).glob("*.dist-info/top_level.txt"):
            names.update(line.strip() for line in top_level.read_text().splitlines() if line.strip())
    if not names:
        for site in sites:
            names.update(p.name for p in Path(site).iterdir() if (p / "__init__.py").is_file())
    if not names and (wheel := wheel_path(package)):
        with zipfile.ZipFile(wheel) as zf:
            record = next((n for n in zf.namelist() if n.endswith(".dist-info/RECORD")), None)
            if record:
                for line in zf.read(record).decode().splitlines():
                    first = line.split(",", 1)[0].split("/", 1)[0]
                    if first and not first.endswith((".dist-info", ".data")):
                        names.add(first.removesuffix(".py"))
    return sorted(names)


def wheel_path(package: NixPackage) -> str | None:
    """The wheel in the package's ``dist`` output, if any."""
    dist = package.outputs.get("dist")
    if not dist or not Path(dist).is_dir():
        return None
    wheels = sorted(Path(dist).rglob("*.whl"))
    return str(wheels[0]) if wheels else None


def module_providers(graph: NixPackageGraph) -> dict[str, str]:
    """Module name -> the Nix input providing it (``python3Packages.<name>`` from
    ``bootstrap/wheels.json``, or an attribute of the set named like the module)."""
    providers: dict[str, str] = {}
    wheels = Path(graph.nix_dir) / "bootstrap" / "wheels.json"
    if wheels.is_file():
        try:
            targets = json.loads(wheels.read_text()).get("targets", {})
        except ValueError:
            targets = {}
        # Every target locks the same distributions (by name); any one names the modules.
        data = next(iter(targets.values()), {}).get("wheels", {})
        for name, info in data.items():
            for module in (info or {}).get("modules", []):
                providers.setdefault(module, f"python3Packages.{name}")
    for attr in graph:
        providers.setdefault(attr.replace("-", "_"), f"the package-set attribute {attr!r}")
    return providers


def check_imports(nix: NixResource, graph: NixPackageGraph, package: NixPackage, key: AssetKey) -> AssetCheckResult:
    """Import every top-level module with only the package's closure on the path."""
    paths = closure(nix, package.out_path or "")
    python = next((f"{p}/bin/python3" for p in paths if os.access(f"{p}/bin/python3", os.X_OK)), None)
    modules = top_level_modules(package)
    if python is None:
        return _fail(IMPORTS, key, f"no bin/python3 in the closure of {package.out_path}")
    if not modules:
        return _fail(IMPORTS, key, f"found no top-level modules in {package.out_path}")
    sites = site_packages(paths)
    proc = processes.run(
        # -B: the store is immutable, no __pycache__ may be written into it.
        [python, "-B", "-S", "-c", _IMPORT_SCRIPT, json.dumps(modules)],
        env={"PYTHONPATH": os.pathsep.join(sites)},  # like `env -i`: nothing else leaks in
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    try:
        results = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return _fail(IMPORTS, key, f"import script failed (exit {proc.returncode}): {proc.stderr[-2000:]}",
                     transient=proc.returncode < 0)
    bad = {m: r for m, r in results.items() if not r["ok"]}
    metadata = {
        "modules": MetadataValue.json(sorted(results)),
        "python": MetadataValue.path(python),
        "pythonpath": MetadataValue.json(sites),
    }
    if not bad:
        return AssetCheckResult(check_name=IMPORTS, asset_key=key, passed=True, metadata=metadata)
    providers = module_providers(graph)
    reasons = []
    for module, result in sorted(bad.items()):
        reason = f"{module}: {result['error']}"
        missing = result.get("missing")
        if missing:
            top = missing.split(".")[0]
            provider = providers.get(top)
            reason += (
                f"; module {top!r} is provided by {provider}, which is missing from the closure"
                if provider
                else f"; no known Nix input provides module {top!r}"
            )
        reasons.append(reason)
    return _fail(IMPORTS, key, "; ".join(reasons), metadata)


# ---- cli_version -----------------------------------------------------------------------------------


def executables(package: NixPackage) -> list[str]:
    """Executables of the package: ``executables``/``meta.mainProgram`` if declared, else ``$out/bin/*``."""
    bindir = Path(package.out_path or "/nonexistent") / "bin"
    declared = sorted(_declared_executables(package) & {p.name for p in bindir.iterdir()}) if bindir.is_dir() else []
    if declared and package.executables:
        return [str(bindir / n) for n in declared]
    if not bindir.is_dir():
        return []
    return sorted(str(p) for p in bindir.iterdir() if os.access(p, os.X_OK) and not p.name.startswith("."))


def _check_env(home: str) -> dict[str, str]:
    return {"PATH": CHECK_ENV_PATH, "HOME": home, "LANG": "C.UTF-8"}


def check_cli_version(package: NixPackage, key: AssetKey) -> AssetCheckResult:
    """Each executable's ``--version`` exits 0 and prints the package version."""
    exes = executables(package)
    expected = package.version or ""
    if not exes:
        return AssetCheckResult(
            check_name=CLI_VERSION, asset_key=key, passed=True,
            description=f"no executables in {package.out_path}/bin", metadata={"executables": 0},
        )
    problems = []
    outputs = {}
    without_option = []
    transient = False
    with tempfile.TemporaryDirectory(prefix="nix-cli-check-") as home:
        for exe in exes:
            try:
                proc = processes.run(
                    [exe, "--version"], env=_check_env(home), capture_output=True, text=True,
                    timeout=120, check=False,
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                problems.append(f"{Path(exe).name}: {exc}")
                transient = transient or isinstance(exc, subprocess.TimeoutExpired)
                continue
            transient = transient or proc.returncode < 0
            text = (proc.stdout + proc.stderr).strip()
            outputs[Path(exe).name] = text[-300:]
            if proc.returncode == 2 and "no such option" in text.lower():
                # A click usage error: this executable has no --version (dagster-webserver-debug).
                without_option.append(Path(exe).name)
            elif proc.returncode != 0:
                problems.append(f"{Path(exe).name} --version exited {proc.returncode}: {text[-300:]}")
            elif expected and expected not in text:
                problems.append(f"{Path(exe).name} --version printed {text[-200:]!r}, expected version {expected}")
    metadata = {
        "executables": len(exes),
        "output": MetadataValue.json(outputs),
        "expected_version": expected,
        "without_version_option": MetadataValue.json(without_option),
    }
    if len(without_option) == len(exes):
        problems.append(f"no executable accepts --version: {', '.join(without_option)}")
    if problems:
        return _fail(CLI_VERSION, key, "; ".join(problems), metadata, transient=transient)
    return AssetCheckResult(check_name=CLI_VERSION, asset_key=key, passed=True, metadata=metadata)


# ---- webserver smoke -------------------------------------------------------------------------------

_SMOKE_DEFS = """\
from dagster import Definitions, asset


@asset
def smoke_asset():
    return 1


defs = Definitions(assets=[smoke_asset])
"""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str, timeout: float = 5.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def check_webserver_smoke(
    package: NixPackage, key: AssetKey, timeout: float = SMOKE_TIMEOUT_S
) -> AssetCheckResult:
    """Start the built ``dagster-webserver`` on a free port against a tiny workspace; expect HTTP 200 from
    ``/server_info`` and ``/``."""
    exe = Path(package.out_path or "/nonexistent") / "bin" / WEBSERVER_EXECUTABLE
    if not exe.exists():
        return _fail(SMOKE, key, f"{exe} does not exist")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="nix-webserver-smoke-") as tmp:
        (Path(tmp) / "defs.py").write_text(_SMOKE_DEFS)
        (Path(tmp) / "workspace.yaml").write_text("load_from:\n  - python_file: defs.py\n")
        (Path(tmp) / "home").mkdir()
        env = {**_check_env(tmp), "DAGSTER_HOME": str(Path(tmp) / "home")}
        log_path = Path(tmp) / "webserver.log"
        started = time.monotonic()
        with open(log_path, "wb") as log:
            proc = processes.popen(
                [str(exe), "-h", "127.0.0.1", "-p", str(port), "-w", "workspace.yaml"],
                cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        statuses: dict[str, int] = {}
        try:
            while time.monotonic() - started < timeout and proc.poll() is None:
                try:
                    statuses["/server_info"] = _get(base + "/server_info")
                    if statuses["/server_info"] == 200:
                        statuses["/"] = _get(base + "/")
                        break
                except (OSError, urllib.error.URLError):
                    pass
                time.sleep(0.5)
        finally:
            # Still running without answering: the machine may just be slow, so don't cache a failure.
            timed_out = proc.poll() is None and time.monotonic() - started >= timeout
            processes.stop_group(proc, timeout=15)
        seconds = round(time.monotonic() - started, 3)
        log_tail = log_path.read_text(errors="replace")[-3000:]
    metadata = {
        "port": port,
        "statuses": MetadataValue.json(statuses),
        "startup_seconds": MetadataValue.float(seconds),
    }
    if statuses.get("/server_info") == 200 and statuses.get("/") == 200:
        return AssetCheckResult(check_name=SMOKE, asset_key=key, passed=True, metadata=metadata)
    metadata["log_tail"] = MetadataValue.md(f"```\n{log_tail}\n```")
    return _fail(SMOKE, key, f"webserver did not answer 200 on /server_info and / within {timeout}s "
                 f"(got {statuses or 'no answer'}; exit {proc.returncode}){_missing_ui(package)}", metadata,
                 transient=timed_out or (proc.returncode or 0) < 0)


UI_BUILD = "dagster_webserver/webapp/build"
"""Where the webserver's compiled UI lies in its package; Dagster's git repository does not track it."""


def _missing_ui(package: NixPackage) -> str:
    """Why a webserver cannot serve its UI, when the reason is that it has none."""
    out = Path(package.out_path or "/nonexistent")
    if any(out.glob(f"lib/python3*/site-packages/{UI_BUILD}/index.html")):
        return ""
    return (
        f"; {out.name} has no {UI_BUILD} (the compiled UI), so it answers 500 on /. Dagster's git repository "
        "does not track it; it is built from js_modules/ with Node and yarn, which this package set does not "
        "do (the release sdists carry it)"
    )


def _fail(
    name: str, key: AssetKey, description: str, metadata: dict | None = None, *, transient: bool = False
) -> AssetCheckResult:
    """A failed check; ``transient`` when the environment (a timeout, a signal) may be to blame, so the
    result is not cached and the next run checks again."""
    extra = {TRANSIENT: MetadataValue.bool(True)} if transient else {}
    return AssetCheckResult(
        check_name=name,
        asset_key=key,
        passed=False,
        severity=AssetCheckSeverity.ERROR,
        description=description,
        metadata={**(metadata or {}), "error": MetadataValue.text(description), **extra},
    )
