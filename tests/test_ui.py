"""The real UI: ``dg dev`` in the repository root (the dg project; its component on ``nix/``) and a real
headless Chromium.

The test starts ``dg dev`` from the venv on 127.0.0.1 and a free port with a temporary ``DAGSTER_HOME``
(an exported one wins over the project's ``.env``), waits until the code location has loaded (loading only
evaluates Nix, or reads the component's fresh state; nothing is built), then checks the asset graph and its
checks against the graph Nix reports:

* the GraphQL API: ``assetNodes`` with their ``dependencyKeys`` and their asset checks;
* the lineage page ``/asset-groups`` rendered by Chromium: one node per package, and one SVG edge per
  Nix dependency, matched to its two nodes by geometry;
* a screenshot of that page, saved to ``docs/asset-graph.png`` (the README shows it);
* each package's checks page lists the checks of its ``passthru.tests``.

Chromium is driven through the Chrome DevTools Protocol over a websocket (``websockets``), so no
browser download is needed: Debian's ``/usr/bin/chromium`` is enough. The whole server process group is
killed at the end, whatever happens.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dagster_nix_builder import NixResource
from dagster_nix_builder.nix.settings import bootstrap_nix_config

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parent.parent
SCREENSHOT = REPO / "docs" / "asset-graph.png"
NIX_CONFIG = bootstrap_nix_config()
SERVER_TIMEOUT_S = 180.0
PAGE_TIMEOUT_S = 90.0
VIEWPORT = (1600, 1000)


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


CHROMIUM = _chromium()
if CHROMIUM is None:
    pytest.skip(
        "chromium is not installed (scripts/setup.sh --test installs Debian's chromium)", allow_module_level=True
    )
if shutil.which("nix-instantiate") is None:
    pytest.skip("nix is not installed (apt-get install nix-bin)", allow_module_level=True)

websockets_sync = pytest.importorskip("websockets.sync.client")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _default_signals() -> None:
    # Runs in the child before exec: a parent started in the background may ignore SIGINT/SIGTERM, and
    # ignored dispositions survive exec, which would leave `dagster dev` deaf to our stop request.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _stop_group(proc: subprocess.Popen, timeout: float = 20.0, first: int = signal.SIGTERM) -> None:
    """Signal the process group of ``proc`` (it leads its own session) with ``first``, wait, then SIGKILL."""
    for sig in (first, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=timeout)
            # The leader is gone; children of the group may linger a moment.
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    os.killpg(proc.pid, 0)
                except ProcessLookupError:
                    return
                time.sleep(0.2)
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _graphql(base: str, query: str) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{base}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        body = json.loads(response.read())
    if body.get("errors"):
        raise AssertionError(f"GraphQL errors: {body['errors']}")
    return body["data"]


LOCATIONS_QUERY = """
{ workspaceOrError { __typename ... on Workspace { locationEntries { name loadStatus
    locationOrLoadError { __typename ... on PythonError { message } } } } } }
"""
ASSET_NODES_QUERY = """
{ assetNodes { assetKey { path } dependencyKeys { path } groupName
    assetChecksOrError { __typename ... on AssetChecks { checks { name } } } } }
"""


@pytest.fixture(scope="module")
def nix_graph():
    """The graph of the repo's ``nix/`` as Nix reports it (what the UI must show)."""
    return NixResource(nix_dir=str(REPO / "nix")).load_graph()


@pytest.fixture(scope="module")
def dagster_dev(tmp_path_factory) -> Iterator[str]:
    """``dg dev`` in the repo root on a free port; yields its base URL once the location loaded."""
    yield from _dg_dev(tmp_path_factory.mktemp("dagster_home"), {})


@pytest.fixture
def dagster_dev_publishing(tmp_path: Path) -> Iterator[str]:
    """``dg dev`` with publishing configured (``DNB_CACHE_URL`` set): the ``published/<package>`` assets."""
    yield from _dg_dev(tmp_path / "home", {
        "DNB_CACHE_URL": f"file://{tmp_path / 'cache'}", "DNB_SIGNING_KEY": str(tmp_path / "key"),
        "DNB_CACHE_HTTP_URL": "http://127.0.0.1:9",
    })


