"""Asset checks against a tiny fake Python package set, built for real by Nix with /usr/bin/python3."""

import json
import os
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance, materialize

from dagster_nix_builder import nix_assets
from dagster_nix_builder.checks import check_specs_for, top_level_modules

PYSET = Path(__file__).parent / "fixtures" / "pyset"
REPO_NIX = Path(__file__).resolve().parent.parent / "nix"


def _checks(result):
    return {
        (e.asset_check_evaluation_data.asset_key.to_user_string(), e.asset_check_evaluation_data.check_name):
            e.asset_check_evaluation_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }


def test_check_specs_follow_the_package(make_nix):
    graph = make_nix(PYSET).load_graph()
    names = lambda attr: sorted(s.name for s in check_specs_for(graph[attr], AssetKey(attr)))
    assert names("python3-host") == []
    assert names("beta") == ["imports"]  # declares no executables
    assert names("alpha") == ["cli_version", "imports"]
    assert names("dagster-webserver") == ["cli_version", "imports", "smoke"]
    (imports,) = [s for s in check_specs_for(graph["beta"], AssetKey("beta"))]
    assert imports.blocking


def test_checks_pass_fail_and_block_downstream(make_nix):
    nix = make_nix(PYSET)
    graph = nix.load_graph()
    assets = nix_assets(graph)
    result = materialize([assets], resources={"nix": nix}, instance=DagsterInstance.ephemeral(),
                         raise_on_error=False)
    mats = {e.asset_key.to_user_string(): e.materialization for e in result.get_asset_materialization_events()}
    # after-broken built fine, but the imports check of its dependency failed: not materialized.
    assert sorted(mats) == ["alpha", "beta", "dagster-webserver", "needs-yaml", "python3-host"]
    assert mats["alpha"].metadata["wheel"].value.endswith("alpha-1.0-py3-none-any.whl")
    checks = _checks(result)
    for key in [("alpha", "imports"), ("alpha", "cli_version"), ("beta", "imports"),
                ("dagster-webserver", "imports"), ("dagster-webserver", "cli_version"),
                ("dagster-webserver", "smoke")]:
        assert checks[key].passed, (key, checks[key].description)
    assert checks[("alpha", "imports")].metadata["modules"].value == ["alpha"]
    assert checks[("dagster-webserver", "smoke")].metadata["statuses"].value == {"/server_info": 200, "/": 200}
    failed = checks[("needs-yaml", "imports")]
    assert not failed.passed
    assert "No module named 'yaml'" in failed.description
    assert "module 'yaml' is provided by python3Packages.pyyaml" in failed.description
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    error = failure.step_failure_data.error
    message = error.message + (error.cause.message if error.cause else "")
    assert "after-broken: not materialized: the imports check of needs-yaml failed" in message


def test_cli_version_mismatch_fails(make_nix):
    nix = make_nix(PYSET, alphaPrints="9.9")
    assets = nix_assets(nix.load_graph())
    result = materialize([assets], resources={"nix": nix}, instance=DagsterInstance.ephemeral(),
                         selection=["alpha"])
    check = _checks(result)[("alpha", "cli_version")]
    assert not check.passed
    assert "expected version 1.0" in check.description and "9.9" in check.description
    assert result.success  # cli_version is not blocking


def test_top_level_modules_and_imports_only_see_the_closure(make_nix):
    nix = make_nix(PYSET)
    graph = nix.load_graph()
    result = materialize([nix_assets(graph)], resources={"nix": nix}, instance=DagsterInstance.ephemeral(),
                         selection=["beta"])
    assert top_level_modules(graph["beta"]) == ["beta"]
    check = _checks(result)[("beta", "imports")]
    assert check.passed, check.description
    assert check.metadata["modules"].value == ["beta"]


@pytest.mark.slow
@pytest.mark.skipif(not (REPO_NIX / "default.nix").is_file(), reason="nix/default.nix is not written yet")
def test_real_six_packages_with_all_checks(tmp_path: Path):
    from dagster_nix_builder import NixResource

    nix = NixResource(nix_dir=str(REPO_NIX), scope=os.environ.get("DAGSTER_NIX_SCOPE", "bootstrap"),
                      out_link_dir=str(tmp_path / "results"))
    graph = nix.load_graph()
    assert {"dagster-src", "dagster-shared", "dagster-pipes", "dagster", "dagster-graphql",
            "dagster-webserver"} <= set(graph)
    result = materialize([nix_assets(graph)], resources={"nix": nix}, instance=DagsterInstance.ephemeral())
    assert result.success
    checks = _checks(result)
    assert checks and all(c.passed for c in checks.values()), {k: c.description for k, c in checks.items()}
    assert ("dagster-webserver", "smoke") in checks


