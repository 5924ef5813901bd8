"""The package index, for real: a pypiserver on loopback (htpasswd by passlib) started per test, small wheels
made here, twine uploads, pip installs into fresh virtualenvs; and once the five real Dagster wheels."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from local_index import free_port, pypiserver
from passlib.apache import HtpasswdFile

from dagster_nix_builder.nix.settings import bootstrap_nix_config
from dagster_nix_builder.publish.package_index import (
    IndexUploadError,
    InstallVerificationError,
    index_files,
    upload_wheels,
    verify_install,
)

REPO = Path(__file__).resolve().parent.parent
USER, PASSWORD = "publisher", "s3cret-for-tests"


@dataclass
class Index:
    url: str  # upload URL (the server's root)
    simple: str
    packages: Path


@pytest.fixture
def index(tmp_path: Path) -> Iterator[Index]:
    """A real pypiserver on a free 127.0.0.1 port: uploads need the htpasswd user, reads are open (and unknown
    projects redirect to its default fallback index, which upload_wheels must not follow)."""
    packages, htpasswd = tmp_path / "index-packages", tmp_path / "htpasswd"
    packages.mkdir()
    users = HtpasswdFile(str(htpasswd), new=True)
    users.set_password(USER, PASSWORD)
    users.save()
    with pypiserver(packages, ["-P", str(htpasswd), "-a", "update"], tmp_path / "pypiserver.log") as url:
        yield Index(url, url + "simple/", packages)


def make_wheel(directory: Path, version: str = "1.0", flavour: str = "", name: str = "tiny_pub") -> Path:
    """A small, valid wheel with a console script ``tiny-pub`` answering ``--version``; ``flavour`` changes
    its bytes (same name and version, other content)."""
    directory.mkdir(parents=True, exist_ok=True)
    dist_info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"FLAVOUR = {flavour!r}\n\n\ndef main():\n    print('tiny-pub, version {version}')\n",
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: {version}\n",
        f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{dist_info}/entry_points.txt": f"[console_scripts]\ntiny-pub = {name}:main\n",
    }
    record = []
    for path, text in files.items():
        data = text.encode()
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode().rstrip("=")
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist_info}/RECORD,,")
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in [*files.items(), (f"{dist_info}/RECORD", "\n".join(record) + "\n")]:
            archive.writestr(zipfile.ZipInfo(path, (2020, 1, 1, 0, 0, 0)), text.encode())
    return wheel


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_upload_then_a_second_upload_finds_it_already_present(index: Index, tmp_path: Path):
    wheel = make_wheel(tmp_path / "a")
    first = upload_wheels([wheel], index.url, USER, PASSWORD)
    assert (first.uploaded, first.already_present, first.bytes) == ((wheel.name,), (), wheel.stat().st_size)
    assert index_files(index.simple, "tiny-pub") == {wheel.name: sha256(wheel)}
    second = upload_wheels([wheel], index.url, USER, PASSWORD)
    assert (second.uploaded, second.already_present, second.bytes) == ((), (wheel.name,), 0)
    assert second.repository_url == index.url and second.seconds > 0


def test_a_wrong_password_names_the_credentials_and_a_retry_with_the_right_one_completes(index: Index, tmp_path):
    wheels = [make_wheel(tmp_path / "a"), make_wheel(tmp_path / "b", name="tiny_two")]
    with pytest.raises(IndexUploadError) as refused:
        upload_wheels(wheels, index.url, USER, "wrong")
    message = str(refused.value)
    assert "403" in message and "credentials" in message and wheels[0].name in message
    assert refused.value.uploaded == () and list(index.packages.iterdir()) == []
    retry = upload_wheels(wheels, index.url, USER, PASSWORD)
    assert sorted(retry.uploaded) == sorted(w.name for w in wheels)


def test_the_same_version_with_other_content_is_refused_before_anything_is_sent(index: Index, tmp_path: Path):
    published = make_wheel(tmp_path / "a")
    upload_wheels([published], index.url, USER, PASSWORD)
    other = make_wheel(tmp_path / "b", flavour="rebuilt differently")
    innocent = make_wheel(tmp_path / "c", name="tiny_two")
    with pytest.raises(IndexUploadError) as refused:
        upload_wheels([innocent, other], index.url, USER, PASSWORD)
    assert refused.value.wheel == other.name and "different content" in str(refused.value)
    assert sha256(other) in str(refused.value) and sha256(published) in str(refused.value)
    # Nothing of that call was sent, and the index still serves the first bytes.
    assert index_files(index.simple, "tiny-two") == {}
    assert index_files(index.simple, "tiny-pub") == {published.name: sha256(published)}


def test_an_unreachable_index_is_named(tmp_path: Path):
    url = f"http://127.0.0.1:{free_port()}/"
    wheel = make_wheel(tmp_path / "a")
    start = time.monotonic()
    with pytest.raises(IndexUploadError, match="unreachable") as refused:
        upload_wheels([wheel], url, USER, PASSWORD)
    assert wheel.name in str(refused.value) and url in str(refused.value)
    assert time.monotonic() - start < 10


def test_a_missing_wheel_is_named(index: Index, tmp_path: Path):
    with pytest.raises(IndexUploadError, match="cannot read"):
        upload_wheels([tmp_path / "nope-1.0-py3-none-any.whl"], index.url, USER, PASSWORD)


def test_verify_install_takes_ours_from_the_served_index_alone(index: Index, tmp_path: Path, monkeypatch):
    wheel = make_wheel(tmp_path / "ours")
    upload_wheels([wheel], index.url, USER, PASSWORD)
    # The usual configuration offers another build of the same version: it must not be the one installed.
    decoy = make_wheel(tmp_path / "decoy", flavour="from elsewhere")
    monkeypatch.setenv("PIP_FIND_LINKS", str(decoy.parent))
    result = verify_install(index.simple, {"tiny-pub": wheel}, "tiny-pub", "1.0", tmp_path / "work")
    assert result.ours == ("tiny-pub==1.0",) and result.files_checked == 4
    assert result.version_output == "tiny-pub, version 1.0"
    flavour = subprocess.run([str(result.venv / "bin" / "python"), "-c", "import tiny_pub; print(tiny_pub.FLAVOUR)"],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert flavour == "\n"


def test_verify_install_refuses_an_index_serving_other_bytes(index: Index, tmp_path: Path):
    served = make_wheel(tmp_path / "served", flavour="someone else's")
    upload_wheels([served], index.url, USER, PASSWORD)
    ours = make_wheel(tmp_path / "ours")
    with pytest.raises(InstallVerificationError, match="other bytes"):
        verify_install(index.simple, {"tiny-pub": ours}, "tiny-pub", "1.0", tmp_path / "work")


def test_verify_install_checks_the_version(index: Index, tmp_path: Path):
    wheel = make_wheel(tmp_path / "ours")
    upload_wheels([wheel], index.url, USER, PASSWORD)
    with pytest.raises(InstallVerificationError, match=r"says 'tiny-pub, version 1.0', not version 2.0"):
        verify_install(index.simple, {"tiny-pub": wheel}, "tiny-pub", "2.0", tmp_path / "work")


# -- the real thing ----------------------------------------------------------------------------------------------

DAGSTER_WHEELS = ("dagster-pipes", "dagster-shared", "dagster", "dagster-graphql", "dagster-webserver")
VERSION = "1.13.27"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nix-build") is None, reason="Nix is not installed")
def test_the_five_dagster_wheels_published_and_installed_from_the_index(index: Index, tmp_path: Path):
    env = {**os.environ, "NIX_CONFIG": bootstrap_nix_config(), "NIX_PATH": ""}
    wheels = {}
    for package in DAGSTER_WHEELS:
        dist = subprocess.run(["nix-build", str(REPO / "nix"), "-A", f"{package}.dist", "--no-out-link"],
                              capture_output=True, text=True, env=env, check=True).stdout.strip()  # fmt: skip
        (wheels[package],) = Path(dist).glob("*.whl")
    listing = {w: w.stat().st_mtime for w in wheels.values()}

    cold = upload_wheels(list(wheels.values()), index.url, USER, PASSWORD)
    assert sorted(cold.uploaded) == sorted(w.name for w in wheels.values()) and cold.already_present == ()
    warm = upload_wheels(list(wheels.values()), index.url, USER, PASSWORD)
    assert warm.uploaded == () and len(warm.already_present) == 5 and warm.bytes == 0
    print(f"\nupload of the five wheels: cold {cold.seconds:.2f} s, {cold.bytes} bytes; "
          f"already present {warm.seconds:.2f} s, {warm.bytes} bytes")

    result = verify_install(index.simple, wheels, "dagster-webserver", VERSION, tmp_path / "work")
    assert result.version_output == f"dagster-webserver, version {VERSION}"
    assert len(result.ours) == 5 and result.files_checked > 1000
    print(f"verify_install: {result.seconds:.1f} s, {result.files_checked} files checked, "
          f"{result.dependencies_installed} third-party distributions from the usual index")
    assert {w: w.stat().st_mtime for w in wheels.values()} == listing  # read only, never written
