"""The signed binary cache, for real: keys made by Nix, closures copied to a ``file://`` cache, that directory
served over HTTP by our own nginx on loopback, and a fresh, empty store substituting from it with signatures
required and nothing buildable. Derivations are the tiny fixture set with a fresh salt (new paths per test);
the slow test publishes the real dagster-pipes. Nothing here writes into a store path: tampering happens in
the cache's copy of a NAR."""

from __future__ import annotations

import contextlib
import json
import lzma
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO_NIX, TINY

from dagster_nix_builder.nix import processes
from dagster_nix_builder.nix.cli import NixCli
from dagster_nix_builder.publish.binary_cache import (
    CachePublishError,
    SigningKeyError,
    SubstitutionError,
    generate_signing_key,
    publish_closure,
    read_public_key,
    verify_substitution,
)

NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
pytestmark = [
    pytest.mark.skipif(shutil.which("nix-store") is None, reason="nix is not installed (apt-get install nix-bin)"),
    pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install nginx): it serves the cache"),
]


# ---- an HTTP server for a file:// cache --------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serve_directory(directory: Path, workdir: Path) -> Iterator[str]:
    """nginx (our own instance, config in ``workdir``) serving ``directory`` on a free loopback port; yields
    its URL and always stops it."""
    assert NGINX is not None
    workdir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    user = "user root;" if os.geteuid() == 0 else ""  # workers read the (private) tmp dir as we do
    conf = workdir / "nginx.conf"
    conf.write_text(f"""
{user}
worker_processes 1;
error_log {workdir}/error.log;
pid {workdir}/nginx.pid;
events {{ worker_connections 64; }}
http {{
  access_log {workdir}/access.log;
  client_body_temp_path {workdir}/body; proxy_temp_path {workdir}/proxy; fastcgi_temp_path {workdir}/fastcgi;
  uwsgi_temp_path {workdir}/uwsgi; scgi_temp_path {workdir}/scgi;
  types {{ text/x-nix-narinfo narinfo; }}
  default_type application/octet-stream;
  server {{ listen 127.0.0.1:{port}; root {directory}; }}
}}
""")
    proc = processes.popen(
        [NGINX, "-e", str(workdir / "error.log"), "-p", str(workdir), "-c", str(conf), "-g", "daemon off;"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                log = (workdir / "error.log").read_text() if (workdir / "error.log").exists() else ""
                pytest.fail(
                    f"nginx exited ({proc.returncode}): {proc.stderr.read().decode() if proc.stderr else ''}{log}"
                )
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("nginx did not listen within 15 s")
                time.sleep(0.05)
        yield url
    finally:
        processes.stop_group(proc)
        if proc.stderr:
            proc.stderr.close()


# ---- helpers -----------------------------------------------------------------------------------------------


@pytest.fixture
def cli(salt: str) -> NixCli:
    return NixCli(nix_dir=str(TINY), scope=None, nix_args={"salt": salt})


@pytest.fixture
def key(tmp_path: Path, cli: NixCli) -> tuple[Path, str]:
    secret = tmp_path / "keys" / "secret"
    public = generate_signing_key(cli, "test-cache-1", secret, tmp_path / "keys" / "public")
    return secret, public


def build(cli: NixCli, *attrs: str) -> list[str]:
    """Build attributes of the package set; their output paths, each checked for what it must contain."""
    results = json.loads(cli.run(cli.build_command(list(attrs))).stdout)
    outs = [out for result in results for out in result["outputs"].values()]
    assert outs
    return outs


def closure(cli: NixCli, paths: list[str]) -> set[str]:
    return set(cli.run(cli.store_command("--query", "--requisites", *paths)).stdout.split())


def valid_in(cli: NixCli, root: Path, paths: list[str]) -> set[str]:
    """The paths valid in the store rooted at ``root`` (a store path's directory may exist and be invalid)."""
    if not (root / "nix" / "var" / "nix" / "db").exists():
        return set()
    proc = cli.run(cli.store_command("--store", f"local?root={root}", "--check-validity", "--print-invalid", *paths))
    return set(paths) - set(proc.stdout.split())


def name_of(path: str) -> str:
    return path.split("-", 1)[1]


# ---- keys --------------------------------------------------------------------------------------------------


def test_generated_key_pair_is_nixs_own_secret_mode_0600_and_never_overwritten(tmp_path: Path, cli: NixCli):
    secret, public_file = tmp_path / "k" / "secret", tmp_path / "k" / "public"
    public = generate_signing_key(cli, "cache.test-1", secret, public_file)
    assert public == public_file.read_text().strip() and public.startswith("cache.test-1:")
    assert secret.stat().st_mode & 0o777 == 0o600
    assert secret.read_text().startswith("cache.test-1:")
    assert read_public_key(secret) == public  # derived from the secret key, as Nix would
    with pytest.raises(SigningKeyError, match="already exists"):
        generate_signing_key(cli, "cache.test-1", secret, tmp_path / "k" / "other")
    assert read_public_key(secret) == public
    checkout = tmp_path / "repo"
    (checkout / ".git").mkdir(parents=True)
    with pytest.raises(SigningKeyError, match="inside the git checkout"):
        generate_signing_key(cli, "x", checkout / "keys" / "secret", tmp_path / "x.pub")
    assert not (checkout / "keys").exists()


def test_missing_unreadable_or_malformed_secret_key_fails_naming_the_file_and_the_fix(
    tmp_path: Path, cli: NixCli, key: tuple[Path, str]
):
    out = build(cli, "solo")
    missing = tmp_path / "nowhere" / "secret"
    with pytest.raises(SigningKeyError, match=rf"{missing} does not exist.*--generate-binary-cache-key"):
        publish_closure(cli, out, f"file://{tmp_path}/cache", missing)
    with pytest.raises(SigningKeyError, match=rf"{tmp_path} cannot be read"):
        publish_closure(cli, out, f"file://{tmp_path}/cache", tmp_path)  # a directory
    garbage = tmp_path / "garbage"
    garbage.write_text("not a key\n")
    with pytest.raises(SigningKeyError, match=rf"{garbage} is not a Nix secret signing key"):
        publish_closure(cli, out, f"file://{tmp_path}/cache", garbage)
    with pytest.raises(SigningKeyError, match="is not a Nix secret signing key"):  # the public key by mistake
        publish_closure(cli, out, f"file://{tmp_path}/cache", tmp_path / "keys" / "public")
    assert not (tmp_path / "cache").exists()  # nothing was published


# ---- publish and substitute --------------------------------------------------------------------------------


def test_published_closure_substitutes_into_an_empty_store_and_a_second_publication_uploads_nothing(
    tmp_path: Path, cli: NixCli, key: tuple[Path, str]
):
    secret, public = key
    top = build(cli, "top-level")
    expected = closure(cli, top)
    assert {name_of(p) for p in expected} == {"top-level", "mid", "base"}
    cache = tmp_path / "cache"
    first = publish_closure(cli, top, f"file://{cache}", secret)
    assert set(first.paths) == expected and set(first.uploaded) == expected and not first.already_present
    assert first.nar_bytes_uploaded == sum(f.stat().st_size for f in (cache / "nar").iterdir()) > 0
    assert (first.public_key, first.key_name) == (public, "test-cache-1")
    for path in expected:  # signed on upload, in the cache's narinfo
        narinfo = (cache / f"{Path(path).name.split('-')[0]}.narinfo").read_text()
        assert "Sig: test-cache-1:" in narinfo

    second = publish_closure(cli, top, f"file://{cache}", secret)
    assert second.uploaded == () and second.nar_bytes_uploaded == 0 and set(second.already_present) == expected

    with serve_directory(cache, tmp_path / "nginx") as url:
        result = verify_substitution(cli, url, public, top, tmp_path / "fresh")
    assert set(result.substituted) == expected and result.built_nothing and result.seconds > 0
    fresh = tmp_path / "fresh" / "nix" / "store"
    assert {p.name for p in fresh.iterdir() if not p.name.startswith(".")} == {Path(p).name for p in expected}
    for path in expected:  # the same contents as what was built
        assert (fresh / Path(path).name / "name").read_text() == Path(path, "name").read_text() == f"{name_of(path)}\n"
    assert (fresh / Path(top[0]).name / "deps").read_text() == Path(top[0], "deps").read_text()


def test_an_unsigned_path_is_refused_and_publishing_signs_it_in_place(
    tmp_path: Path, cli: NixCli, key: tuple[Path, str]
):
    secret, public = key
    out = build(cli, "solo")
    cache = tmp_path / "cache"
    cli.run(cli.nix_command("copy", "--to", f"file://{cache}", *out))  # by hand, without a key
    with serve_directory(cache, tmp_path / "nginx") as url:
        with pytest.raises(SubstitutionError, match=r"not signed by any of the keys|no substituter|signature"):
            verify_substitution(cli, url, public, out, tmp_path / "fresh1")
        published = publish_closure(cli, out, f"file://{cache}", secret)
        assert published.uploaded == tuple(out) and published.nar_bytes_uploaded == 0  # signed, not copied
        assert verify_substitution(cli, url, public, out, tmp_path / "fresh2").built_nothing


def test_a_wrong_public_key_is_refused(tmp_path: Path, cli: NixCli, key: tuple[Path, str]):
    out = build(cli, "solo")
    publish_closure(cli, out, f"file://{tmp_path}/cache", key[0])
    other = generate_signing_key(cli, "test-cache-1", tmp_path / "other.sec", tmp_path / "other.pub")  # same name
    with serve_directory(tmp_path / "cache", tmp_path / "nginx") as url, pytest.raises(SubstitutionError) as error:
        verify_substitution(cli, url, other, out, tmp_path / "fresh")
    assert "test-cache-1" in str(error.value) and out[0] in str(error.value)
    assert not valid_in(cli, tmp_path / "fresh", out)


def test_a_tampered_nar_is_refused(tmp_path: Path, cli: NixCli, key: tuple[Path, str]):
    secret, public = key
    out = build(cli, "solo")
    cache = tmp_path / "cache"
    publish_closure(cli, out, f"file://{cache}", secret)
    [nar_file] = (cache / "nar").iterdir()
    nar = lzma.decompress(nar_file.read_bytes())
    assert nar.count(b"solo\n") == 1
    nar_file.write_bytes(lzma.compress(nar.replace(b"solo\n", b"SOLO\n"), format=lzma.FORMAT_XZ))
    with (
        serve_directory(cache, tmp_path / "nginx") as url,
        pytest.raises(SubstitutionError, match=r"(?i)hash mismatch"),
    ):
        verify_substitution(cli, url, public, out, tmp_path / "fresh")
    assert not valid_in(cli, tmp_path / "fresh", out)


def test_the_verification_store_must_be_fresh(tmp_path: Path, cli: NixCli, key: tuple[Path, str]):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "nix").mkdir()
    with pytest.raises(SubstitutionError, match="not an empty directory"):
        verify_substitution(cli, "http://127.0.0.1:9", key[1], ["/nix/store/x"], tmp_path / "used")


# ---- failures: nothing half-published is reported, a retry completes --------------------------------------


def test_a_path_not_built_or_an_unreachable_cache_fails_naming_the_cause(
    tmp_path: Path, cli: NixCli, key: tuple[Path, str]
):
    out = build(cli, "solo")
    never_built = "/nix/store/" + "0" * 32 + "-never-built"
    with pytest.raises(CachePublishError, match=rf"not valid in the local store.*{never_built}"):
        publish_closure(cli, [*out, never_built], f"file://{tmp_path}/cache", key[0])
    unreachable = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(CachePublishError, match=rf"{unreachable}.*(?i:couldn't connect|unable to download)"):
        publish_closure(cli, out, unreachable, key[0])


def test_an_unwritable_cache_fails_and_a_retry_after_the_fix_completes(
    tmp_path: Path, cli: NixCli, key: tuple[Path, str]
):
    secret, public = key
    top = build(cli, "top-level")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "nar").write_text("in the way\n")  # the cache's nar/ is not a directory: nothing can be written
    with pytest.raises(
        CachePublishError, match=rf"{cache}/nar"
    ):  # 2.8: "is not a directory", 2.26: "creating directory"
        publish_closure(cli, top, f"file://{cache}", secret)
    (cache / "nar").unlink()

    # Half-way: the top path's narinfo cannot be written, after its dependencies were uploaded.
    blocker = cache / f"{Path(top[0]).name.split('-')[0]}.narinfo"
    blocker.mkdir(parents=True)
    with pytest.raises(CachePublishError, match="Nothing was reported as published"):
        publish_closure(cli, top, f"file://{cache}", secret)
    blocker.rmdir()
    retry = publish_closure(cli, top, f"file://{cache}", secret)
    assert set(retry.paths) == closure(cli, top)
    assert set(retry.uploaded) | set(retry.already_present) == set(retry.paths) and top[0] in retry.uploaded
    with serve_directory(cache, tmp_path / "nginx") as url:
        assert verify_substitution(cli, url, public, top, tmp_path / "fresh").built_nothing


