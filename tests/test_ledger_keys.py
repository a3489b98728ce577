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


def test_same_bytes_as_pycryptodome(tmp_path: Path) -> None:
    """Keys moved from pycryptodome to `cryptography` (issue 20): the key file a node wrote
    before, its signatures and its public key stay byte for byte the same."""
    crypto = pytest.importorskip("Crypto.Signature.eddsa")
    for i in range(4):
        old = crypto.import_private_key(bytes([i]) * 32)
        new = SigningKey.from_seed(bytes([i]) * 32)
        assert new.public_hex == old.public_key().export_key(format="raw").hex()
        signer = crypto.new(old, "rfc8032")
        for msg in (b"", b"m", bytes(range(256))):
            assert new.sign(msg) == signer.sign(msg)
        path = tmp_path / f"{i}.key"
        new.save(path)
        assert path.read_bytes() == old.export_key(format="PEM").encode("ascii")
        (tmp_path / f"{i}.old").write_bytes(old.export_key(format="PEM").encode("ascii"))
        (tmp_path / f"{i}.old").chmod(0o600)
        assert SigningKey.load(tmp_path / f"{i}.old").seed == new.seed


def test_load_other_pem_forms(tmp_path: Path) -> None:
    """CRLF line ends still load; a PEM other than the fixed RFC 8410 form goes to
    `cryptography`'s parser, which refuses a key of another type and garbage."""
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric import ec

    from ledger_lite.keys import pem_of_seed

    key = SigningKey.from_seed(b"\x07" * 32)
    path = tmp_path / "k.key"
    path.write_bytes(pem_of_seed(key.seed).replace(b"\n", b"\r\n") + b"\r\n")
    path.chmod(0o600)
    assert SigningKey.load(path).seed == key.seed
    other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption()
    )
    wrong = pem_of_seed(b"\x07" * 16)  # the armour and prefix, half a seed
    for content in (other, wrong):
        path.write_bytes(content)
        with pytest.raises(KeyFileError, match="does not hold"):
            SigningKey.load(path)
