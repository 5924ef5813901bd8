"""A signed Nix binary cache: the key, the publication of closures, and substitution the way a user does it.

No Dagster import; every Nix command runs through :class:`~dagster_nix_builder.nix.cli.NixCli`, settings per
invocation only (nothing is written to ``nix.conf``, the local store's database or any store path).

- :func:`generate_signing_key`: an ed25519 key pair made by Nix itself (``nix-store --generate-binary-cache-key``),
  the secret file mode 0600, never inside a git checkout.
- :func:`publish_closure`: asks the cache which paths of the closure it holds (``nix path-info --store``), copies
  the others with ``nix copy --to '<cache>?secret-key=<file>'`` (signed on upload), then asks again: a
  publication is reported only when every path of the closure is in the cache, signed by the key.
- :func:`verify_substitution`: a fresh, empty store (``local?root=<dir>``, accepted by Nix 2.8 and 2.26)
  substitutes the paths from the cache's HTTP URL with ``require-sigs``, only the given key trusted, and
  ``--max-jobs 0`` with no remote builders, so nothing can be built; it refuses unsigned paths, a wrong key and
  a tampered NAR (Nix's messages are in the error).
"""

from __future__ import annotations

import base64
import os
import time
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dagster_nix_builder.nix.cli import NixCli
from dagster_nix_builder.nix.errors import NixBuilderError, NixCommandError
from dagster_nix_builder.nix.log_format import NixMessage, PlainLine, parse_line
from dagster_nix_builder.nix.output import parse_path_info

SECRET_KEY_BYTES = 64  # libsodium's ed25519 secret key: 32 bytes seed, then the 32 bytes public key
PUBLIC_KEY_BYTES = 32


class BinaryCacheError(NixBuilderError):
    """Base of the errors of this module."""


class SigningKeyError(BinaryCacheError):
    """A signing key is missing, unreadable or malformed, or would be written where it must not be."""


class CachePublishError(BinaryCacheError):
    """A closure was not (completely) published; nothing of it is reported as published."""


class SubstitutionError(BinaryCacheError):
    """A fresh store could not substitute the paths from the cache; carries Nix's messages."""


@dataclass(frozen=True)
class CachePublication:
    """One publication of closures to a binary cache.

    ``paths``: every path of the closures (now all in the cache, signed by ``key_name``); ``uploaded``: copied
    by this publication; ``already_present``: the cache had them (signed) before; ``nar_bytes_uploaded``: bytes
    of the (compressed) NAR files this publication wrote, as the cache's ``.narinfo`` says (``FileSize``).
    """

    cache_url: str
    paths: tuple[str, ...]
    uploaded: tuple[str, ...]
    already_present: tuple[str, ...]
    nar_bytes_uploaded: int
    seconds: float
    public_key: str
    key_name: str


@dataclass(frozen=True)
class SubstitutionResult:
    """``substituted``: every path of the closures, now valid in the fresh store; ``built_nothing``: each of
    them carries the cache's signature and none was built locally (``ultimate``)."""

    substituted: tuple[str, ...]
    seconds: float
    built_nothing: bool


# ---- keys -------------------------------------------------------------------------------------------------


def _inside_git_checkout(path: Path) -> Path | None:
    for parent in path.parents:
        if (parent / ".git").exists():
            return parent
    return None


def generate_signing_key(
    cli: NixCli, key_name: str, secret_key_file: str | os.PathLike[str], public_key_file: str | os.PathLike[str]
) -> str:
    """Make a key pair with Nix's own tooling; return the public key (``name:base64``).

    The secret key file is created with mode 0600 before Nix writes into it (no moment where it is readable
    by others). Refuses an existing file (a key is never overwritten) and any path inside a git checkout.
    """
    secret, public = Path(secret_key_file).absolute(), Path(public_key_file).absolute()
    if not key_name or ":" in key_name or any(c.isspace() for c in key_name):
        raise SigningKeyError(
            f"invalid key name {key_name!r}: use a name without ':' or blanks, e.g. 'cache.example.org-1'"
        )
    for path in (secret, public):
        checkout = _inside_git_checkout(path)
        if checkout is not None:
            raise SigningKeyError(
                f"refusing to write the signing key {path} inside the git checkout {checkout}: keys are kept out of "
                f"repositories. Choose a path elsewhere, e.g. /var/lib/nix-cache/{key_name}.secret"
            )
        if path.exists() or path.is_symlink():
            raise SigningKeyError(
                f"{path} already exists: a key is never overwritten. Remove it or choose another path."
            )
    for path in (secret, public):
        path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        cli.run(cli.store_command("--generate-binary-cache-key", key_name, str(secret), str(public)))
        os.chmod(secret, 0o600)
        read_secret_key(secret)
        return read_key_file(public, secret=False)
    except BaseException:
        for path in (secret, public):
            path.unlink(missing_ok=True)
        raise


