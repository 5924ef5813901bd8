"""Any package set: a callPackage directory, a Nix file with an attribute path and its user's arguments, a flake;
select/exclude globs; the edges read from the derivations; a package whose evaluation aborts fails alone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dagster_nix_builder.nix.cli import NixCli
from dagster_nix_builder.nix.derivations import input_derivations
from dagster_nix_builder.nix.errors import NixPackageSetError
from dagster_nix_builder.nix.graph import evaluate_package_set, graph_from_document
from dagster_nix_builder.nix.package_source import PackageSource, glob_regex

REPO = Path(__file__).resolve().parent.parent
FOREIGN = REPO / "tests" / "fixtures" / "foreign"


def graph_of(location: Path, **settings):
    return graph_from_document(evaluate_package_set(NixCli(nix_dir=str(location), **settings)))


def edges(graph) -> dict[str, list[str]]:
    return {attr: sorted(graph[attr].deps) for attr in graph}


def test_an_unselected_wrapper_keeps_the_edge_it_stands_in():
    graph = graph_of(FOREIGN / "packages.nix", kind="file", exclude=("wrapper",))
    assert edges(graph) == {"app": ["liba", "libb"], "liba": [], "libb": ["liba"]}
    # With the wrapper selected, libb depends on it and it on liba: nearest, not transitive.
    graph = graph_of(FOREIGN / "packages.nix", kind="file")
    assert edges(graph) == {"app": ["liba", "libb"], "liba": [], "libb": ["wrapper"], "wrapper": ["liba"]}
    assert graph["app"].tests["names"].under == "passthru.tests"
    assert graph.topological_order()[-1] == "app"


def test_a_file_gets_exactly_its_users_arguments_and_an_attribute_path(tmp_path: Path):
    # No `...`: a `scope` it does not take would be an error ("called with unexpected argument").
    (tmp_path / "set.nix").write_text(
        "{ greeting }: { inner = { hello = derivation { name = greeting; system = builtins.currentSystem;"
        ' builder = "/bin/sh"; args = [ "-c" "echo > $out" ]; }; other = 1; }; }\n'
    )
    cli = NixCli(nix_dir=str(tmp_path / "set.nix"), kind="file", attribute=("inner",), nix_args={"greeting": "hi"})
    assert cli.package_args() == {"greeting": "hi"}  # no scope
    assert "extra-sandbox-paths" not in cli.subprocess_env()["NIX_CONFIG"]
    document = evaluate_package_set(cli)
    assert list(document["packages"]) == ["hello"] and document["skipped"] == ["other"]
    assert cli.build_command(["hello"])[-1] == "inner.hello"
    assert document["packages"]["hello"]["file"] == f"{tmp_path / 'set.nix'}:1"


def test_select_and_exclude_are_globs():
    graph = graph_of(FOREIGN / "packages.nix", kind="file", select=("lib?",), exclude=("*b",))
    assert sorted(graph) == ["liba"]
    assert glob_regex("dagster*", "select") == "dagster.*"
    assert glob_regex("py[!0-2].1?", "select") == "py[^0-2]\\.1."
    with pytest.raises(NixPackageSetError, match="not a glob"):
        PackageSource(select=("a b",))
    with pytest.raises(NixPackageSetError, match="cannot be an attribute name"):
        PackageSource(kind="file", location="x.nix", attribute=("a", '"b"'))


def test_abort_and_a_missing_attribute_fail_that_package_alone(tmp_path: Path):
    # Neither is caught by tryEval: each ends a whole evaluation, so graph.py evaluates halves.
    (tmp_path / "set.nix").write_text(
        'let mk = name: deps: derivation { inherit name; system = builtins.currentSystem; builder = "/bin/sh";'
        ' args = [ "-c" "echo ${toString deps} > $out" ]; }; in rec {\n'
        '  a = mk "a" [ ];\n  b = mk "b" [ a ];\n'
        '  c = abort "c: no source for this system";\n'
        '  d = mk "d" [ b ({ }).nothing ];\n'
        '  e = throw "e: thrown";\n  f = mk "f" [ b ];\n}\n'
    )
    document = evaluate_package_set(NixCli(nix_dir=str(tmp_path / "set.nix"), kind="file"))
    graph = graph_from_document(document)
    assert sorted(graph) == ["a", "b", "c", "d", "e", "f"]
    assert {a for a in graph if graph[a].eval_error} == {"c", "d", "e"}
    assert "c: no source for this system" in graph["c"].eval_error
    assert "attribute 'nothing' missing" in graph["d"].eval_error
    assert "e: thrown" in graph["e"].eval_error
    assert edges(graph) == {"a": [], "b": ["a"], "c": [], "d": [], "e": [], "f": ["b"]}


def test_the_bundled_set_s_derivations_give_the_graph_its_formal_arguments_give():
    """The same graph as before. The derivations alone give the same lineage (each package reaches the same
    packages upstream) with more direct edges: the bootstrap scope's derivations take a package's whole Python
    closure as inputs (dagster-graphql's has dagster-pipes, which its file reaches through dagster)."""
    document = evaluate_package_set(NixCli(nix_dir=str(REPO / "nix"), scope="bootstrap"))
    packages = document["packages"]

    def closure(attr: str, key: str) -> set[str]:
        seen, stack = set(), list(packages[attr][key])
        while stack:
            if (dep := stack.pop()) not in seen:
                seen.add(dep)
                stack.extend(packages[dep][key])
        return seen

    assert {a: closure(a, "drvDeps") for a in packages} == {a: closure(a, "argDeps") for a in packages}
    assert "dagster-pipes" in packages["dagster-graphql"]["drvDeps"]
    # Where they reach the same packages, a callPackage file's arguments are the edges: the same graph as before.
    assert {a: sorted(i["deps"]) for a, i in packages.items()} == {a: sorted(i["argDeps"]) for a, i in packages.items()}
    assert "scope" in document["takes"]


def test_a_flake_s_packages_checks_and_no_lock_file(tmp_path: Path):
    flake = tmp_path / "theirs"
    shutil.copytree(FOREIGN / "flake", flake)
    cli = NixCli(nix_dir=str(flake), kind="flake")
    document = evaluate_package_set(cli)
    graph = graph_from_document(document)
    assert edges(graph) == {"core": [], "app": ["core"], "both-agree": ["app", "core"], "lint": []}
    assert document["aliases"] == {"default": "app"}
    system = cli.current_system()
    assert graph["app"].tests["app_runs"].attr_path == ("checks", system, "app-runs")
    assert graph["lint"].attr_path == ("checks", system, "lint")
    command = cli.build_command(["app", ("checks", system, "lint")])
    assert command[-2:] == [f"path:{flake}#packages.{system}.app", f"path:{flake}#checks.{system}.lint"]
    assert "--no-write-lock-file" in command
    with pytest.raises(NixPackageSetError, match="takes no arguments"):
        NixCli(nix_dir=str(flake), kind="flake", nix_args={"x": "1"}).package_args()
    assert not (flake / "flake.lock").exists()


def test_input_derivations_read_the_aterm_with_escapes():
    text = (
        'Derive([("out","/nix/store/a-x","","")],[("/nix/store/b-y.drv",["out"]),("/nix/store/c-z.drv",["dev","out"])],'
        '["/nix/store/d-src"],"x86_64-linux","/bin/sh",["-c","echo \\"(\\\\\\"/nix/store/e-f.drv\\\\\\",[\\""],'
        '[("name","x")])'
    )
    assert input_derivations(text) == ["/nix/store/b-y.drv", "/nix/store/c-z.drv"]
    assert json.dumps(input_derivations('Derive([],[],[],"s","b",[],[])')) == "[]"


def test_a_flake_check_that_throws_fails_alone_with_nix_s_message(tmp_path: Path):
    """One check that does not evaluate neither stops the load nor takes the others with it: it stands on its own
    and fails alone when built, with Nix's message; the rest builds and passes."""
    from dagster import DagsterInstance, materialize

    from dagster_nix_builder import NixResource, nix_assets

    flake = tmp_path / "theirs"
    shutil.copytree(FOREIGN / "flake", flake)
    text = (flake / "flake.nix").read_text()
    (flake / "flake.nix").write_text(
        text.replace('lint = mk system "lint"', 'broken = throw "no broken check";\n        lint = mk system "lint"')
    )
    nix = NixResource(nix_dir=str(flake), kind="flake", out_link_dir=str(tmp_path / "results"))
    graph = nix.load_graph()
    assert sorted(graph) == ["app", "both-agree", "broken", "core", "lint"]
    assert "no broken check" in (graph["broken"].eval_error or "")
    assert "app_runs" in graph["app"].tests and not graph["app"].eval_error
    result = materialize([nix_assets(graph)], resources={"nix": nix}, instance=DagsterInstance.ephemeral(),
                         raise_on_error=False)  # fmt: skip
    built = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert built == {"app", "both-agree", "core", "lint"}
    error = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error
    failure = error.to_string()
    assert "broken" in failure and "no broken check" in failure
    assert not (flake / "flake.lock").exists()
