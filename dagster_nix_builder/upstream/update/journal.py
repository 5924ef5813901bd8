"""The files an update edits: their original bytes, kept in a journal until the update ends, so that a
failure restores them byte for byte and a run killed half-way is undone by the next one.

The journal (`.git/dagster-nix-builder-update.json`) holds, per file, its original bytes, the digests of
what the update wrote, and whether a program of ours (lock.py) wrote it. Every write is atomic
(`pins.atomic_write_bytes`). One update runs at a time per checkout (`exclusive`, an flock the kernel
drops when a killed run dies), so a journal found by the next run was left by a run that died.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from dagster_nix_builder.upstream.pins import atomic_write_bytes
from dagster_nix_builder.upstream.update.model import Log, UpdateError, UpdateStep

JOURNAL_NAME = "dagster-nix-builder-update.json"
LOCK_NAME = "dagster-nix-builder-update.lock"


@contextlib.contextmanager
def exclusive(git_dir: Path) -> Iterator[None]:
    """One update at a time per checkout; the kernel drops the lock when a killed run dies."""
    with open(Path(git_dir) / LOCK_NAME, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            raise UpdateError(UpdateStep.PREFLIGHT, "another update is running in this checkout") from e
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _read(path: Path) -> bytes | None:
    return path.read_bytes() if path.exists() else None


def _put_back(path: Path, original: bytes | None) -> None:
    if original is None:
        path.unlink(missing_ok=True)
    else:
        atomic_write_bytes(path, original)


class FileJournal:
    """The original bytes of every file an update edits, in memory and in the journal file.

    Args:
        repo_dir: The checkout (paths in the journal are relative to it).
        git_dir: Its `.git` directory, where the journal lies.
        log: Progress messages.
    """

    def __init__(self, repo_dir: Path, git_dir: Path, log: Log) -> None:
        self.repo_dir = repo_dir
        self.path = Path(git_dir) / JOURNAL_NAME
        self.log = log
        self._originals: dict[Path, bytes | None] = {}
        self._written: dict[Path, list[str]] = {}
        self._external: set[Path] = set()
        self._active = False

    def rel(self, path: Path) -> str:
        """`path` relative to the checkout, as git and the messages name it."""
        return Path(path).resolve().relative_to(self.repo_dir).as_posix()

    def begin(self) -> None:
        """Start journaling (before the first edit)."""
        self._active = True
        self._save()

    def remember(self, path: Path, *, external: bool = False) -> None:
        """Keep `path`'s original bytes before anything edits it; `external`: a program of ours rewrites it,
        so an interrupted run's journal restores it whatever its content."""
        if path not in self._originals:
            self._originals[path] = _read(path)
        if external:
            self._external.add(path)
        self._save()

    def write(self, path: Path, data: bytes) -> None:
        """Replace `path`'s content atomically, journaled first."""
        # Journal first: a run killed right after the rename is recognised by the digest of what it wrote.
        self._written.setdefault(path, []).append(hashlib.sha256(data).hexdigest())
        self.remember(path)
        atomic_write_bytes(path, data)

    def restore(self) -> list[str]:
        """Put every edited file back byte for byte; end the journal. Returns the restored paths."""
        restored = []
        for path, original in self._originals.items():
            if _read(path) == original:
                continue
            _put_back(path, original)
            restored.append(self.rel(path))
            self.log(f"restored {self.rel(path)}")
        self.end()
        return sorted(restored)

    def end(self) -> None:
        """Forget the originals (the edits are committed, or restored) and delete the journal file."""
        self._originals.clear()
        if self._active:
            self.path.unlink(missing_ok=True)
            self._active = False

    def _save(self) -> None:
        data = {
            "pid": os.getpid(),
            "files": {
                self.rel(p): {
                    "original": None if b is None else base64.b64encode(b).decode(),
                    "written": self._written.get(p, []),
                    "external": p in self._external,
                }
                for p, b in self._originals.items()
            },
        }
        atomic_write_bytes(self.path, (json.dumps(data, indent=2) + "\n").encode())

    def recover_interrupted_run(self) -> None:
        """Undo the edits of a run that died (holding the update lock, a journal can only be left by one);
        refuse, keeping the journal, when someone edited those files since."""
        if not self.path.exists():
            return
        files = json.loads(self.path.read_bytes()).get("files", {})
        todo: dict[Path, bytes | None] = {}
        edited_since: list[str] = []
        for rel, entry in files.items():
            path = self.repo_dir / rel
            original = None if entry["original"] is None else base64.b64decode(entry["original"])
            current = _read(path)
            if current == original:
                continue
            ours = current is not None and hashlib.sha256(current).hexdigest() in entry["written"]
            if ours or entry["external"]:
                todo[path] = original
            else:
                edited_since.append(rel)
        if edited_since:
            # Someone edited the files after the interrupted run: never overwrite that.
            raise UpdateError(
                UpdateStep.PREFLIGHT,
                f"{', '.join(edited_since)} changed after an interrupted update; its original bytes are in "
                f"{self.path}: restore or commit the files by hand, then delete that journal",
            )
        for path, original in todo.items():
            _put_back(path, original)
            self.log(f"restored {self.rel(path)} left edited by an interrupted update")
        self.path.unlink(missing_ok=True)


__all__ = ["JOURNAL_NAME", "LOCK_NAME", "FileJournal", "exclusive"]
