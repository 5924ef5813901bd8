"""The reproducibility gate with the real Nix: Nix's own check rebuilds a derivation, the trees are compared,
and what the check left is removed through Nix, the valid outputs untouched."""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
from conftest import REPO_NIX

from dagster_nix_builder.nix.cli import NixCli
from dagster_nix_builder.nix.graph import NixPackage, load_package_graph
from dagster_nix_builder.publish.reproducible import (
    CHECK_SUFFIX,
    ReproducibilityError,
    check_reproducible,
    differing_paths,
)

pytestmark = pytest.mark.skipif(shutil.which("nix-store") is None, reason="Nix is not installed")

# Two derivations on /bin/sh and the host's coreutils (the bootstrap scope's sandbox paths make them visible):
# `steady` always writes the same tree (a file, an executable, a symlink, two outputs); `clock` writes the time.
SET = textwrap.dedent(r"""
    { scope ? "auto", salt ? "" }:
    let
      mk = name: script: builtins.derivation {
        name = "${name}-${builtins.substring 0 8 salt}";
        inherit salt;
        outputs = [ "out" "dist" ];
        system = builtins.currentSystem;
        builder = "/bin/sh";
        args = [ "-c" ("export PATH=/usr/bin:/bin; mkdir -p $out/share $dist; echo same > $dist/same; " + script) ];
      };
    in {
      steady = mk "steady" ("echo hello > $out/share/hello; printf '#!/bin/sh\\n' > $out/run; chmod +x $out/run; "
        + "ln -s share/hello $out/link");
      clock = mk "clock" "echo hello > $out/share/hello; date +%s.%N > $out/share/time";
    }
""")


def instantiate(cli: NixCli, attr: str) -> NixPackage:
    """``attr`` of the set as a package of the graph would be: its derivation and all its outputs."""
    drv = cli.run(cli.instantiate_command(cli.package_dir, *cli.argstrs(), "-A", attr)).stdout.strip()
    return NixPackage(attr, (), drv_path=drv, outputs=cli.show_derivations([drv])[drv].outputs)


def build(cli: NixCli, attr: str) -> NixPackage:
    """Build every output of ``attr`` (no GC root: the test is over in seconds)."""
    package = instantiate(cli, attr)
    cli.run(cli.store_command("--realise", str(package.drv_path)))
    return package


def nar_hashes(paths: list[str]) -> str:
    return subprocess.run(["nix-store", "--query", "--hash", *paths], capture_output=True, text=True,
                          check=True).stdout


@pytest.fixture
def cli(tmp_path: Path, salt: str) -> NixCli:
    nix_dir = tmp_path / "set"
    nix_dir.mkdir()
    (nix_dir / "default.nix").write_text(SET)
    return NixCli(nix_dir=str(nix_dir), nix_args={"salt": salt}, out_link_dir=str(tmp_path / "results"))


def test_a_deterministic_derivation_rebuilds_identically(cli: NixCli):
    package = build(cli, "steady")
    before = nar_hashes(list(package.outputs.values()))
    result = check_reproducible(cli, package)
    assert result.identical, result
    assert result.differing_files == [] and result.differing_outputs == [] and result.diff is None
    assert result.seconds > 0
    assert not any(os.path.lexists(p + CHECK_SUFFIX) for p in package.outputs.values())
    assert nar_hashes(list(package.outputs.values())) == before


def test_a_derivation_that_writes_the_time_is_not_identical_and_the_file_is_named(cli: NixCli, salt: str):
    package = build(cli, "clock")
    paths = list(package.outputs.values())
    before = nar_hashes(paths)
    result = check_reproducible(cli, package)
    assert not result.identical
    assert result.differing_files == ["share/time"], result
    assert result.differing_outputs == ["out"]
    assert result.unchecked == ["dist"], result  # Nix stops at the first output that differs
    if shutil.which("diffoscope"):
        assert result.diff and "time" in result.diff
    else:
        assert result.diff is None
    # what the check left is gone, the valid outputs are what they were and still verify
    assert not any(os.path.lexists(p + CHECK_SUFFIX) for p in paths)
    assert nar_hashes(paths) == before
    tmp = Path(os.environ.get("TMPDIR") or "/tmp")
    assert not list(tmp.glob(f"nix-build-clock-{salt[:8]}*")), "the kept build directory is left"
    verify = subprocess.run(["nix-store", "--verify-path", *paths], capture_output=True, text=True, check=False)
    assert verify.returncode == 0, verify.stderr


def test_a_package_not_built_yet_is_refused_naming_it(cli: NixCli):
    with pytest.raises(ReproducibilityError, match="steady is not built yet"):
        check_reproducible(cli, instantiate(cli, "steady"))
    with pytest.raises(ReproducibilityError, match="no derivation"):
        check_reproducible(cli, NixPackage("nothing", ()))


def test_tree_comparison_sees_contents_modes_symlinks_and_missing_files(tmp_path: Path):
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        (root / "d").mkdir(parents=True)
        (root / "same").write_text("x")
        (root / "run").write_text("#!/bin/sh\n")
    (a / "d" / "content").write_text("1")
    (b / "d" / "content").write_text("2")
    (b / "run").chmod(0o755)
    (a / "link").symlink_to("same")
    (b / "link").symlink_to("run")
    (a / "only-a").write_text("")
    assert differing_paths(a, b) == ["d/content", "link", "only-a", "run"]
    assert differing_paths(a, a) == []


@pytest.mark.slow
def test_dagster_pipes_rebuilds_bit_for_bit(tmp_path: Path):
    cli = NixCli(nix_dir=str(REPO_NIX), out_link_dir=str(tmp_path / "results"))
    package = load_package_graph(cli)["dagster-pipes"]
    if cli.invalid_paths(list(package.outputs.values())):
        cli.run(cli.build_command(["dagster-pipes"]))
    result = check_reproducible(cli, package)
    assert result.identical, f"dagster-pipes differs: {result.differing_files}\n{result.diff or ''}"
