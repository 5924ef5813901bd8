"""Done-when of issue 9: a new ``passthru.tests.<name>`` in one expression is a check in ``dg list defs`` and
in a ``dg launch`` run, with no Python change: the real dg CLI, the real Nix, a copy of a package set."""

from __future__ import annotations

from pathlib import Path

from test_component import dg, listed, make_project, project_env

CHECKED = Path(__file__).parent / "fixtures" / "checked"


def test_a_test_added_to_an_expression_is_a_check_in_dg_list_defs_and_runs(tmp_path: Path, salt: str):
    root = make_project(tmp_path / "proj", """\
        package_set: packages-nix
        out_link_dir: results
        nix_args:
          salt: "{{ env.TEST_NIX_SALT }}"
        include_update: false
        """, package_set=CHECKED)
    env = project_env(root, TEST_NIX_SALT=salt)
    before = {(c["asset_key"], c["name"]) for c in listed(dg(root, "list", "defs", "--json", env=env))["asset_checks"]}
    assert ("solo", "version") in before and ("solo", "reads_back") not in before

    # One edit of one Nix file: solo gets a second test. No Python anywhere.
    solo = root / "packages-nix" / "packages" / "solo.nix"
    old = "tests = { version = { }; };"
    solo.write_text(solo.read_text().replace(old, "tests = { version = { }; reads_back = { }; };"))
    after = {(c["asset_key"], c["name"]) for c in listed(dg(root, "list", "defs", "--json", env=env))["asset_checks"]}
    assert after == before | {("solo", "reads_back")}

    # It runs as a check of solo: built by Nix in the run that materializes solo.
    launched = dg(root, "launch", "--assets", "solo", env=env)
    assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-3000:]
    results = Path(root / "results")
    assert (results / "result-solo").is_symlink()
    logs = launched.stdout + launched.stderr
    assert "Asset check 'reads_back' on 'solo' passed" in logs, logs[-3000:]
    assert "Asset check 'version' on 'solo' passed" in logs
