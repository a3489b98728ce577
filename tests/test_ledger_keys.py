"""Ed25519 keys: signing, verification that never raises, key files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger_lite import SigningKey, verify
from ledger_lite.errors import KeyFileError

from .test_ledger_support import seed_key


def test_sign_verify() -> None:
    key = SigningKey.generate()
    sig = key.sign(b"hello")
    assert len(sig) == 64 and len(key.public_hex) == 64
    assert verify(key.public_hex, b"hello", sig)
    assert not verify(key.public_hex, b"hellO", sig)
    assert not verify(SigningKey.generate().public_hex, b"hello", sig)
    assert not verify(key.public_hex, b"hello", sig[:-1] + bytes([sig[-1] ^ 1]))


def test_deterministic_from_seed() -> None:
    assert seed_key(7).sign(b"m") == seed_key(7).sign(b"m")
    assert seed_key(7).public_hex != seed_key(8).public_hex
    with pytest.raises(ValueError):
        SigningKey.from_seed(b"short")


@pytest.mark.parametrize(
    "public_hex, msg, sig",
    [
        ("zz" * 32, b"m", b"\x00" * 64),
        ("ab", b"m", b"\x00" * 64),
        ("", b"", b""),
        (None, b"m", b"\x00" * 64),
        ("00" * 32, "not bytes", b"\x00" * 64),
        ("00" * 32, b"m", None),
        ("00" * 32, b"m", "a string"),
        ("ff" * 32, b"m", b"\xff" * 64),
        (seed_key(1).public_hex, None, b"\x00" * 64),
    ],
)
def test_verify_false_on_garbage(public_hex: object, msg: object, sig: object) -> None:
    assert verify(public_hex, msg, sig) is False  # type: ignore[arg-type]


@given(st.text(max_size=80), st.binary(max_size=40), st.binary(max_size=80))
def test_verify_never_raises(public_hex: str, msg: bytes, sig: bytes) -> None:
    assert verify(public_hex, msg, sig) is False


def test_save_load_round_trip(tmp_path: Path) -> None:
    key = SigningKey.generate()
    path = tmp_path / "node.key"
    key.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    loaded = SigningKey.load(path)
    assert loaded.public_hex == key.public_hex
    assert verify(key.public_hex, b"x", loaded.sign(b"x"))
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file is gone


def test_save_never_clobbers_unless_asked(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    first, second = SigningKey.generate(), SigningKey.generate()
    first.save(path)
    with pytest.raises(FileExistsError):
        second.save(path)
    assert SigningKey.load(path).public_hex == first.public_hex
    second.save(path, overwrite=True)
    assert SigningKey.load(path).public_hex == second.public_hex
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_load_seed_hex(tmp_path: Path) -> None:
    path = tmp_path / "seed.key"
    path.write_text(seed_key(3).seed.hex() + "\n")
    path.chmod(0o600)
    assert SigningKey.load(path).public_hex == seed_key(3).public_hex


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_load_refuses_file_open_to_others(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "node.key"
    SigningKey.generate().save(path)
    path.chmod(mode)
    with pytest.raises(KeyFileError, match="chmod 600"):
        SigningKey.load(path)


@pytest.mark.parametrize("content", [b"", b"not a key", b"zz" * 32, b"-----BEGIN garbage"])
def test_load_refuses_garbage(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match="does not hold"):
        SigningKey.load(path)


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot read"):
        SigningKey.load(tmp_path / "absent.key")
