"""Publishing wheels to a Python package index, and installing them back the way a user does.

:func:`upload_wheels` asks the index first (its simple API page of each project, with the files' sha256): a wheel
already there with the same name *and* the same bytes counts as published and is not sent again, so a retry after
a fault completes the job; the same name with other bytes is refused before anything is sent. The others go up
one by one with ``twine upload`` (one call per wheel, so a failure names its wheel), and the index is read again
afterwards: a wheel is reported as uploaded only once the index serves it with our sha256.

:func:`verify_install` installs our distributions into a fresh virtualenv from the served index alone (pip's own
configuration switched off for that step, so neither the usual index nor ``find-links`` can supply them), then
their third-party dependencies through the user's usual pip configuration, proves that every file installed
from our wheels is byte for byte ours, and runs the executable's ``--version``.

No index host is written here: every URL comes from the caller.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from dagster_nix_builder.nix.errors import NixBuilderError
from dagster_nix_builder.nix.processes import run

UPLOAD_TIMEOUT_S = 600.0
INSTALL_TIMEOUT_S = 1800.0
HTTP_TIMEOUT_S = 30.0


class IndexUploadError(NixBuilderError):
    """A wheel could not be published; ``uploaded`` lists the wheels this call did publish before the fault."""

    def __init__(self, wheel: str, cause: str, uploaded: Sequence[str] = ()) -> None:
        self.wheel = wheel
        self.cause = cause
        self.uploaded = tuple(uploaded)
        done = f" (published before this fault: {', '.join(self.uploaded)})" if self.uploaded else ""
        super().__init__(f"{wheel} was not published: {cause}{done}")


class InstallVerificationError(NixBuilderError):
    """Installing from the served index did not give our distributions, or the executable is not the version."""


@dataclass(frozen=True)
class IndexPublication:
    repository_url: str
    uploaded: tuple[str, ...]  # wheel file names sent by this call
    already_present: tuple[str, ...]  # same name and same sha256 already served: nothing sent
    bytes: int  # bytes sent
    seconds: float


@dataclass(frozen=True)
class InstallResult:
    index_url: str
    venv: Path
    ours: tuple[str, ...]  # "project==version", each installed from the served index, files checked
    files_checked: int
    dependencies_installed: int  # third-party distributions installed through the usual pip configuration
    version_output: str
    seconds: float


@dataclass(frozen=True)
class Wheel:
    path: Path
    name: str  # file name
    project: str  # normalized (PEP 503)
    version: str
    sha256: str
    size: int

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> Wheel:
        """``path`` is a wheel, or a directory holding one (a Nix ``dist`` output)."""
        p = Path(path)
        if p.is_dir():
            found = sorted(p.glob("*.whl"))
            if len(found) != 1:
                raise IndexUploadError(p.name, f"{p} holds {len(found)} wheels, expected one")
            p = found[0]
        parts = p.name.removesuffix(".whl").split("-")
        if not p.name.endswith(".whl") or len(parts) < 5:
            raise IndexUploadError(p.name, f"{p} is not a wheel file (name-version-python-abi-platform.whl)")
        digest = hashlib.sha256()
        try:
            with p.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
        except OSError as e:
            raise IndexUploadError(p.name, f"cannot read {p}: {e.strerror or e}") from e
        return cls(p, p.name, normalize(parts[0]), parts[1], digest.hexdigest(), p.stat().st_size)


def normalize(project: str) -> str:
    return re.sub(r"[-_.]+", "-", project).lower()


# -- the index's simple API -----------------------------------------------------------------------------------


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        href = dict(attrs).get("href")
        if tag == "a" and href:
            self.hrefs.append(href)


class _SameOrigin(urllib.request.HTTPRedirectHandler):
    """Follows redirects within the index only: pypiserver sends unknown projects to another index (its
    fallback), whose files of the same name are not ours."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        if urllib.parse.urlsplit(newurl)[:2] != urllib.parse.urlsplit(req.full_url)[:2]:
            return None
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _get(url: str, auth: tuple[str, str] | None) -> bytes:
    request = urllib.request.Request(url, headers={"Accept": "text/html"})
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    with urllib.request.build_opener(_SameOrigin()).open(request, timeout=HTTP_TIMEOUT_S) as response:
        return response.read()


