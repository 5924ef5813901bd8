"""Publishing in the asset graph: ``published/<attr>`` assets, materialized in a real Dagster instance, publish
to a real signed binary cache served by our own nginx on loopback, gated by Nix's own rebuild check."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import TINY
from dagster import AssetKey, DagsterInstance, materialize
from test_binary_cache import NGINX, serve_directory
from test_package_index import PASSWORD, USER, Index, index  # noqa: F401 - the index fixture

from dagster_nix_builder import NixResource, nix_assets
from dagster_nix_builder.publish.assets import PublishSettings, publish_assets, published_key
from dagster_nix_builder.publish.binary_cache import generate_signing_key

pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install nginx)")


@pytest.fixture
def package_set(tmp_path: Path) -> Path:
    """The tiny set plus ``clock``, which writes the time into its output: it never rebuilds bit for bit."""
    copy = tmp_path / "set"
    shutil.copytree(TINY, copy)
    clock = '{ mkPkg }: mkPkg { name = "clock"; script = "date +%s%N > $out/time"; }\n'
    (copy / "packages" / "clock.nix").write_text(clock)
    return copy


def publish(nix: NixResource, settings: PublishSettings, attrs: list[str]):
    """Materialize ``published/<attr>`` of ``attrs`` (their checks included) in a fresh instance."""
    graph = nix.load_graph()
    keys = {attr: AssetKey(attr) for attr in graph}
    assets = publish_assets(graph, keys, settings)
    with DagsterInstance.ephemeral() as instance:
        return materialize(
            [nix_assets(graph), assets], resources={"nix": nix}, instance=instance, raise_on_error=False,
            selection=[f"published/{a}" for a in attrs],
        )


def test_published_packages_substitute_from_the_served_cache_and_the_gate_holds_back_the_rest(
    tmp_path: Path, package_set: Path, salt: str
):
    nix = NixResource(nix_dir=str(package_set), scope=None, nix_args={"salt": salt},
                      out_link_dir=str(tmp_path / "links"))
    secret = tmp_path / "keys" / "secret"
    public = generate_signing_key(nix.cli(), "dnb-test-1", secret, tmp_path / "keys" / "public")
    cache = tmp_path / "cache"
    nix.build(["solo", "mid", "clock"]).wait()  # base comes with mid; top-level stays unbuilt
    with serve_directory(cache, tmp_path / "nginx") as url:
        settings = PublishSettings(cache_url=f"file://{cache}", secret_key_file=str(secret), cache_http_url=url)
        result = publish(nix, settings, ["solo", "mid", "clock", "top-level"])

        assert not result.success  # clock and top-level could not be published
        published = {e.asset_key for e in result.get_asset_materialization_events()}
        assert published == {published_key(AssetKey(a)) for a in ("solo", "mid")}
        checks = {(e.asset_key.path[-1], e.check_name): e for e in result.get_asset_check_evaluations()}
        assert checks[("solo", "reproducible")].passed and checks[("solo", "substitutes")].passed
        assert checks[("mid", "substitutes")].passed
        clock = checks[("clock", "reproducible")]
        assert not clock.passed and "time" in str(clock.metadata["differing_files"].value)
        failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
        message = failure.event_specific_data.error.to_string()
        assert "clock does not rebuild bit for bit (time)" in message
        assert "top-level is not built yet: materialize top-level first" in message

        # What was published: signed, with its provenance next to it; nothing of clock.
        mat = next(e for e in result.get_asset_materialization_events() if e.asset_key.path[-1] == "solo")
        metadata = mat.materialization.metadata
        assert metadata["public_key"].value == public and metadata["paths_uploaded"].value >= 1
        document = json.loads(Path(metadata["provenance_file"].value).read_text())
        assert document["signature_key_name"] == "dnb-test-1"
        assert document["derivation"] == nix.load_graph()["solo"].drv_path
        clock_out = nix.load_graph()["clock"].out_path
        assert not (cache / f"{Path(clock_out).name.split('-')[0]}.narinfo").exists()

        # Published again: nothing is uploaded twice.
        again = publish(nix, settings, ["solo"])
        assert again.success
        mat = again.get_asset_materialization_events()[0].materialization.metadata
        assert mat["paths_uploaded"].value == 0 and mat["paths_already_present"].value >= 1

        # Allowed explicitly, clock is published; its check still says it does not rebuild identically.
        allowed = PublishSettings(cache_url=f"file://{cache}", secret_key_file=str(secret), allow_nonreproducible=True)
        forced = publish(nix, allowed, ["clock"])
        assert forced.success
        assert [e.passed for e in forced.get_asset_check_evaluations() if e.check_name == "reproducible"] == [False]
        assert (cache / f"{Path(clock_out).name.split('-')[0]}.narinfo").exists()


def test_a_missing_signing_key_fails_the_publication_naming_the_file(tmp_path: Path, salt: str):
    nix = NixResource(nix_dir=str(TINY), scope=None, nix_args={"salt": salt}, out_link_dir=str(tmp_path / "links"))
    nix.build(["solo"]).wait()
    settings = PublishSettings(cache_url=f"file://{tmp_path / 'cache'}", secret_key_file=str(tmp_path / "no-key"))
    result = publish(nix, settings, ["solo"])
    assert not result.success and not result.get_asset_materialization_events()
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert str(tmp_path / "no-key") in failure.event_specific_data.error.to_string()


@pytest.mark.slow
def test_scripts_publish_sh_builds_and_publishes_the_six(tmp_path: Path, index: Index):  # noqa: F811
    """The README's publishing command on the repository's own six: built, checked, gated, signed, served,
    substituted into an empty store; the five wheels on a real index (pypiserver on loopback), installed from
    it into fresh virtualenvs; a provenance document per package; nginx gone afterwards."""
    repo = Path(__file__).resolve().parent.parent
    state = tmp_path / "publish"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DNB_", "DAGSTER_"))}
    env.update(DNB_PUBLISH_DIR=str(state), DAGSTER_HOME=str(tmp_path / "home"), DNB_INDEX_UPLOAD_URL=index.url,
               DNB_INDEX_URL=index.simple, DNB_INDEX_USER=USER, DNB_INDEX_PASSWORD=PASSWORD)
    (tmp_path / "home").mkdir()
    six = ["dagster-src", "dagster-shared", "dagster-pipes", "dagster", "dagster-graphql", "dagster-webserver"]
    # The six of the hand-run report and what they need (the whole set is the command without a selection).
    selection = " or ".join(f'+key:"published/{attr}"' for attr in six)
    proc = subprocess.run([str(repo / "scripts" / "publish.sh"), selection], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=1800, check=False)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]
    assert "published/dagster-postgres" not in log  # the selection held
    for attr in six:
        for check in ("reproducible", "substitutes"):
            assert f"Asset check '{check}' on 'published/{attr}' passed" in log, (attr, check)
    for attr in ("dagster", "dagster-graphql", "dagster-webserver"):  # the packages with executables
        assert f"Asset check 'installs' on 'published/{attr}' passed" in log, attr
    assert len(list(index.packages.glob("*.whl"))) == 5
    provenance = {p.name for p in (state / "cache" / "provenance").iterdir()}
    assert len(provenance) == 6 and all(any(p.startswith(f"{a}-1.") for p in provenance) for a in six)
    assert (state / "keys" / "secret").stat().st_mode & 0o077 == 0
    running = subprocess.run(["pgrep", "-f", str(state)], capture_output=True, text=True, check=False).stdout
    assert not running, f"left running: {running}"