def _rerun_nix(nix, **changes):
    from dagster_nix_builder import NixResource

    fields = {name: getattr(nix, name) for name in ("nix_dir", "out_link_dir", "nix_args")}
    return NixResource(**fields, **changes)


def test_check_results_are_cached_per_output_path(make_nix, tmp_path: Path):
    nix = make_nix(PYSET)
    graph = nix.load_graph()
    assets = nix_assets(graph)
    instance = DagsterInstance.ephemeral()
    run = lambda resource: _checks(materialize([assets], resources={"nix": resource}, instance=instance,
                                               selection=["alpha"]))
    first = run(nix)
    assert {k: c.metadata["cached"].value for k, c in first.items()} == {
        ("alpha", "imports"): False, ("alpha", "cli_version"): False,
    }
    out_hash = Path(graph["alpha"].out_path).name[:32]
    assert (tmp_path / "results" / ".checks" / f"imports-{out_hash}.json").is_file()

    second = run(nix)
    for key, check in second.items():
        assert check.passed and check.metadata["cached"].value is True, key
        assert check.metadata["checked_at"].value == first[key].metadata["checked_at"].value
    assert second[("alpha", "imports")].metadata["modules"].value == ["alpha"]
    assert second[("alpha", "cli_version")].metadata["output"].value == first[("alpha", "cli_version")].metadata[
        "output"].value

    third = run(_rerun_nix(nix, recheck=True))
    for key, check in third.items():
        assert check.passed and check.metadata["cached"].value is False, key
        assert check.metadata["checked_at"].value > first[key].metadata["checked_at"].value


def test_failed_results_are_cached_and_a_corrupt_cache_is_ignored(make_nix, tmp_path: Path):
    nix = make_nix(PYSET, alphaPrints="9.9")
    graph = nix.load_graph()
    assets = nix_assets(graph)
    instance = DagsterInstance.ephemeral()
    run = lambda: _checks(materialize([assets], resources={"nix": nix}, instance=instance,
                                      selection=["alpha"]))
    first = run()[("alpha", "cli_version")]
    assert not first.passed and first.metadata["cached"].value is False
    second = run()[("alpha", "cli_version")]
    assert not second.passed and second.metadata["cached"].value is True
    assert second.description == first.description and "expected version 1.0" in second.description

    out_hash = Path(graph["alpha"].out_path).name[:32]
    cache_file = tmp_path / "results" / ".checks" / f"imports-{out_hash}.json"
    cache_file.write_text('{"key": {"check": "imports"')  # e.g. a disk filled up mid-write elsewhere
    (tmp_path / "results" / ".checks" / f"cli_version-{out_hash}.json").write_text("[]")
    third = run()
    assert third[("alpha", "imports")].passed and third[("alpha", "imports")].metadata["cached"].value is False
    assert third[("alpha", "cli_version")].metadata["cached"].value is False
    assert json.loads(cache_file.read_text())["passed"] is True  # written again, whole


def test_transient_failures_are_not_cached(tmp_path: Path):
    from dagster_nix_builder.checks import CHECK_CACHE_VERSION, CheckCache, _fail, _stamped
    from dagster_nix_builder.graph import NixPackage

    package = NixPackage("p", (), outputs={"out": "/nix/store/" + "a" * 32 + "-p-1.0"}, version="1.0")
    cache = CheckCache(tmp_path / ".checks")
    cache.put("smoke", package, _stamped(_fail("smoke", AssetKey("p"), "timed out", transient=True), 1.0))
    assert not cache.path("smoke", package).exists()
    cache.put("smoke", package, _stamped(_fail("smoke", AssetKey("p"), "exit 1", {"port": 1}), 2.0))
    hit = cache.get("smoke", package, AssetKey("p"))
    assert hit is not None and not hit.passed and hit.description == "exit 1"
    assert hit.metadata["port"].value == 1 and hit.metadata["checked_at"].value == 2.0
    assert [p.name for p in cache.directory.iterdir()] == [cache.path("smoke", package).name]  # no tmp left
    # Another expected version (or check code version) is another question: no hit.
    other = NixPackage("p", (), outputs=dict(package.outputs), version="2.0")
    assert cache.get("smoke", other, AssetKey("p")) is None
    assert json.loads(cache.path("smoke", package).read_text())["key"]["cache_version"] == CHECK_CACHE_VERSION