def parse_key(text: str, *, secret: bool, origin: str = "the key") -> tuple[str, bytes]:
    """``name:base64`` as (name, raw bytes); raise :class:`SigningKeyError` naming ``origin`` if malformed."""
    kind, size = ("secret", SECRET_KEY_BYTES) if secret else ("public", PUBLIC_KEY_BYTES)
    name, sep, encoded = text.strip().partition(":")
    try:
        raw = base64.b64decode(encoded, validate=True) if sep and name else b""
    except ValueError:
        raw = b""
    if len(raw) != size:
        raise SigningKeyError(
            f"{origin} is not a Nix {kind} signing key ('<name>:<base64 of {size} bytes>'). Make a key pair with "
            "`nix-store --generate-binary-cache-key <name> <secret-file> <public-file>` "
            "(or generate_signing_key), and point the configuration at its files."
        )
    return name, raw


def read_key_file(path: str | os.PathLike[str], *, secret: bool) -> str:
    """The key in ``path``, checked; raise :class:`SigningKeyError` naming the file and the fix."""
    kind = "secret" if secret else "public"
    file = Path(path).absolute()
    try:
        text = file.read_text()
    except FileNotFoundError:
        raise SigningKeyError(
            f"the {kind} signing key file {file} does not exist. Make a key pair with `nix-store "
            "--generate-binary-cache-key <name> <secret-file> <public-file>` (kept outside the repository), or "
            "configure the path of the existing one."
        ) from None
    except (PermissionError, IsADirectoryError, UnicodeDecodeError, OSError) as exc:
        raise SigningKeyError(
            f"the {kind} signing key file {file} cannot be read ({exc.strerror if isinstance(exc, OSError) else exc}): "
            "run the publication as a user who can read it (the secret key should be mode 0600, owned by that user)."
        ) from None
    parse_key(text, secret=secret, origin=f"the {kind} signing key file {file}")
    return text.strip()


def read_secret_key(secret_key_file: str | os.PathLike[str]) -> tuple[str, str]:
    """(key name, public key) of the secret key in ``secret_key_file``."""
    name, raw = parse_key(read_key_file(secret_key_file, secret=True), secret=True)
    return name, f"{name}:{base64.b64encode(raw[32:]).decode()}"


def read_public_key(secret_key_file: str | os.PathLike[str]) -> str:
    """The public key (``name:base64``) that belongs to the secret key in ``secret_key_file``."""
    return read_secret_key(secret_key_file)[1]


# ---- publishing ---------------------------------------------------------------------------------------------