def index_files(simple_url: str, project: str, auth: tuple[str, str] | None = None) -> dict[str, str]:
    """File name → sha256 of what the index serves for ``project`` ({} when it has none). A link without a hash
    fragment is downloaded and hashed. Raises ``urllib.error.URLError``/``HTTPError`` (other than 404/redirect)."""
    page = simple_url.rstrip("/") + f"/{normalize(project)}/"
    try:
        body = _get(page, auth)
    except urllib.error.HTTPError as e:
        if e.code == 404 or 300 <= e.code < 400:
            return {}
        raise
    parser = _Links()
    parser.feed(body.decode("utf-8", "replace"))
    files = {}
    for href in parser.hrefs:
        url, _, fragment = href.partition("#")
        name = urllib.parse.unquote(url.rstrip("/").rsplit("/", 1)[-1])
        digest = dict(p.split("=", 1) for p in fragment.split("&") if "=" in p).get("sha256")
        if digest is None:
            digest = hashlib.sha256(_get(urllib.parse.urljoin(page, url), auth)).hexdigest()
        files[name] = digest
    return files


def _index_error(wheel: str, url: str, error: Exception, uploaded: Sequence[str]) -> IndexUploadError:
    if isinstance(error, urllib.error.HTTPError) and error.code in (401, 403):
        cause = f"the index at {url} refused the credentials (HTTP {error.code}): check the username and password"
    elif isinstance(error, urllib.error.HTTPError):
        cause = f"the index at {url} answered HTTP {error.code} {error.reason}"
    else:
        reason = getattr(error, "reason", error)
        cause = f"the index at {url} is unreachable ({reason}): is the server running and the URL right?"
    return IndexUploadError(wheel, cause, uploaded)


def default_simple_url(repository_url: str) -> str:
    """The simple API beside an upload URL: ``<root>/simple/`` (pypiserver serves both from one root)."""
    root = repository_url.rstrip("/").removesuffix("/legacy")
    return root + "/simple/"


# -- upload ----------------------------------------------------------------------------------------------------


def upload_wheels(
    wheels: Sequence[str | os.PathLike[str]],
    repository_url: str,
    username: str,
    password: str,
    *,
    simple_url: str | None = None,
    python: str = sys.executable,
    timeout: float = UPLOAD_TIMEOUT_S,
) -> IndexPublication:
    """Publish ``wheels`` (read only: they may lie in the Nix store) to the index at ``repository_url``."""
    start = time.monotonic()
    simple = simple_url or default_simple_url(repository_url)
    auth = (username, password)
    ours = [Wheel.read(w) for w in wheels]
    uploaded: list[str] = []
    present: list[str] = []
    sent = 0

    def served(wheel: Wheel) -> dict[str, str]:
        try:
            return index_files(simple, wheel.project, auth)
        except (urllib.error.URLError, OSError) as e:
            raise _index_error(wheel.name, simple, e, uploaded) from e

    to_send = []
    for wheel in ours:
        there = served(wheel).get(wheel.name)
        if there is None:
            to_send.append(wheel)
        elif there == wheel.sha256:
            present.append(wheel.name)
        else:
            raise IndexUploadError(wheel.name, _different(wheel, there, simple), uploaded)
    for wheel in to_send:
        failure = _twine(python, wheel, repository_url, username, password, timeout)
        there = served(wheel).get(wheel.name)
        if failure is None and there == wheel.sha256:
            uploaded.append(wheel.name)
            sent += wheel.size
        elif there == wheel.sha256:  # refused, yet served with our bytes: someone else published it meanwhile
            present.append(wheel.name)
        elif there is not None:
            raise IndexUploadError(wheel.name, _different(wheel, there, simple), uploaded)
        else:
            cause = failure or f"twine reported success, but {simple} does not serve it"
            raise IndexUploadError(wheel.name, cause, uploaded)
    return IndexPublication(repository_url, tuple(uploaded), tuple(present), sent, time.monotonic() - start)


