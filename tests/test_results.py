"""Checks end to end: each package's tests (the `checked` fixture set) are its asset checks, built by the
real Nix in the run's one `nix build`, reported through a real Dagster instance."""

from pathlib import Path

import pytest
from dagster import AssetCheckKey, AssetKey, AssetSelection, DagsterInstance, materialize

from dagster_nix_builder import nix_assets
from dagster_nix_builder.adapters.assets import check_specs_for

CHECKED = Path(__file__).parent / "fixtures" / "checked"


def _checks(result):
    return {
        (e.asset_check_evaluation_data.asset_key.to_user_string(), e.asset_check_evaluation_data.check_name):
            e.asset_check_evaluation_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }


def _materialized(result):
    return [e.asset_key.to_user_string() for e in result.get_asset_materialization_events()]


def _messages(instance, result) -> list[str]:
    return [entry.user_message for entry in instance.all_logs(result.run_id) if entry.user_message]


def _failure(result) -> str:
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    error = failure.step_failure_data.error
    return error.message + (error.cause.message if error.cause else "")


def test_check_specs_are_the_packages_tests(make_nix):
    graph = make_nix(CHECKED).load_graph()
    specs = {attr: {s.name: s for s in check_specs_for(graph[attr], AssetKey(attr))} for attr in graph}
    assert {attr: sorted(s) for attr, s in specs.items()} == {
        "base": ["imports", "version"], "mid": ["imports"], "solo": ["version"], "top-level": [],
    }
    assert specs["base"]["imports"].blocking and not specs["base"]["version"].blocking
    assert specs["base"]["imports"].description.startswith("base names itself (blocking). (the derivation ")
    assert specs["base"]["imports"].description.endswith("-base-test-imports.drv).")


def test_passing_checks_then_the_same_checks_from_the_nix_store(make_nix):
    nix = make_nix(CHECKED)
    assets = nix_assets(nix.load_graph())
    instance = DagsterInstance.ephemeral()
    first = materialize([assets], resources={"nix": nix}, instance=instance)
    assert first.success
    order = _materialized(first)
    assert sorted(order) == ["base", "mid", "solo", "top-level"]
    checks = _checks(first)
    assert sorted(checks) == [("base", "imports"), ("base", "version"), ("mid", "imports"), ("solo", "version")]
    for key, check in checks.items():
        assert check.passed and check.metadata["built_now"].value is True, key
        assert check.metadata["out_path"].value.endswith(f"-{key[0]}-test-{key[1]}")
    assert any(m.startswith("Building base.tests.imports: ") for m in _messages(instance, first))

    second = materialize([assets], resources={"nix": nix}, instance=instance)
    assert second.success
    again = _checks(second)
    assert sorted(again) == sorted(checks)
    assert all(c.passed and c.metadata["built_now"].value is False for c in again.values())
    messages = _messages(instance, second)
    assert not [m for m in messages if m.startswith(("Building ", "Running: "))], messages  # no builder ran
    assert "Every output is valid already: nothing to build, no nix build started." in messages


def test_a_failing_blocking_check_stops_what_depends_on_the_package(make_nix):
    nix = make_nix(CHECKED, failTest="base.imports")
    result = materialize([nix_assets(nix.load_graph())], resources={"nix": nix},
                         instance=DagsterInstance.ephemeral(), raise_on_error=False)
    assert not result.success
    assert sorted(_materialized(result)) == ["base", "solo"]  # base itself is built; mid and top-level not
    checks = _checks(result)
    failed = checks[("base", "imports")]
    assert not failed.passed
    assert failed.description.startswith("build of ") and "base-test-imports.drv failed" in failed.description
    assert "base.imports: FAILED on purpose" in failed.metadata["log_tail"].value
    assert checks[("base", "version")].passed and checks[("solo", "version")].passed
    assert ("mid", "imports") not in checks
    message = _failure(result)
    assert "base.tests.imports: blocking check imports of base failed" in message
    assert "mid: not materialized: the blocking check imports of base failed" in message
    assert "top-level: not materialized" in message


def test_a_failing_check_that_does_not_block_stops_nothing(make_nix):
    nix = make_nix(CHECKED, failTest="base.version")
    result = materialize([nix_assets(nix.load_graph())], resources={"nix": nix},
                         instance=DagsterInstance.ephemeral(), raise_on_error=False)
    assert result.success
    assert sorted(_materialized(result)) == ["base", "mid", "solo", "top-level"]
    check = _checks(result)[("base", "version")]
    assert not check.passed and "base.version: FAILED on purpose" in check.metadata["log_tail"].value


@pytest.mark.parametrize("nondet", [False, True], ids=["deterministic", "nondeterministic"])
def test_a_check_selected_alone_is_run_again(make_nix, nondet: bool):
    nix = make_nix(CHECKED, **({"nondet": "solo.version"} if nondet else {}))
    assets = nix_assets(nix.load_graph())
    instance = DagsterInstance.ephemeral()
    assert materialize([assets], resources={"nix": nix}, instance=instance, selection=["solo"]).success
    check_alone = AssetSelection.checks(AssetCheckKey(AssetKey("solo"), "version"))
    result = materialize([assets], resources={"nix": nix}, instance=instance, selection=check_alone)
    assert result.success and _materialized(result) == []
    (check,) = _checks(result).values()
    assert check.passed and check.metadata["built_now"].value is True  # run again, not taken from the store
    assert any("--rebuild" in m for m in _messages(instance, result))
    if nondet:
        assert "may not be deterministic" in check.metadata["note"].value
        assert "may not be deterministic" in check.description
    else:
        assert "note" not in check.metadata and check.description is None
