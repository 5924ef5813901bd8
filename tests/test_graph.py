"""The package graph comes from Nix: attributes and formal arguments, errors name file and line."""

from pathlib import Path

import pytest

from dagster_nix_builder import (
    NixDependencyCycleError,
    NixEvalError,
    NixPackageSetError,
    NixResource,
)
from dagster_nix_builder.nix.graph import store_hash


def test_tiny_graph(make_nix, tiny_dir: Path):
    graph = make_nix(tiny_dir).load_graph()
    assert sorted(graph) == ["base", "mid", "solo", "top-level"]
    assert graph["top-level"].deps == ("base", "mid")  # `mkPkg` is an argument but not a package
    assert graph["base"].deps == ()
    order = graph.topological_order()
    assert order.index("base") < order.index("mid") < order.index("top-level")
    assert graph.upstream("top-level") == {"base", "mid"}
    assert graph.downstream("base") == {"mid", "top-level"}
    pkg = graph["mid"]
    assert pkg.file == str(tiny_dir / "packages" / "mid.nix")
    assert pkg.drv_path.endswith("-mid.drv") and len(pkg.drv_hash) == 32
    assert set(pkg.outputs) == {"out"} and pkg.version == "1.0" and pkg.pname == "mid"
    assert not pkg.is_python


def test_drv_hash_follows_arguments(make_nix, tiny_dir: Path):
    a = make_nix(tiny_dir).load_graph()["mid"]
    b = make_nix(tiny_dir, sleep="1").load_graph()["mid"]
    assert a.drv_hash != b.drv_hash
    assert store_hash(a.out_path) == Path(a.out_path).name[:32]


def test_seventh_file_is_a_new_package_without_python_change(make_nix, tiny_dir: Path):
    (tiny_dir / "packages" / "extra.nix").write_text('{ mkPkg, solo }: mkPkg { name = "extra"; deps = [ solo ]; }\n')
    graph = make_nix(tiny_dir).load_graph()
    assert len(graph) == 5 and graph["extra"].deps == ("solo",)


def test_syntax_error_names_file_and_line(make_nix, tiny_dir: Path):
    bad = tiny_dir / "packages" / "mid.nix"
    bad.write_text("{ mkPkg, base }:\nlet x = 1\nin mkPkg { name = \"mid\"; }\n")
    with pytest.raises(NixEvalError) as excinfo:
        make_nix(tiny_dir).load_graph()
    err = excinfo.value
    assert err.file == str(bad) and err.line == 3
    assert f"{bad}:3" in str(err) and "syntax error" in str(err)


def test_dependency_cycle_is_reported(make_nix, tiny_dir: Path):
    (tiny_dir / "packages" / "base.nix").write_text(
        '{ mkPkg, top-level }: mkPkg { name = "base"; deps = [ top-level ]; }\n'
    )
    with pytest.raises(NixDependencyCycleError) as excinfo:
        make_nix(tiny_dir).load_graph()
    message = str(excinfo.value)
    assert "Dependency cycle" in message
    assert {"base", "top-level"} <= set(excinfo.value.cycle)
    assert "base -> top-level -> base" in message or "top-level -> base -> top-level" in message
    assert "base.nix" in message
    assert excinfo.value.cycle[0] == excinfo.value.cycle[-1]


def test_missing_default_nix(make_nix, tmp_path: Path):
    with pytest.raises(NixPackageSetError, match=r"No default\.nix"):
        make_nix(tmp_path).load_graph()


def test_nix_not_found_fails_early():
    with pytest.raises(Exception, match=r"nix-does-not-exist.*not found on PATH.*Install Nix"):
        NixResource(executable="nix-does-not-exist")


def test_a_package_that_throws_does_not_stop_the_graph(make_nix, tiny_dir: Path):
    (tiny_dir / "packages" / "mid.nix").write_text(
        '{ mkPkg, base }: if true then throw "mid: the pins are not usable" else mkPkg { name = "mid"; }\n'
    )
    nix = make_nix(tiny_dir)
    graph = nix.load_graph()

    assert sorted(graph) == ["base", "mid", "solo", "top-level"]  # same assets, same edges
    assert graph["mid"].deps == ("base",) and graph["top-level"].deps == ("base", "mid")
    assert graph["base"].eval_error is None and graph["base"].drv_path.endswith("-base.drv")
    mid = graph["mid"]
    assert mid.eval_error and "mid: the pins are not usable" in mid.eval_error
    assert mid.drv_path.endswith("-evaluation-failed.drv")
    assert graph["top-level"].eval_error and "mid: the pins are not usable" in graph["top-level"].eval_error

    outcomes = {o.attr: o for o in nix.build(["base", "mid"]).wait()}
    assert outcomes["base"].status == "built"  # not stopped by mid (one nix build of both)
    assert outcomes["mid"].status == "failed"
    assert "mid: the pins are not usable" in (outcomes["mid"].reason or "")


def test_tests_are_read_from_the_package_set(make_nix):
    graph = make_nix(Path(__file__).parent / "fixtures" / "checked").load_graph()
    assert {a: sorted(graph[a].tests) for a in graph} == {
        "base": ["imports", "version"], "mid": ["imports"], "solo": ["version"], "top-level": [],
    }
    imports = graph["base"].tests["imports"]
    assert imports.blocking and not graph["base"].tests["version"].blocking
    assert imports.drv_path.endswith("-base-test-imports.drv") and imports.out_path.endswith("-base-test-imports")
    assert imports.description == "base names itself (blocking)."


def test_a_test_name_that_cannot_be_a_check_name_is_refused(make_nix, tiny_dir: Path):
    (tiny_dir / "packages" / "solo.nix").write_text(
        '{ mkPkg }: let p = mkPkg { name = "solo"; }; in p // { tests = { "smoke-test" = p; }; }\n'
    )
    refused = r"solo\.nix: passthru\.tests\.smoke-test cannot be a check name.*smoke_test"
    with pytest.raises(NixPackageSetError, match=refused):
        make_nix(tiny_dir).load_graph()
