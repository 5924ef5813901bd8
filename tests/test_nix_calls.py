"""How many Nix commands a run makes: a no-op run asks Nix a fixed few things, however many packages."""

import logging
import os
from pathlib import Path

from dagster import DagsterInstance, materialize

from dagster_nix_builder import nix_assets
from dagster_nix_builder.nix.cli import command_logger, indirect_root_path


def _commands(caplog, run) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger=command_logger.name):
        assert run().success
    return [r.getMessage() for r in caplog.records if r.name == command_logger.name]


def _kinds(commands: list[str]) -> dict[str, int]:
    kinds = {"nix-instantiate": 0, "--add-root": 0, "--check-validity": 0, "path-info": 0, "--version": 0, " build ": 0}
    for command in commands:
        for kind in kinds:
            kinds[kind] += kind in command
    return kinds


def test_noop_run_asks_nix_the_same_few_things_for_one_or_all_packages(make_nix, tmp_path: Path, caplog):
    nix = make_nix()
    graph = nix.load_graph()
    assets = nix_assets(graph)
    instance = DagsterInstance.ephemeral()
    def run(selection=None):
        return lambda: materialize([assets], resources={"nix": nix}, instance=instance, selection=selection)

    first = _commands(caplog, run())
    assert _kinds(first)["--add-root"] == 4  # one per out-link, the first time
    results = tmp_path / "results"
    for attr in graph:
        link = results / f"result-{attr}"
        # The indirect root Nix registered is where we look for it.
        assert os.readlink(indirect_root_path(link)) == str(link)

    everything = _commands(caplog, run())
    # The graph (one nix-instantiate), what is valid (one query), sizes (one path-info); no build at all.
    assert _kinds(everything) == {"nix-instantiate": 1, "--add-root": 0, "--check-validity": 1, "path-info": 1,
                                  "--version": 0, " build ": 0}, everything
    assert len(everything) == 3, everything
    one = _commands(caplog, run(["solo"]))
    assert len(one) == len(everything), (one, everything)

    # A missing out-link is registered again; a registered one that points elsewhere (a package's older
    # output) is pointed at the new one with no Nix call: Nix's indirect root names the link, not its target.
    (results / "result-mid").unlink()
    (results / "result-solo").unlink()
    (results / "result-solo").symlink_to(graph["base"].out_path)
    again = _commands(caplog, run())
    assert _kinds(again)["--add-root"] == 1
    assert os.readlink(indirect_root_path(results / "result-solo")) == str(results / "result-solo")
    assert os.readlink(results / "result-mid") == graph["mid"].out_path
    assert os.readlink(results / "result-solo") == graph["solo"].out_path


def test_every_output_of_a_package_is_linked_in_one_nix_call(make_nix, tiny_dir: Path, tmp_path: Path, caplog):
    (tiny_dir / "packages" / "split.nix").write_text(
        '{ mkPkg }: mkPkg { name = "split"; outputs = [ "out" "dist" "doc" ]; script = "mkdir -p $dist $doc"; }\n'
    )
    nix = make_nix(tiny_dir)
    graph = nix.load_graph()
    assets = nix_assets(graph)
    instance = DagsterInstance.ephemeral()
    commands = _commands(caplog, lambda: materialize([assets], resources={"nix": nix}, instance=instance,
                                                     selection=["split"]))
    assert _kinds(commands)["--add-root"] == 1, commands
    results = tmp_path / "results"
    for output, link in {"out": "result-split", "dist": "result-split-dist", "doc": "result-split-doc"}.items():
        assert os.readlink(results / link) == graph["split"].outputs[output]
        assert os.readlink(indirect_root_path(results / link)) == str(results / link)
    (results / "result-split-doc").unlink()
    again = _commands(caplog, lambda: materialize([assets], resources={"nix": nix}, instance=instance,
                                                  selection=["split"]))
    assert _kinds(again)["--add-root"] == 1
    assert os.readlink(results / "result-split-doc") == graph["split"].outputs["doc"]
    # Without a derivation (its .drv collected, or none known): one call per output, the same names.
    for link in ("result-split", "result-split-dist", "result-split-doc"):
        (results / link).unlink()
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger=command_logger.name):
        assert nix.cli().add_output_roots(results / "result-split", None, graph["split"].outputs)
    assert _kinds([r.getMessage() for r in caplog.records if r.name == command_logger.name])["--add-root"] == 3
    for output, link in {"out": "result-split", "dist": "result-split-dist", "doc": "result-split-doc"}.items():
        assert os.readlink(results / link) == graph["split"].outputs[output]
