"""Durable files, and owner-only ones: the one place that knows how to write them safely.

A key or password is written to a temporary file created with mode 0600 (the umask can
only remove bits), fsynced, then moved into place and the directory fsynced: a crash
leaves either no file or the whole file, and a reader never sees half a key. Used by
ledger_lite's keys and snapshots and by edge_swarm's error-feedback state, encryption
keys and broker secrets.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX); ignored where it cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_private(path: str | os.PathLike[str], data: bytes, overwrite: bool = True) -> Path:
    """Write ``data`` to ``path`` with mode 0600, atomically and durably; returns the path.

    With ``overwrite`` False an existing file is never replaced (FileExistsError): a device
    keeps its key.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)  # in case the file system ignored the mode at creation
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if path exists
            os.unlink(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def write_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file, fsync and ``os.replace``: a crash
    leaves the old file or the new one, never half of one. Not private: see write_private."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


class OpenToOthersError(PermissionError):
    """A secret file that group or other users may access; the message says to chmod 600."""


def read_private(path: str | os.PathLike[str], limit: int, what: str = "key file") -> bytes:
    """Read at most ``limit`` bytes of a secret file that only its owner may access.

    Raises OpenToOthersError (naming ``chmod 600``) if group or other have any permission
    bit on it (POSIX), and OSError if it cannot be read.
    """
    path = Path(path)
    with open(path, "rb") as fh:
        mode = os.fstat(fh.fileno()).st_mode
        if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise OpenToOthersError(
                f"{what} {path} is accessible by group/other "
                f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {path}"
            )
        return fh.read(limit)
