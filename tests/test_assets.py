"""Materializing through a real Dagster instance runs the real `nix build` of a tiny package set."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance, materialize

from dagster_nix_builder import (
    DagsterNixTranslator,
    DagsterNixTranslatorSettings,
    NixBuildError,
    NixPackage,
    NixPackageSetError,
    nix_assets,
)

REPO_NIX = Path(__file__).resolve().parent.parent / "nix"


def _materializations(result):
    return {
        event.asset_key.to_user_string(): event.materialization
        for event in result.get_asset_materialization_events()
    }


def test_materialize_all_then_noop(make_nix, tmp_path: Path):
    nix = make_nix()
    graph = nix.load_graph()
    assets = nix_assets(graph)
    instance = DagsterInstance.ephemeral()
    result = materialize([assets], resources={"nix": nix}, instance=instance)
    assert result.success
    order = [e.asset_key.to_user_string() for e in result.get_asset_materialization_events()]
    assert sorted(order) == ["base", "mid", "solo", "top-level"]
    assert order.index("base") < order.index("mid") < order.index("top-level")
    mats = _materializations(result)
    mid = mats["mid"].metadata
    assert mid["built_now"].value is True
    assert isinstance(mid["build_seconds"].value, float) and mid["build_seconds"].value > 0
    assert isinstance(mid["nar_size"].value, int) and mid["nar_size"].value > 0
    assert mid["closure_size"].value > mid["nar_size"].value  # includes base
    assert mid["drv_path"].value == graph["mid"].drv_path
    assert mid["out_path"].value == graph["mid"].out_path
    assert mid["nix_version"].value.startswith("nix (Nix) 2.")
    assert mid["scope"].value == "auto"
    assert mats["mid"].tags["dagster/data_version"] == Path(graph["mid"].out_path).name[:32]
    # Out-links are GC roots in the configured folder.
    link = tmp_path / "results" / "result-mid"
    assert os.readlink(link) == graph["mid"].out_path

    again = materialize([assets], resources={"nix": nix}, instance=instance)
    assert again.success
    assert {k: m.metadata["built_now"].value for k, m in _materializations(again).items()} == {
        "base": False, "mid": False, "solo": False, "top-level": False,
    }
    assert _materializations(again)["mid"].metadata["build_seconds"].value == 0.0


def test_code_version_is_drv_hash_and_keys_are_attrs(make_nix):
    graph = make_nix().load_graph()
    assets = nix_assets(graph)
    spec = assets.specs_by_key[AssetKey("top-level")]
    assert spec.code_version == graph["top-level"].drv_hash
    assert {d.asset_key for d in spec.deps} == {AssetKey("base"), AssetKey("mid")}
    assert spec.metadata["dagster-nix/attr"] == "top-level"
    assert spec.metadata["dagster-nix/file"].value.endswith("packages/top-level.nix")
    assert assets.can_subset


def test_subset_builds_only_selection(make_nix):
    nix = make_nix()
    assets = nix_assets(nix.load_graph())
    result = materialize([assets], resources={"nix": nix}, selection=["solo", "mid"],
                         instance=DagsterInstance.ephemeral())
    assert result.success
    assert sorted(_materializations(result)) == ["mid", "solo"]


def test_failure_fails_only_what_it_must(make_nix):
    nix = make_nix(fail="mid")
    assets = nix_assets(nix.load_graph())
    result = materialize([assets], resources={"nix": nix}, instance=DagsterInstance.ephemeral(),
                         raise_on_error=False)
    assert not result.success
    assert sorted(_materializations(result)) == ["base", "solo"]
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    error = failure.step_failure_data.error
    message = error.message + (error.cause.message if error.cause else "")
    assert "2 package(s) failed or blocked: mid, top-level" in message
    assert "top-level: dependency failed: mid" in message
    assert "something broke in mid" in message
    assert NixBuildError.__name__ in {error.cls_name, error.cause.cls_name if error.cause else None}


def test_translator_subclass_changes_keys_and_groups(make_nix):
    class Prefixed(DagsterNixTranslator):
        def get_description(self, package: NixPackage) -> str:
            return f"pkg {package.attr}"

    translator = Prefixed(DagsterNixTranslatorSettings(key_prefix=("nixpkgs",), group_name="pkgs"))
    nix = make_nix()
    assets = nix_assets(nix.load_graph(), translator=translator)
    spec = assets.specs_by_key[AssetKey(["nixpkgs", "mid"])]
    assert spec.group_name == "pkgs" and spec.description == "pkg mid"
    assert {d.asset_key for d in spec.deps} == {AssetKey(["nixpkgs", "base"])}
    result = materialize([assets], resources={"nix": nix}, selection=[AssetKey(["nixpkgs", "mid"])],
                         instance=DagsterInstance.ephemeral())
    assert result.success and list(_materializations(result)) == ["nixpkgs/mid"]


def test_unknown_selection_is_a_clear_error(make_nix):
    nix = make_nix()
    assets = nix_assets(nix.load_graph())
    with pytest.raises(Exception) as excinfo:
        materialize([assets], resources={"nix": nix}, selection=["nope"], instance=DagsterInstance.ephemeral())
    chain, error = [], excinfo.value
    while error is not None:
        chain.append(str(error))
        error = error.__cause__
    assert any("nope" in text for text in chain), chain


def test_source_pin_is_recorded(make_nix, tiny_dir: Path):
    (tiny_dir / "pins.json").write_text(
        '{"source": "git", "release": {"version": "1.13.27"},'
        ' "git": {"url": "https://example.invalid/dagster.git", "rev": "abc123", "hash": "sha256-x"}}'
    )
    nix = make_nix(tiny_dir)
    result = materialize([nix_assets(nix.load_graph())], resources={"nix": nix}, selection=["solo"],
                         instance=DagsterInstance.ephemeral())
    metadata = _materializations(result)["solo"].metadata
    assert metadata["source"].value == "git https://example.invalid/dagster.git rev abc123 hash sha256-x"
    assert metadata["source_pin"].value["git"]["rev"] == "abc123"


@pytest.mark.parametrize(("file", "attr", "hint"), [
    ("my pkg.nix", "my pkg", " Rename it, e.g. to my-pkg.nix."),
    ("foo.bar.nix", "foo.bar", " Rename it, e.g. to foo-bar.nix."),
    ("2fast.nix", "2fast", ""),
])
def test_package_file_names_that_cannot_be_keys_are_rejected_naming_the_file(
    make_nix, tiny_dir: Path, file: str, attr: str, hint: str
):
    (tiny_dir / "packages" / file).write_text('{ mkPkg }: mkPkg { name = "odd"; }\n')
    graph = make_nix(tiny_dir).load_graph()
    with pytest.raises(NixPackageSetError) as excinfo:
        nix_assets(graph)
    assert str(excinfo.value) == (
        f"Package file {graph.nix_dir}/packages/{file} cannot be a package: its name {attr!r} must be letters, "
        "digits, '_' and '-', not starting with a digit or '-' ([A-Za-z_][A-Za-z0-9_-]*), since it is the Nix "
        f"attribute, the argument other packages take and the Dagster asset key.{hint}"
    )


def test_the_package_set_rejects_such_a_file_itself(tmp_path: Path):
    """nix/default.nix throws naming the file, so a plain nix-build says it too."""
    nix_dir = tmp_path / "nix"
    shutil.copytree(REPO_NIX, nix_dir)
    (nix_dir / "packages" / "my pkg.nix").write_text("{ runCommand }: runCommand \"x\" { } \"touch $out\"\n")
    proc = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "-E",
         f'builtins.attrNames (import {nix_dir} {{ scope = "bootstrap"; }})'],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode != 0
    assert (
        "nix/default.nix: package file nix/packages/my pkg.nix has a name that cannot be a package: the name "
        "before .nix must be letters, digits, '_' and '-', not starting with a digit or '-' ([A-Za-z_][A-Za-z0-9_-]*), "
        "since it is the attribute, the argument other packages take and the Dagster asset key. Rename the file."
    ) in " ".join(proc.stderr.split())


def test_a_step_asks_dagster_for_its_output_keys_once(make_nix, monkeypatch):
    """Dagster 1.13 recomputes a step's output asset keys for each result (O(n) each, rebuilding a set of
    every key per output): the step memoises them (adapters/large_steps.py), so thousands of packages cost
    one computation, not one per package, and the results stay the same."""
    from dagster._core.execution.context.system import StepExecutionContext

    calls = []
    original = StepExecutionContext.get_output_asset_keys

    def counted(self):
        calls.append(self)
        return original(self)

    monkeypatch.setattr(StepExecutionContext, "get_output_asset_keys", counted)
    nix = make_nix()
    assets = nix_assets(nix.load_graph())
    counts = {}
    for selection in (["solo"], None):  # one result, then four
        calls.clear()
        instance = DagsterInstance.ephemeral()
        result = materialize([assets], resources={"nix": nix}, instance=instance, selection=selection)
        assert result.success
        counts[len(result.get_asset_materialization_events())] = len(calls)
    # Once when the step starts (Dagster reads its inputs' versions, before the op runs), once memoised.
    assert counts == {1: 2, 4: 2}, counts