def _with_param(url: str, name: str, value: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{name}={urllib.parse.quote(value, safe='/')}"


def _cache_infos(cli: NixCli, store: str, paths: Sequence[str]) -> dict[str, dict[str, Any] | None]:
    if not paths:
        return {}
    proc = cli.run(cli.nix_command("path-info", *cli.nix_version().path_info_json(), "--store", store, *paths))
    return parse_path_info(proc.stdout)


def _signed_by(info: dict[str, Any] | None, key_name: str) -> bool:
    return info is not None and any(str(s).startswith(f"{key_name}:") for s in info.get("signatures") or ())


def _fail(what: str, error: NixCommandError) -> CachePublishError:
    return CachePublishError(
        f"{what}: {chr(10).join(error.messages) or error}. Nothing was reported as published; "
        "fix the cause and publish again (what is already in the cache is not uploaded again)."
    )


def publish_closure(
    cli: NixCli, paths: Iterable[str], cache_url: str, secret_key_file: str | os.PathLike[str]
) -> CachePublication:
    """Copy the closures of ``paths`` to the binary cache ``cache_url`` (e.g. ``file:///srv/cache``), signed.

    Raises:
        SigningKeyError: the secret key is missing, unreadable or malformed.
        CachePublishError: a path is not valid locally, the cache is unreachable or not writable, or the cache
            does not hold every path signed afterwards (Nix's message included); a retry completes it.
    """
    started = time.monotonic()
    key_file = Path(secret_key_file).absolute()
    key_name, public_key = read_secret_key(key_file)
    roots = sorted(set(paths))
    if not roots:
        raise CachePublishError("nothing to publish: no store paths given")
    invalid = cli.invalid_paths(roots)
    if invalid:
        raise CachePublishError(
            f"not valid in the local store, so not published: {', '.join(sorted(invalid))}. Build them first "
            "(materialize the package), then publish again."
        )
    closure = sorted(set(cli.run(cli.store_command("--query", "--requisites", *roots)).stdout.split()))
    try:
        before = _cache_infos(cli, cache_url, closure)
    except NixCommandError as error:
        raise _fail(f"cannot read the binary cache {cache_url}", error) from None
    present = [p for p in closure if _signed_by(before.get(p), key_name)]
    unsigned = [p for p in closure if before.get(p) is not None and p not in present]
    missing = [p for p in closure if before.get(p) is None]
    if unsigned:
        local = cli.path_info(unsigned)
        differing = [p for p in unsigned if (before[p] or {}).get("narHash") != local.get(p, {}).get("narHash")]
        if differing:
            raise CachePublishError(
                f"the binary cache {cache_url} holds other contents (NAR hash) than the local store for "
                f"{', '.join(differing)}: remove their .narinfo files from the cache, then publish again."
            )
        try:  # the same contents, without our signature: sign them where they are
            cli.run(cli.nix_command("store", "sign", "--store", cache_url, "--key-file", str(key_file), *unsigned))
        except NixCommandError as error:
            raise _fail(f"cannot sign {len(unsigned)} paths in the binary cache {cache_url}", error) from None
    if missing:
        try:
            cli.run(cli.nix_command("copy", "--to", _with_param(cache_url, "secret-key", str(key_file)), *missing))
        except NixCommandError as error:
            raise _fail(f"copying {len(missing)} paths to the binary cache {cache_url} failed", error) from None
    after = _cache_infos(cli, cache_url, closure) if missing or unsigned else before
    incomplete = [p for p in closure if not _signed_by(after.get(p), key_name)]
    if incomplete:
        raise CachePublishError(
            f"after copying, the binary cache {cache_url} lacks (or has unsigned by {key_name}) "
            f"{len(incomplete)} paths: {', '.join(incomplete[:5])}. Nothing was reported as published; publish again."
        )
    uploaded = [*unsigned, *missing]
    nar_bytes = sum(int((after[p] or {}).get("downloadSize") or (after[p] or {}).get("narSize") or 0) for p in missing)
    return CachePublication(
        cache_url=cache_url, paths=tuple(closure), uploaded=tuple(sorted(uploaded)), already_present=tuple(present),
        nar_bytes_uploaded=nar_bytes, seconds=time.monotonic() - started, public_key=public_key, key_name=key_name,
    )  # fmt: skip


# ---- substitution -----------------------------------------------------------------------------------------


def _messages(stderr: str) -> list[str]:
    """Nix's errors and warnings (a refused signature is a warning, the failure that follows an error)."""
    out = []
    for line in stderr.splitlines():
        event = parse_line(line)
        if isinstance(event, NixMessage) and event.level <= 1:
            out.append(event.msg)
        elif isinstance(event, PlainLine) and event.text.strip():
            out.append(event.text)
    return out


def substitution_options(cache_http_url: str, public_key: str) -> list[str]:
    """The settings of a substitution that trusts the cache's key alone and can build nothing."""
    return [
        "--max-jobs", "0", "--option", "builders", "",
        "--option", "substituters", cache_http_url, "--option", "trusted-public-keys", public_key,
        "--option", "require-sigs", "true",
        # ask the cache itself, not Nix's on-disk memory of earlier answers for this URL
        "--option", "narinfo-cache-negative-ttl", "0", "--option", "narinfo-cache-positive-ttl", "0",
    ]  # fmt: skip


def verify_substitution(
    cli: NixCli, cache_http_url: str, public_key: str, paths: Iterable[str], store_root: str | os.PathLike[str]
) -> SubstitutionResult:
    """Substitute ``paths`` (and their closures) from ``cache_http_url`` into a fresh store rooted at
    ``store_root`` (absent or an empty directory), trusting ``public_key`` alone and building nothing.

    Raises:
        SubstitutionError: Nix refused or failed (unsigned path, wrong key, tampered NAR, unreachable cache);
            its messages are in the error.
    """
    key_name, _ = parse_key(public_key, secret=False, origin=f"the public key {public_key!r}")
    root = Path(store_root).absolute()
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise SubstitutionError(
            f"{root} is not an empty directory: the substitution is verified into a fresh, empty store"
        )
    roots = sorted(set(paths))
    if not roots:
        raise SubstitutionError("nothing to substitute: no store paths given")
    store = f"local?root={root}"
    command = cli.nix_command(
        "build", "--store", store, "--no-link", *substitution_options(cache_http_url, public_key), *roots
    )
    started = time.monotonic()
    proc = cli.run(command, check=False)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        raise SubstitutionError(
            f"a fresh store could not substitute {len(roots)} paths from {cache_http_url} with signatures required "
            f"(trusted key {key_name}):\n" + "\n".join(_messages(proc.stderr) or [f"exit code {proc.returncode}"])
        )
    closure = _closure_in(cli, store, roots)
    infos = _cache_infos(cli, store, closure)
    invalid = [p for p in closure if infos.get(p) is None]
    if invalid:
        raise SubstitutionError(f"after substitution the fresh store lacks: {', '.join(invalid)}")
    built_nothing = all(_signed_by(info, key_name) and not (info or {}).get("ultimate") for info in infos.values())
    return SubstitutionResult(substituted=tuple(closure), seconds=seconds, built_nothing=built_nothing)


def _closure_in(cli: NixCli, store: str, roots: Sequence[str]) -> list[str]:
    proc = cli.run(cli.store_command("--store", store, "--query", "--requisites", *roots))
    return sorted(set(proc.stdout.split()))


__all__ = [
    "BinaryCacheError", "CachePublication", "CachePublishError", "SigningKeyError", "SubstitutionError",
    "SubstitutionResult", "generate_signing_key", "parse_key", "publish_closure", "read_key_file",
    "read_public_key", "read_secret_key", "substitution_options", "verify_substitution",
]  # fmt: skip
