"""A real pypiserver on loopback for the tests that need a package index (no mocks)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dagster_nix_builder.nix.processes import popen, stop_group


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def pypiserver(packages: Path, options: list[str], log_path: Path) -> Iterator[str]:
    """`pypiserver run` of `packages` with `options` (authentication, fallback) on a free 127.0.0.1 port, until
    it answers; yields its root URL, and stops it (its whole process group) afterwards."""
    url = f"http://127.0.0.1:{(port := free_port())}/"
    with log_path.open("w") as log:
        server = popen([sys.executable, "-m", "pypiserver", "run", "-i", "127.0.0.1", "-p", str(port), *options,
                        str(packages)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    urllib.request.urlopen(url + "health", timeout=2).close()
                    break
                except OSError:
                    assert server.poll() is None, log_path.read_text()
                    assert time.monotonic() < deadline, "pypiserver did not answer within 30 s"
                    time.sleep(0.1)
            yield url
        finally:
            stop_group(server)