def _different(wheel: Wheel, there: str, simple: str) -> str:
    return (
        f"the index at {simple} already has {wheel.name} with different content (sha256 {there}, ours "
        f"{wheel.sha256}); an index never replaces a published file: publish under a new version or remove it there"
    )


def _twine(python: str, wheel: Wheel, url: str, username: str, password: str, timeout: float) -> str | None:
    """Upload one wheel; None on success, else the cause in words."""
    env = {**os.environ, "TWINE_USERNAME": username, "TWINE_PASSWORD": password, "NO_COLOR": "1", "COLUMNS": "500"}
    command = [python, "-m", "twine", "upload", "--non-interactive", "--disable-progress-bar",
               "--repository-url", url, str(wheel.path)]  # fmt: skip
    try:
        proc = run(command, capture_output=True, text=True, env=env, timeout=timeout)
    except OSError as e:
        return f"cannot run {python} -m twine: {e.strerror or e}"
    except subprocess.TimeoutExpired:
        return f"twine did not finish within {timeout:.0f} s"
    if proc.returncode == 0:
        return None
    output = proc.stdout + proc.stderr
    status = re.search(r"HTTPError: (\d{3})", output)
    code = int(status.group(1)) if status else None
    if code in (401, 403):
        return f"the index at {url} refused the credentials of user {username!r} (HTTP {code}): check them"
    if "No module named twine" in output:
        return f"twine is not installed for {python}: pip install twine"
    if re.search(r"ConnectionError|Max retries exceeded|Connection refused|Name or service not known", output):
        return f"the index at {url} is unreachable: {_last_line(output)}"
    if code is not None:
        return f"the index at {url} refused the upload (HTTP {code}): {_last_line(output)}"
    return f"twine upload exited with code {proc.returncode}: {_last_line(output)}"


