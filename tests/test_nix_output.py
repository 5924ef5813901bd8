"""Every Nix output the product parses, replayed from real recordings of each Nix version we have.

``tests/fixtures/nix-<major.minor>/`` holds what that Nix printed for the expressions in
``tests/fixtures/nix-outputs/`` (recorded by ``tests/fixtures/nix-outputs/record.sh``; never edited by
hand). Both Nix versions build the same derivations, so the same store paths and sizes are expected from
each. No Nix is run here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dagster_nix_builder.nix.errors import NixVersionError
from dagster_nix_builder.nix.log_format import (
    ActivityStarted,
    ActivityType,
    BuildLogLine,
    NixMessage,
    error_messages,
    parse_line,
)
from dagster_nix_builder.nix.output import (
    message_position,
    parse_build_json,
    parse_derivation_show,
    parse_path_info,
    parse_version,
)

FIXTURES = Path(__file__).parent / "fixtures"
EXPRS = FIXTURES / "nix-outputs"
RECORDED = sorted(FIXTURES.glob("nix-[0-9]*"), key=lambda d: tuple(int(n) for n in d.name[4:].split(".")))

STORE = "/nix/store"
DRV = f"{STORE}/l4v7mql8s01w48mhd124nxmmfl94ibaf-nix-output-fixture.drv"
DEP_DRV = f"{STORE}/0aa4vkigc1qxscfv6qj6mm6dj3r0xz8j-nix-output-fixture-dep.drv"
OUT = f"{STORE}/v3jv5bab3hxzbjcac3dcan6a947zi0nz-nix-output-fixture"
DIST = f"{STORE}/hag5zbfv2rvvjc6z2m4hxc1dqy2l0jji-nix-output-fixture-dist"
DEP_OUT = f"{STORE}/lbwschdr7v0pnzngd2w074kh2n4ws0pr-nix-output-fixture-dep"
ABSENT = f"{STORE}/00000000000000000000000000000000-absent"
FAIL_DRV = f"{STORE}/lrp6kbwrgkh3axnzjd1g7dq5p39lzkiq-nix-output-fixture-fail.drv"

each_recording = pytest.mark.parametrize("recorded", RECORDED, ids=lambda d: d.name)


def _text(recorded: Path, name: str) -> str:
    return (recorded / name).read_text()


@each_recording
def test_the_recordings_are_there(recorded: Path):
    assert {"nix-2.8", "nix-2.26"} <= {d.name for d in RECORDED}
    for name in ("version.txt", "path-info.json", "show-derivation.json", "build.json", "build-success.jsonl",
                 "build-failure.jsonl", "eval-error.jsonl", "syntax-error.jsonl"):
        assert (recorded / name).is_file(), name


@each_recording
def test_version_and_the_commands_it_chooses(recorded: Path):
    version = parse_version(_text(recorded, "version.txt"))
    assert ".".join(map(str, version.number[:2])) == recorded.name.removeprefix("nix-")
    assert str(version) == _text(recorded, "version.txt").strip()
    if version.at_least(2, 15):
        assert version.derivation_show() == ["derivation", "show"]
        assert (recorded / "derivation-show.json").is_file()
        # Why: the old name still works there, but warns.
        assert "'show-derivation' is a deprecated alias" in _text(recorded, "show-derivation.stderr")
    else:
        assert version.derivation_show() == ["show-derivation"]
        assert not (recorded / "derivation-show.json").exists()
    assert version.path_info_json() == ["--json"]


@each_recording
def test_path_info_of_valid_and_invalid_paths(recorded: Path):
    info = parse_path_info(_text(recorded, "path-info.json"))
    assert set(info) == {OUT, DIST, ABSENT}
    assert info[ABSENT] is None
    out, dist = info[OUT], info[DIST]
    assert out is not None and dist is not None
    assert (out["narSize"], out["closureSize"], dist["narSize"], dist["closureSize"]) == (192, 312, 120, 120)
    assert out["references"] == [DEP_OUT]
    assert out["deriver"] == DRV
    assert "path" not in out and "valid" not in out
    assert parse_path_info(_text(recorded, "path-info-valid.json")) == {OUT: out, DIST: dist}


@each_recording
@pytest.mark.parametrize("name", ["show-derivation.json", "derivation-show.json"])
def test_derivation_show(recorded: Path, name: str):
    if not (recorded / name).exists():
        pytest.skip(f"{recorded.name} has no `{name.removesuffix('.json').replace('-', ' ')}`")
    shown = parse_derivation_show(_text(recorded, name))
    assert list(shown) == [DRV]
    drv = shown[DRV]
    assert drv.outputs == {"out": OUT, "dist": DIST}
    assert drv.input_drvs == {DEP_DRV: ("out",)}
    assert drv.input_srcs == ()
    assert drv.builder == "/bin/sh"
    assert drv.env["outputs"] == "out dist"


@each_recording
def test_build_json(recorded: Path):
    built = parse_build_json(_text(recorded, "build.json"))
    # Nix 2.8 lists the output it was asked for (`out`); 2.26 every output of the derivation (and times).
    if recorded.name == "nix-2.8":
        assert built == {DRV: {"out": OUT}}
    else:
        assert built == {DRV: {"out": OUT, "dist": DIST}}
    assert parse_build_json(_text(recorded, "build-failure.stdout")) == {}


@each_recording
def test_build_log_names_each_build_in_order(recorded: Path):
    events = [parse_line(line) for line in _text(recorded, "build-success.jsonl").splitlines()]
    builds = [e.drv_path for e in events if isinstance(e, ActivityStarted) and e.type == ActivityType.BUILD]
    assert builds == [DEP_DRV, DRV]
    assert not [e for e in events if isinstance(e, NixMessage) and e.is_error]


@each_recording
def test_build_failure_names_the_derivation_and_keeps_its_log(recorded: Path):
    text = _text(recorded, "build-failure.jsonl")
    events = [parse_line(line) for line in text.splitlines()]
    (build,) = [e for e in events if isinstance(e, ActivityStarted) and e.type == ActivityType.BUILD]
    assert build.drv_path == FAIL_DRV
    assert "something broke here" in [e.line for e in events if isinstance(e, BuildLogLine) and e.id == build.id]
    errors = error_messages(text)
    assert errors.messages and all("\x1b" not in m for m in errors.messages)
    assert errors.messages[0].startswith("error: ")
    assert FAIL_DRV in errors.messages[0]
    assert errors.where is None


@each_recording
@pytest.mark.parametrize(
    ("name", "file", "line", "column", "text"),
    [
        ("eval-error.jsonl", "undefined-variable.nix", 3, 8, "undefined variable 'nope'"),
        ("syntax-error.jsonl", "syntax-error.nix", 2, 1, "syntax error"),
    ],
)
def test_error_position(recorded: Path, name: str, file: str, line: int, column: int, text: str):
    errors = error_messages(_text(recorded, name))
    assert errors.where is not None
    # Recorded in another checkout: the same file by its path inside the repository.
    assert errors.where.file.startswith("/") and errors.where.file.endswith(f"/tests/fixtures/nix-outputs/{file}")
    assert (errors.where.line, errors.where.column) == (line, column)
    assert text in errors.messages[0]
    assert "\x1b" not in errors.messages[0]


# ---- not recordings: version strings and shapes from Nix's documentation ------------------------


@pytest.mark.parametrize(
    ("text", "number", "show"),
    [
        ("nix (Nix) 2.8.0\n", (2, 8, 0), ["show-derivation"]),
        ("nix (Nix) 2.26.3", (2, 26, 3), ["derivation", "show"]),
        ("nix (Determinate Nix 3.6.2) 2.29.0", (2, 29, 0), ["derivation", "show"]),
        ("nix (Lix, like Nix) 2.91.1", (2, 91, 1), ["derivation", "show"]),
    ],
)
def test_version_strings(text, number, show):
    version = parse_version(text)
    assert version.number == number
    assert version.derivation_show() == show
    assert version.path_info_json() == ["--json"]
    assert parse_version("nix (Nix) 2.33.0").path_info_json() == ["--json", "--json-format", "2"]


@pytest.mark.parametrize("text", ["nix (Nix) 2.3.16", "nix (Nix) 2.7.0", "", "no version here"])
def test_a_nix_too_old_fails_naming_version_minimum_and_fix(text):
    with pytest.raises(NixVersionError) as caught:
        parse_version(text, "/usr/bin/nix")
    message = str(caught.value)
    assert "/usr/bin/nix" in message and "Nix 2.8 or newer" in message
    assert (text or "no version printed") in message
    assert "apt-get install nix-bin" in message and "defs.yaml" in message


def test_documented_newer_shapes():
    # `nix path-info --json --json-format 2` (Nix 2.33): wrapped, keyed by base name.
    wrapped = {"version": 2, "storeDir": STORE, "info": {OUT[len(STORE) + 1:]: {"narSize": 192}, "x-absent": None}}
    assert parse_path_info(json.dumps(wrapped)) == {OUT: {"narSize": 192}, f"{STORE}/x-absent": None}
    # `nix derivation show`, Nix 2.32: base names; 2.33 (format version 4): wrapped, `inputs`.
    def base(p: str) -> str:
        return p[len(STORE) + 1:]

    v3 = {base(DRV): {"outputs": {"out": {"path": base(OUT)}}, "inputSrcs": [],
                      "inputDrvs": {base(DEP_DRV): {"outputs": ["out"], "dynamicOutputs": {}}}}}
    v4 = {"version": 4, "derivations": {base(DRV): {"outputs": {"out": {"path": base(OUT)}},
                                                      "inputs": {"srcs": [], "drvs": {base(DEP_DRV): {
                                                          "outputs": ["out"], "dynamicOutputs": {}}}}}}}
    for shape in (v3, v4):
        (drv,) = parse_derivation_show(json.dumps(shape), store_dir=STORE).values()
        assert (drv.drv_path, drv.outputs, drv.input_drvs) == (DRV, {"out": OUT}, {DEP_DRV: ("out",)})


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"file": "/x/y.nix", "line": 3, "column": 1}, ("/x/y.nix", 3, 1)),
        ({"file": "/x/y.nix:3:1"}, ("/x/y.nix", 3, 1)),
        ({"file": "/x/y.nix:3:1", "line": 3, "column": 1}, ("/x/y.nix", 3, 1)),
        ({"file": None, "line": None, "column": None}, (None, None, None)),
        ({"file": "«string»:1:2"}, ("«string»", 1, 2)),
    ],
)
def test_message_position_forms(fields, expected):
    where = message_position(fields)
    assert (where.file, where.line, where.column) == expected
