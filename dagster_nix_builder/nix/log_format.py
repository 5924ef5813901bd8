"""Parse Nix's ``--log-format internal-json`` stderr into small frozen dataclasses.

Each stderr line is either ``@nix {json}`` or plain text. The parser never raises: anything it cannot
make sense of becomes a :class:`PlainLine`. What differs between Nix versions (positions, activity and
result types, colours) is read through :mod:`.output`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from dagster_nix_builder.nix.output import ActivityType, ResultType, message_position, strip_ansi

_PREFIX = "@nix "


@dataclass(frozen=True)
class ActivityStarted:
    """An activity began; for a build (type 105) ``fields[0]`` is the derivation path."""

    id: int
    type: int
    text: str
    level: int
    parent: int
    fields: tuple[Any, ...]

    @property
    def drv_path(self) -> str | None:
        """The derivation being built, for build activities."""
        if self.type == ActivityType.BUILD and self.fields and isinstance(self.fields[0], str):
            return self.fields[0]
        return None


@dataclass(frozen=True)
class ActivityStopped:
    """An activity ended (Nix 2.8 stops build activities only when the whole build ends)."""

    id: int


@dataclass(frozen=True)
class ActivityProgress:
    """Progress of an activity: for the ``builds`` activity, counts of derivations."""

    id: int
    done: int
    expected: int
    running: int
    failed: int


@dataclass(frozen=True)
class ActivityResult:
    """Any other result of an activity (phase change, expected counts, ...)."""

    id: int
    type: int
    fields: tuple[Any, ...]


@dataclass(frozen=True)
class BuildLogLine:
    """One line of a builder's output, attributed to its build activity."""

    id: int
    line: str


@dataclass(frozen=True)
class NixMessage:
    """A message of Nix itself; level 0 is an error. ``file``/``line`` point into Nix code if known."""

    level: int
    msg: str
    raw_msg: str | None = None
    file: str | None = None
    line: int | None = None
    column: int | None = None

    @property
    def is_error(self) -> bool:
        """Whether Nix logged this at error level."""
        return self.level == 0


@dataclass(frozen=True)
class PlainLine:
    """A stderr line that is not (valid) internal-json."""

    text: str


NixLogEvent = (
    ActivityStarted | ActivityStopped | ActivityProgress | ActivityResult | BuildLogLine | NixMessage | PlainLine
)


def _int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def parse_line(line: str | bytes) -> NixLogEvent:
    """Parse one stderr line of Nix into an event; never raises."""
    if isinstance(line, bytes):
        line = line.decode("utf-8", errors="replace")
    line = line.rstrip("\r\n")
    if not line.startswith(_PREFIX):
        return PlainLine(strip_ansi(line))
    try:
        data = json.loads(line[len(_PREFIX) :])
    except ValueError:
        return PlainLine(strip_ansi(line))
    if not isinstance(data, dict):
        return PlainLine(strip_ansi(line))
    try:
        return _from_json(data) or PlainLine(strip_ansi(line))
    except (TypeError, ValueError, KeyError, IndexError):
        return PlainLine(strip_ansi(line))


def _from_json(data: dict[str, Any]) -> NixLogEvent | None:
    action = data.get("action")
    fields = data.get("fields")
    fields_t = tuple(fields) if isinstance(fields, list) else ()
    if action == "msg":
        where = message_position(data)
        return NixMessage(
            level=_int(data.get("level")),
            msg=strip_ansi(str(data.get("msg", ""))),
            raw_msg=strip_ansi(data["raw_msg"]) if isinstance(data.get("raw_msg"), str) else None,
            file=where.file,
            line=where.line,
            column=where.column,
        )
    if "id" not in data or not isinstance(data["id"], int):
        return None
    act_id = data["id"]
    if action == "start":
        return ActivityStarted(
            id=act_id,
            type=_int(data.get("type")),
            text=strip_ansi(str(data.get("text", ""))),
            level=_int(data.get("level")),
            parent=_int(data.get("parent")),
            fields=fields_t,
        )
    if action == "stop":
        return ActivityStopped(id=act_id)
    if action == "result":
        rtype = _int(data.get("type"), -1)
        if rtype in (ResultType.BUILD_LOG_LINE, ResultType.POST_BUILD_LOG_LINE) and fields_t:
            return BuildLogLine(id=act_id, line=strip_ansi(str(fields_t[0])))
        if rtype == ResultType.PROGRESS and len(fields_t) == 4 and all(isinstance(f, int) for f in fields_t):
            return ActivityProgress(act_id, *fields_t)
        return ActivityResult(id=act_id, type=rtype, fields=fields_t)
    return None


@dataclass(frozen=True)
class NixErrors:
    """Nix's own error messages in a stderr, and the first position one of them points at."""

    messages: tuple[str, ...]
    where: NixMessage | None = None


def error_messages(stderr: str | Iterable[str]) -> NixErrors:
    """The error-level messages of a Nix stderr (internal-json or plain; plain lines are kept), in order,
    with the first message that names a file and line."""
    lines = stderr.splitlines() if isinstance(stderr, str) else stderr
    messages: list[str] = []
    where: NixMessage | None = None
    for raw in lines:
        event = parse_line(raw)
        if isinstance(event, NixMessage) and event.is_error:
            messages.append(event.msg)
            if where is None and event.file and event.line:
                where = event
        elif isinstance(event, PlainLine) and event.text.strip():
            messages.append(event.text)
    return NixErrors(tuple(messages), where)