def _last_line(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


# -- install from the served index ------------------------------------------------------------------------------


def verify_install(
    index_url: str,
    wheels_by_project: Mapping[str, str | os.PathLike[str]],
    executable: str,
    expected_version: str,
    workdir: str | os.PathLike[str],
    *,
    python: str = sys.executable,
    timeout: float = INSTALL_TIMEOUT_S,
) -> InstallResult:
    """Install our wheels' projects from ``index_url`` (its simple API) into a fresh virtualenv under
    ``workdir``, their dependencies from the usual index, check the files, run ``executable --version``."""
    start = time.monotonic()
    wheels = {project: Wheel.read(path) for project, path in wheels_by_project.items()}
    venv = Path(workdir) / "venv"
    _step(f"creating the virtualenv {venv}", [python, "-m", "venv", "--clear", str(venv)], dict(os.environ), timeout)
    vpy = str(venv / "bin" / "python")
    pins = [f"{w.project}=={w.version}" for w in wheels.values()]
    pip = [vpy, "-m", "pip", "install", "--disable-pip-version-check"]
    # Ours from the served index alone: no configuration file, no PIP_* variable (find-links, extra index).
    isolated = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")} | {"PIP_CONFIG_FILE": os.devnull}
    report = Path(workdir) / "ours.json"
    _step(
        f"installing {', '.join(pins)} from {index_url} alone",
        [*pip, "--no-deps", "--no-cache-dir", "--index-url", index_url, "--report", str(report), *pins],
        isolated,
        timeout,
    )
    _check_report(report, wheels, index_url)
    deps_report = Path(workdir) / "dependencies.json"
    _step(
        "installing the third-party dependencies through the usual pip configuration",
        [*pip, "--report", str(deps_report), *pins],
        dict(os.environ),
        timeout,
    )
    installed = json.loads(deps_report.read_text()).get("install", [])
    checked = sum(_check_files(venv, w) for w in wheels.values())
    proc = _step(f"running {executable} --version", [str(venv / "bin" / executable), "--version"], None, timeout)
    output = (proc.stdout + proc.stderr).strip()
    if expected_version not in output:
        raise InstallVerificationError(
            f"{executable} --version from the index at {index_url} says {output!r}, not version {expected_version}"
        )
    return InstallResult(index_url, venv, tuple(pins), checked, len(installed), output, time.monotonic() - start)


def _step(what: str, command: list[str], env: dict[str, str] | None, timeout: float) -> Any:
    try:
        proc = run(command, capture_output=True, text=True, env=env, timeout=timeout)
    except OSError as e:
        raise InstallVerificationError(f"{what} failed: cannot run {command[0]}: {e.strerror or e}") from e
    except subprocess.TimeoutExpired as e:
        raise InstallVerificationError(f"{what} did not finish within {timeout:.0f} s") from e
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise InstallVerificationError(f"{what} failed (exit code {proc.returncode}):\n{tail}")
    return proc


def _check_report(report: Path, wheels: Mapping[str, Wheel], index_url: str) -> None:
    """Each of ours was downloaded from the served index, as the very file we built (pip's ``--report``)."""
    origin = urllib.parse.urlsplit(index_url)[:2]
    by_project = {w.project: w for w in wheels.values()}
    for item in json.loads(report.read_text()).get("install", []):
        project = normalize(item["metadata"]["name"])
        wheel = by_project.get(project)
        info = item.get("download_info") or {}
        url = info.get("url", "")
        if wheel is None:
            raise InstallVerificationError(f"pip installed {project}, which is not one of ours, with --no-deps")
        if urllib.parse.urlsplit(url)[:2] != origin:
            raise InstallVerificationError(f"{wheel.name} was installed from {url!r}, not from {index_url}")
        archive = info.get("archive_info") or {}
        digest = (archive.get("hashes") or {}).get("sha256") or archive.get("hash", "").removeprefix("sha256=")
        if digest and digest != wheel.sha256:
            raise InstallVerificationError(
                f"{url} has sha256 {digest}, but our {wheel.name} has {wheel.sha256}: the index serves other bytes"
            )


def _check_files(venv: Path, wheel: Wheel) -> int:
    """Every file our wheel's RECORD lists lies in the virtualenv with our hash; returns how many were checked."""
    sites = sorted(venv.glob("lib/python*/site-packages"))
    if len(sites) != 1:
        raise InstallVerificationError(f"{venv} has {len(sites)} site-packages directories, expected one")
    with zipfile.ZipFile(wheel.path) as archive:
        record_name = next(
            (n for n in archive.namelist() if n.count("/") == 1 and n.endswith(".dist-info/RECORD")), None
        )
        if record_name is None:
            raise InstallVerificationError(f"our {wheel.name} has no .dist-info/RECORD")
        rows = list(csv.reader(io.TextIOWrapper(archive.open(record_name), encoding="utf-8")))
    checked = 0
    for row in rows:
        if len(row) < 2 or not row[1] or row[0].split("/", 1)[0].endswith(".data"):
            continue  # RECORD itself, and .data/ files that pip moves elsewhere (scripts, headers)
        algorithm, _, expected = row[1].partition("=")
        installed = sites[0] / row[0]
        try:
            actual = base64.urlsafe_b64encode(hashlib.new(algorithm, installed.read_bytes()).digest())
        except OSError as e:
            raise InstallVerificationError(f"{row[0]} of our {wheel.name} is not installed in {venv}: {e}") from e
        if actual.decode().rstrip("=") != expected.rstrip("="):
            raise InstallVerificationError(f"{installed} differs from {row[0]} in our {wheel.name}: not our file")
        checked += 1
    return checked


__all__ = [
    "IndexPublication", "IndexUploadError", "InstallResult", "InstallVerificationError", "default_simple_url",
    "index_files", "normalize", "upload_wheels", "verify_install",
]  # fmt: skip