def _dg_dev(home: Path, extra_env: dict[str, str], cwd: Path = REPO) -> Iterator[str]:
    home.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_IS_DEV_CLI" and not k.startswith("DNB_")}
    env.update(DAGSTER_HOME=str(home), NIX_CONFIG=NIX_CONFIG, **extra_env)
    log_path = home / "dg-dev.log"
    command = [str(Path(sys.executable).with_name("dg")), "dev", "-h", "127.0.0.1", "-p", str(port)]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: webserver, daemon and code server die together
            preexec_fn=_default_signals,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_TIMEOUT_S
        last: object = None
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"dg dev exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"dg dev did not load the location in {SERVER_TIMEOUT_S}s (last: {last}):\n"
                    + log_path.read_text()[-4000:]
                )
            try:
                entries = _graphql(base, LOCATIONS_QUERY)["workspaceOrError"]["locationEntries"]
                last = entries
                if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                    errors = [e for e in entries if e["locationOrLoadError"]["__typename"] == "PythonError"]
                    assert not errors, f"the code location failed to load: {errors}"
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError, KeyError, TypeError) as exc:
                last = exc
            time.sleep(0.5)
        # Mark the first-visit "Join the Dagster community" dialog as seen, so it does not cover the graph.
        _graphql(base, "mutation { setNuxSeen }")
        yield base
    finally:
        # SIGINT is dagster dev's own shutdown path (it stops webserver, daemon and code server).
        _stop_group(proc, first=signal.SIGINT)


