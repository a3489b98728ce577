"""Error feedback: what one round's envelope did not carry is sent in a later one.

How it works
------------
An agent keeps a float32 residual ``r`` (zeros at first). Each round::

    c           = delta + r               what this round should send
    body        = encode(c, spec, rng)    what goes on the wire
    transmitted = decode(body, ...)       exactly what every receiver will decode
    r           = c - transmitted         what was rounded or sparsified away

so the sum of transmitted vectors over rounds equals the sum of deltas minus the current
residual: quantization error does not accumulate, it is only delayed. With top-k, small entries
grow in the residual until they are large enough to be sent.

Persistence (``to_bytes``/``save``), all integers little-endian::

    offset  size  field
    0       4     magic b"ESEF"
    4       1     version (u8, = 1)
    5       3     zero padding (keeps the values 4-byte aligned)
    8       4     n_params (u32)
    12      4     crc32 of the values (zlib.crc32; catches a corrupted SD card)
    16      4n    residual, n x <f4 (raw little-endian, never pickled)

``save`` writes a temporary file in the same directory, fsyncs it and renames it over the old
one (``os.replace``), so a crash leaves either the old state or the new, never half of one.

Invariants
----------
- The residual is always finite float32 of length ``n_params``. ``compress`` updates it only
  after encoding succeeded, so a refused delta leaves the state as it was.
- With ``enabled = False`` the same call path sends the delta alone; the residual is neither
  added nor updated (a fresh instance keeps it at zero).
- ``from_bytes``/``load`` take untrusted bytes and raise ValueError on anything malformed.

The core (``compress``, ``to_bytes``, ``from_bytes``) is pure; ``save``/``load`` are thin file
wrappers for the agent's state directory.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np

from edge_swarm.swarm.quantize import CodecSpec, decode, encode
from ledger_lite.files import write_atomic

__all__ = ["MAGIC", "VERSION", "ErrorFeedback"]

MAGIC = b"ESEF"
VERSION = 1
_HEAD = struct.Struct("<4sB3xII")  # magic, version, padding, n_params, crc32
_U32_MAX = 2**32 - 1


class ErrorFeedback:
    """The residual one sender carries between rounds (see the module header).

    ``n_params``: the model's parameter count, 1..2**32-1. ``enabled``: whether the residual is
    added and updated (False gives plain compression through the same call).
    """

    def __init__(self, n_params: int, enabled: bool = True) -> None:
        if isinstance(n_params, bool) or not isinstance(n_params, int):
            raise TypeError(f"n_params must be an int, got {n_params!r}")
        if not 1 <= n_params <= _U32_MAX:
            raise ValueError(f"n_params must be in [1, {_U32_MAX}], got {n_params}")
        self._residual = np.zeros(n_params, np.float32)
        self.enabled = bool(enabled)

    @property
    def n_params(self) -> int:
        """The length of the residual."""
        return self._residual.size

    @property
    def residual(self) -> np.ndarray:
        """A read-only view of the current residual."""
        view = self._residual.view()
        view.flags.writeable = False
        return view

    def compress(
        self, delta: np.ndarray, spec: CodecSpec, rng: np.random.Generator | None = None
    ) -> tuple[bytes, np.ndarray]:
        """Compress ``delta`` plus the residual; return ``(body, transmitted)``.

        ``body`` is the codec body for an envelope with ``spec.codec_id``/``spec.flags``;
        ``transmitted`` is a fresh float32 array equal to what ``decode(body, ...)`` gives every
        receiver. ``delta`` is not modified. Raises ValueError/TypeError on misuse (wrong shape,
        non-finite values, an rng missing for stochastic rounding); the residual is then unchanged.
        """
        arr = np.asarray(delta)
        if arr.shape != (self.n_params,):
            raise ValueError(f"delta must have shape ({self.n_params},), got {arr.shape}")
        if not np.issubdtype(arr.dtype, np.floating):
            raise TypeError(f"delta must be a floating array, got {arr.dtype}")
        with np.errstate(over="ignore", invalid="ignore"):
            if self.enabled:
                c = np.add(arr, self._residual, dtype=np.float32)
            else:
                c = np.asarray(arr, dtype=np.float32)
        body = encode(c, spec, rng)  # raises on non-finite c: state untouched
        transmitted = decode(body, spec.codec_id, spec.flags, self.n_params)
        if self.enabled:
            np.subtract(c, transmitted, out=self._residual)
        return body, transmitted

    def reset(self) -> None:
        """Forget the residual (e.g. when the swarm changes the model's layout)."""
        self._residual.fill(0)

    # ----------------------------------------------------------------------- persistence

    def to_bytes(self) -> bytes:
        """The residual in the persistence format of the module header."""
        values = self._residual.astype("<f4", copy=False).tobytes()
        return _HEAD.pack(MAGIC, VERSION, self.n_params, zlib.crc32(values)) + values

    @classmethod
    def from_bytes(
        cls, data: bytes | bytearray | memoryview, n_params: int, enabled: bool = True
    ) -> ErrorFeedback:
        """Restore a residual saved by ``to_bytes`` for a model of ``n_params`` parameters.

        Raises ValueError on a bad magic, version, length, parameter count, checksum, or a
        non-finite value.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ValueError(f"residual state must be bytes, got {type(data).__name__}")
        data = bytes(data)
        if len(data) < _HEAD.size:
            raise ValueError(f"residual state of {len(data)} bytes is shorter than its header")
        magic, version, n, crc = _HEAD.unpack_from(data, 0)
        if magic != MAGIC:
            raise ValueError(f"bad residual magic {magic!r}")
        if version != VERSION:
            raise ValueError(f"unsupported residual version {version}")
        if n != n_params:
            raise ValueError(f"residual holds {n} params, model has {n_params}")
        values = data[_HEAD.size :]
        if len(values) != 4 * n:
            raise ValueError(f"residual of {len(values)} bytes, expected {4 * n}")
        if zlib.crc32(values) != crc:
            raise ValueError("residual checksum mismatch")
        residual = np.frombuffer(values, "<f4").astype(np.float32)
        if not np.all(np.isfinite(residual)):
            raise ValueError("residual holds NaN or Inf")
        fb = cls(n_params, enabled)
        fb._residual = residual
        return fb

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the state to ``path`` atomically (temporary file, fsync, ``os.replace``)."""
        write_atomic(path, self.to_bytes())

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        n_params: int,
        enabled: bool = True,
        missing_ok: bool = False,
    ) -> ErrorFeedback:
        """Read a state written by ``save``.

        A missing file raises FileNotFoundError, or gives a zero residual with ``missing_ok``.
        Bad contents raise ValueError (the caller decides whether to start afresh).
        """
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            if missing_ok:
                return cls(n_params, enabled)
            raise
        return cls.from_bytes(data, n_params, enabled)