# ---- the real thing ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_dagster_pipes_closure_is_published_and_substituted_into_an_empty_store(tmp_path: Path):
    cli = NixCli(nix_dir=str(REPO_NIX))  # the product's own settings (bootstrap scope where it applies)
    results = json.loads(cli.run(cli.build_command(["dagster-pipes"])).stdout)
    outs = sorted(p for r in results for p in r["outputs"].values())
    secret = tmp_path / "keys" / "secret"
    public = generate_signing_key(cli, "dagster-nix-builder-test-1", secret, tmp_path / "keys" / "public")
    cache = tmp_path / "cache"
    published = publish_closure(cli, outs, f"file://{cache}", secret)
    assert set(published.paths) == closure(cli, outs) and published.nar_bytes_uploaded > 0
    print(f"dagster-pipes: {len(published.paths)} paths, {published.nar_bytes_uploaded} B in {published.seconds:.2f} s")
    with serve_directory(cache, tmp_path / "nginx") as url:
        result = verify_substitution(cli, url, public, outs, tmp_path / "fresh")
    assert set(result.substituted) == set(published.paths) and result.built_nothing
    fresh_out = tmp_path / "fresh" / "nix" / "store" / Path(next(p for p in outs if not p.endswith("-dist"))).name
    assert any(fresh_out.rglob("dagster_pipes/__init__.py")), f"{fresh_out} has no dagster_pipes package"
    print(f"substituted {len(result.substituted)} paths in {result.seconds:.2f} s")