class Chromium:
    """A headless Chromium and one page, driven over the Chrome DevTools Protocol."""

    def __init__(self, executable: str, viewport: tuple[int, int]) -> None:
        self._profile = tempfile.mkdtemp(prefix="chromium-profile-")
        self.process = subprocess.Popen(
            [
                executable, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={self._profile}", "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0", f"--window-size={viewport[0]},{viewport[1]}", "about:blank",
            ],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._ids = itertools.count(1)
        self._stack = contextlib.ExitStack()
        try:
            port = self._devtools_port()
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
                targets = json.loads(response.read())
            page = next(t for t in targets if t["type"] == "page")
            self._ws = self._stack.enter_context(
                websockets_sync.connect(page["webSocketDebuggerUrl"], max_size=2**27)
            )
            self.call("Page.enable")
            self.call(
                "Emulation.setDeviceMetricsOverride",
                width=viewport[0], height=viewport[1], deviceScaleFactor=1, mobile=False,
            )
        except BaseException:
            self.close()
            raise

    def _devtools_port(self) -> int:
        marker = Path(self._profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"chromium exited with {self.process.returncode}")
            lines = marker.read_text().splitlines() if marker.exists() else []
            if len(lines) >= 2:
                return int(lines[0])
            time.sleep(0.1)
        raise AssertionError("chromium did not open its DevTools port in 30 s")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one CDP command and return its result (events in between are dropped)."""
        ident = next(self._ids)
        self._ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv(timeout=60))
            if message.get("id") == ident:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str) -> Any:
        """Value of a JavaScript expression in the page (JSON-serialisable values only)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"JavaScript error: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        self._stack.close()
        _stop_group(self.process, timeout=10)
        shutil.rmtree(self._profile, ignore_errors=True)


@pytest.fixture
def chromium() -> Iterator[Chromium]:
    assert CHROMIUM is not None
    browser = Chromium(CHROMIUM, VIEWPORT)
    try:
        yield browser
    finally:
        browser.close()


# Reads the lineage graph as drawn: asset nodes (foreignObjects holding the asset name) with their boxes,
# and edges (SVG paths with an arrow marker) with their first and last points. Dagster 1.13's class names
# are CSS-module names with a hash suffix, hence the prefix selectors.
READ_GRAPH_JS = r"""
(() => {
  const svg = document.querySelector('svg[class*="svgContainer"]');
  if (!svg) return null;
  const nodes = [...svg.querySelectorAll('foreignObject')].map(fo => {
    const name = fo.querySelector('[class*="assetName"]');
    return name && {
      name: name.textContent.trim(),
      x: +fo.getAttribute('x'), y: +fo.getAttribute('y'),
      w: +fo.getAttribute('width'), h: +fo.getAttribute('height'),
    };
  }).filter(Boolean);
  const edges = [...svg.querySelectorAll(':scope > path[marker-end], g > path[marker-end]')]
    .map(p => p.getAttribute('d'));
  const dialog = [...document.querySelectorAll('button')].some(b => b.innerText.trim() === 'Skip');
  const spinner = !!document.querySelector('[class*="Spinner"], [role="progressbar"]');
  return {nodes, edges, dialog, spinner};
})()
"""

# Dismisses the first-visit "Join the Dagster community" dialog, which would cover the graph.
SKIP_DIALOG_JS = r"""
(() => {
  const skip = [...document.querySelectorAll('button')].find(b => b.innerText.trim() === 'Skip');
  if (skip) skip.click();
  return !!skip;
})()
"""

_NUMBER = r"-?\d+(?:\.\d+)?(?:e-?\d+)?"


def _endpoints(d: str) -> tuple[tuple[float, float], tuple[float, float]]:
    numbers = [float(n) for n in re.findall(_NUMBER, d)]
    return (numbers[0], numbers[1]), (numbers[-2], numbers[-1])


def _edges_from_drawing(drawing: dict[str, Any]) -> set[tuple[str, str]]:
    """(upstream, downstream) per drawn edge: it starts at the right middle of the upstream node's box and
    ends (arrow) at the left middle of the downstream one; take the nearest box on each side."""
    nodes = drawing["nodes"]

    def nearest(point: tuple[float, float], side: str) -> str:
        def distance(node: dict[str, Any]) -> float:
            x = node["x"] + (node["w"] if side == "right" else 0)
            y = node["y"] + node["h"] / 2
            return (x - point[0]) ** 2 + (y - point[1]) ** 2

        return min(nodes, key=distance)["name"]

    edges = set()
    for d in drawing["edges"]:
        start, end = _endpoints(d)
        edges.add((nearest(start, "right"), nearest(end, "left")))
    return edges


def _untruncated(drawing: dict[str, Any], names: set[str]) -> dict[str, Any]:
    """The drawing with each node's label as the asset it names: the UI shortens a long name in the middle
    ("dagster…-resources"), which stands for the one name with that start and end."""
    def full(label: str) -> str:
        start, cut, end = label.partition("…")
        matches = [n for n in names if n.startswith(start) and n.endswith(end)] if cut else [label]
        return matches[0] if len(matches) == 1 else label

    return {**drawing, "nodes": [{**n, "label": n["name"], "name": full(n["name"])} for n in drawing["nodes"]]}


def test_asset_graph_in_the_ui(dagster_dev: str, nix_graph, chromium: Chromium) -> None:
    names = set(nix_graph)
    nix_edges = {(dep, attr) for attr in nix_graph for dep in nix_graph[attr].deps}
    assert len(names) >= 11 and nix_edges, "the repo's package set should have its eleven-plus packages with edges"

    # The API: the same assets with the same dependencies.
    nodes = _graphql(dagster_dev, ASSET_NODES_QUERY)["assetNodes"]
    api_edges = {
        ("/".join(dep["path"]), "/".join(node["assetKey"]["path"])) for node in nodes for dep in node["dependencyKeys"]
    }
    assert {"/".join(n["assetKey"]["path"]) for n in nodes} == names
    assert api_edges == nix_edges
    tests = {attr: sorted(nix_graph[attr].tests) for attr in names}
    api_checks = {
        "/".join(n["assetKey"]["path"]): sorted(c["name"] for c in n["assetChecksOrError"].get("checks", []))
        for n in nodes
    }
    assert api_checks == tests and any(tests.values()), "each test of passthru.tests is a check"

    # The page: every package drawn as a node, every Nix edge drawn as an arrow between the right nodes.
    chromium.call("Page.navigate", url=f"{dagster_dev}/asset-groups")
    deadline = time.monotonic() + PAGE_TIMEOUT_S
    drawing: dict[str, Any] | None = None
    while True:
        chromium.evaluate(SKIP_DIALOG_JS)
        drawing = chromium.evaluate(READ_GRAPH_JS)
        drawing = _untruncated(drawing, names) if drawing else drawing
        if (
            drawing
            and not drawing["dialog"]
            and {n["name"] for n in drawing["nodes"]} >= names
            and len(drawing["edges"]) >= len(nix_edges)
        ):
            break
        if time.monotonic() > deadline:
            chromium.screenshot(SCREENSHOT.with_name("asset-graph-failed.png"))
            raise AssertionError(f"the lineage graph did not render in {PAGE_TIMEOUT_S}s; last read: {drawing}")
        time.sleep(0.5)
    # Let the graph's fit-to-view animation settle before taking the picture; the community dialog (marked
    # seen through the API) would show about a second after load, so dismiss it if it shows anyway.
    time.sleep(2)
    chromium.evaluate(SKIP_DIALOG_JS)
    time.sleep(0.5)
    drawing = chromium.evaluate(READ_GRAPH_JS)
    assert drawing is not None and not drawing["dialog"], "a dialog covers the graph"
    drawing = _untruncated(drawing, names)
    assert not drawing["spinner"], "the page still shows a loading spinner"
    assert sorted(n["name"] for n in drawing["nodes"]) == sorted(names)
    assert _edges_from_drawing(drawing) == nix_edges
    page_text = chromium.evaluate("document.body.innerText")
    for node in drawing["nodes"]:
        assert node["label"] in page_text
    chromium.screenshot(SCREENSHOT)
    assert SCREENSHOT.stat().st_size > 10_000

    # The checks tab of each package with tests: every check listed by name.
    for attr, names_of_checks in tests.items():
        if not names_of_checks:
            continue
        chromium.call("Page.navigate", url=f"{dagster_dev}/assets/{attr}?view=checks")
        deadline = time.monotonic() + PAGE_TIMEOUT_S
        while True:
            chromium.evaluate(SKIP_DIALOG_JS)
            text = chromium.evaluate("document.body ? document.body.innerText : ''") or ""
            if all(name in text for name in names_of_checks) and "Checks" in text:
                break
            if time.monotonic() > deadline:
                chromium.screenshot(SCREENSHOT.with_name("asset-checks-failed.png"))
                raise AssertionError(f"{attr}: the checks {names_of_checks} are not listed; page: {text[-2000:]}")
            time.sleep(0.5)


def test_publish_assets_and_their_checks_in_the_ui(dagster_dev_publishing: str, nix_graph, chromium: Chromium) -> None:
    nodes = _graphql(dagster_dev_publishing, ASSET_NODES_QUERY)["assetNodes"]
    checks = {
        "/".join(n["assetKey"]["path"]): sorted(c["name"] for c in n["assetChecksOrError"].get("checks", []))
        for n in nodes
    }
    for attr in nix_graph:
        assert checks[f"published/{attr}"] == ["reproducible", "substitutes"], attr
    deps = {"/".join(n["assetKey"]["path"]): ["/".join(d["path"]) for d in n["dependencyKeys"]] for n in nodes}
    assert deps["published/dagster-webserver"] == ["dagster-webserver"]
    chromium.call("Page.navigate", url=f"{dagster_dev_publishing}/assets/published/dagster-webserver?view=checks")
    deadline = time.monotonic() + PAGE_TIMEOUT_S
    while True:
        chromium.evaluate(SKIP_DIALOG_JS)
        text = chromium.evaluate("document.body ? document.body.innerText : ''") or ""
        if "reproducible" in text and "substitutes" in text:
            break
        if time.monotonic() > deadline:
            chromium.screenshot(SCREENSHOT.with_name("publish-checks-failed.png"))
            raise AssertionError(f"the publish checks are not listed; page: {text[-2000:]}")
        time.sleep(0.5)
