"""The internal-json parser, replaying real stderr recorded from Nix 2.8."""

from pathlib import Path

import pytest

from dagster_nix_builder.nix.log_format import (
    ActivityProgress,
    ActivityResult,
    ActivityStarted,
    ActivityStopped,
    ActivityType,
    BuildLogLine,
    NixMessage,
    PlainLine,
    parse_line,
)

FIXTURES = Path(__file__).parent / "fixtures"


def _events(name: str):
    return [parse_line(line) for line in (FIXTURES / name).read_text().splitlines()]


def _builds_progress(events):
    (builds,) = [e.id for e in events if isinstance(e, ActivityStarted) and e.type == ActivityType.BUILDS]
    return [e for e in events if isinstance(e, ActivityProgress) and e.id == builds]


def test_success_log_has_builds_in_order_and_log_lines():
    events = _events("build-success.jsonl")
    assert not [e for e in events if isinstance(e, PlainLine)]
    builds = [e for e in events if isinstance(e, ActivityStarted) and e.type == ActivityType.BUILD]
    assert [Path(b.drv_path).name.split("-", 1)[1] for b in builds] == [
        "base.drv", "solo.drv", "mid.drv", "top-level.drv",
    ]
    lines = [e.line for e in events if isinstance(e, BuildLogLine)]
    assert "building top-level (scope auto)" in lines
    progress = _builds_progress(events)
    assert (progress[-1].done, progress[-1].expected, progress[-1].failed) == (4, 4, 0)
    stops = {e.id for e in events if isinstance(e, ActivityStopped)}
    assert {b.id for b in builds} <= stops
    msgs = [e for e in events if isinstance(e, NixMessage)]
    assert msgs[0].level == 4 and msgs[0].msg.startswith("evaluating file")


def test_failure_log_has_error_messages_without_colours():
    events = _events("build-failure.jsonl")
    errors = [e for e in events if isinstance(e, NixMessage) and e.is_error]
    assert errors
    assert "\x1b" not in errors[0].msg
    assert errors[0].msg.startswith("error: builder for '/nix/store/")
    assert errors[0].msg.endswith("-mid.drv' failed with exit code 1")
    assert "something broke in mid" in [e.line for e in events if isinstance(e, BuildLogLine)]
    assert _builds_progress(events)[-1].failed == 1


def test_syntax_error_message_carries_file_and_line():
    (event,) = _events("eval-syntax-error.jsonl")
    assert isinstance(event, NixMessage)
    assert event.is_error and event.file == "/tmp/synt/packages/a.nix" and event.line == 3
    assert event.raw_msg == "syntax error, unexpected IN, expecting ';'"


@pytest.mark.parametrize(
    "line",
    [
        "", "plain text", "@nix ", "@nix {", "@nix []", "@nix 42", "@nix null", '@nix {"action":"start"}',
        '@nix {"action":"start","id":"x"}', '@nix {"action":"result","id":1,"type":105,"fields":["a"]}',
        '@nix {"action":"unknown","id":1}', b"\xff\xfe@nix", '@nix {"action":"msg","level":"x","line":"y"}',
    ],
)
def test_parser_never_raises(line):
    event = parse_line(line)
    assert isinstance(event, (PlainLine, NixMessage, ActivityResult))


def test_progress_and_bytes():
    line = b'@nix {"action":"result","fields":[1,4,1,0],"id":7,"type":105}\n'
    assert parse_line(line) == ActivityProgress(7, 1, 4, 1, 0)
    started = parse_line('@nix {"action":"start","id":3,"type":105,"fields":["/nix/store/x-a.drv","",1,1],'
                         '"text":"building","level":3}')
    assert isinstance(started, ActivityStarted) and started.drv_path == "/nix/store/x-a.drv"
