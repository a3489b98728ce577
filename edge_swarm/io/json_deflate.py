"""JSON payloads deflated on the wire against a preset dictionary, hex carried as bytes.

Every JSON message the swarm publishes (ledger entries, submissions, query replies, telemetry,
status) is small, 100 to 1,500 bytes, and mostly field names and hex (hashes, signatures).
Deflate alone saves about a third; primed with a dictionary of our messages' skeletons, and
with each hex string of 16 to 255 bytes turned back into its bytes first (hex costs deflate
4.6 bits a digit, 15% more than the bytes it spells), it saves more than half (measured on a
demo's traffic: a compact ledger entry 570 -> about 245 bytes, telemetry 398 -> about 150),
which is most of a light agent's per-round budget beyond its own delta and the update.

The frame is ``b"ESZJ" + version + raw deflate stream``: like every binary frame of ours it
opens with a four-byte magic of its own, which JSON text never starts with, so a receiver tells
plain JSON, deflated JSON and other frames apart by their first bytes. Plain JSON is still
accepted, so a sender that does not deflate (an older device, a test, the broker's will
message) keeps working. Inside the stream a hex string ``"<2n digits>"`` is ``\\x01 n
<n bytes>``: JSON text never holds a raw control byte, and a payload that does is sent as is.
zlib does the deflating (stdlib); only the framing, the hex packing, the size bound and the
dictionary are ours. The dictionary is part of the wire format: a change is a new version,
never an edit.

No secret is ever inside these messages (they carry public keys, hashes, signatures and
already-wrapped keys), so compressing before an optional TLS layer leaks nothing
(the CRIME/BREACH class needs a secret and attacker-chosen text in one compressed stream).
"""

from __future__ import annotations

import re
import zlib

MAGIC = b"ESZJ"
VERSION = 1
MIN_SIZE = 48
"""Shorter JSON is sent as is: five bytes of framing would eat the saving."""

_MARK = b"\x01"
_HEX = re.compile(rb'"((?:[0-9a-f]{2}){16,255})"')

# Skeletons of the messages we send, values stripped (hex and numbers do not repeat across
# messages; names and structure do); "{h}" is a 32-byte hash and "{s}" a 64-byte signature
# as they look once packed. Deflate finds matches nearer the end of the dictionary more
# cheaply, so the most frequent messages (ledger entries) come last.
_V1_SKELETONS = (
    '{"sha256":"{h}","want":"delta"}',
    '{"node":"gateway-1","role":"gateway","round":,"sig":"{s}","state":"offline","ts_ms":}',
    '{"node":"agent-","role":"agent","round":,"sig":"{s}","state":"online","ts_ms":}',
    '{"author":"admin","height":,"kind":"enroll","payload":{"enc_pubkey":"{h}",'
    '"expires_ms":null,"node":"agent-","pubkey":"{h}","role":"agent"},"prev_hash":"{h}",'
    '"sig":"{s}","swarm":"","ts":}',
    '{"author":"gateway-1","height":,"kind":"key_epoch","payload":{"epoch":,"swarm":"",'
    '"wrapped":{"agent-01":"","agent-02":"","gateway-1":"","observer":""}},',
    '{"client":"agent-","limit":500,"op":"entries","req":"","start":}',
    '{"client":"agent-","limit":500,"op":"contribution","req":"","start":}',
    '{"entries":[],"proof":null,"refused":null,"req":"","tip_height":}',
    '{"entries":[],"proof":{"height":,"index":,"path":["{h}","{h}","{h}"],'
    '"row":["agent-","{h}",,,"{s}"]},"refused":null,"req":"","tip_height":}',
    '{"node":"agent-","round":,"sig":"{s}","ts_ms":,"values":{"accuracy":0.,"bytes_in":,'
    '"bytes_out":,"clock_skew_s":0.,"commits_proven":,"disk_free_mib":.,"drops":0,"paused":0,'
    '"peak_rss_kb":,"peer_deltas":,"round":,"train_s":0.00}}',
    '{"tx":{"author":"agent-","kind":"delta_commit","payload":{"envelope_sha256":"{h}",'
    '"metrics":{},"n_samples":,"node":"agent-","round":},"sig":"{s}","swarm":"","ts":}}',
    '{"tx":{"author":"agent-","kind":"model_attest","payload":{"model_hash":"{h}","round":,'
    '"state_hash":"{h}","update_sha256":"{h}"},"sig":"{s}","swarm":"","ts":}}',
    '{"author":"gateway-1","height":,"kind":"round_close","payload":{"commits":[["agent-",'
    '"{h}",,,"{s}"],["agent-","{h}",,,"{s}"]],"detached":["commits","included"],'
    '"included":["agent-","agent-"],"reason":"all expected peers committed","round":},'
    '"prev_hash":"{h}","sig":"{s}","swarm":"","ts":}',
    '{"author":"gateway-1","height":,"kind":"model_final","payload":{"attesters":["agent-",'
    '"gateway-1"],"committee":["agent-","agent-","gateway-1"],"detached":["merge"],"merge":'
    '{"rule":"mean","weights":{"agent-01":0.,"agent-02":0.}},"model_hash":"{h}","round":,'
    '"state_hash":"{h}"},"prev_hash":"{h}","sig":"{s}","swarm":"","ts":}',
    '{"author":"gateway-1","height":,"kind":"round_open","payload":{"base_model_hash":"{h}",'
    '"deadline_ms":,"round":},"prev_hash":"{h}","sig":"{s}","swarm":"","ts":}',
    '{"author":"gateway-1","height":,"kind":"round_close","payload":{"commits":{"digest":"{h}",'
    '"n":},"detached":["commits","included"],"included":{"digest":"{h}","n":},"reason":"all '
    'expected peers committed","round":},"prev_hash":"{h}","sig":"{s}","swarm":"","ts":}',
    '{"author":"gateway-1","height":,"kind":"model_final","payload":{"attesters":["agent-",'
    '"gateway-1"],"committee":["agent-","agent-","gateway-1"],"detached":["merge"],"merge":'
    '{"digest":"{h}","n":},"model_hash":"{h}","round":,"state_hash":"{h}"},'
    '"prev_hash":"{h}","sig":"{s}","swarm":"","ts":}',
    '{"author":"agent-","height":,"kind":"model_attest","payload":{"model_hash":"{h}","round":,'
    '"state_hash":"{h}","update_sha256":"{h}"},"prev_hash":"{h}","sig":"{s}","swarm":"","ts":}',
)


def _skeletons(texts: tuple[str, ...]) -> bytes:
    joined = "".join(texts).replace('"{h}"', "\x01\x20").replace('"{s}"', "\x01\x40")
    return joined.encode("ascii")


_DICTIONARIES = {VERSION: _skeletons(_V1_SKELETONS)}
_LEVEL = 9  # messages are small: the best ratio costs microseconds


class DeflateError(ValueError):
    """A deflated payload that is malformed, of an unknown version, or inflates too large."""


def dictionary(version: int = VERSION) -> bytes:
    """The preset dictionary of ``version`` (KeyError for an unknown one)."""
    return _DICTIONARIES[version]


def pack(data: bytes) -> bytes:
    """``data`` as it should travel: deflated if it is JSON that deflating makes shorter."""
    if len(data) < MIN_SIZE or not data.startswith(b"{") or _MARK in data:
        return data
    z = zlib.compressobj(_LEVEL, wbits=-15, zdict=_DICTIONARIES[VERSION])
    packed = MAGIC + bytes([VERSION]) + z.compress(_HEX.sub(_to_bytes, data)) + z.flush()
    return packed if len(packed) < len(data) else data


def is_packed(data: bytes) -> bool:
    """Whether ``data`` is a deflated frame (else it is plain JSON or a binary frame)."""
    return data[:4] == MAGIC


def unpack(data: bytes, limit: int) -> bytes:
    """The payload ``data`` carries: inflated if it is a deflated frame, else ``data`` itself.

    A frame that would inflate past ``limit`` bytes is refused without inflating the rest
    (a small frame can expand a thousandfold). Raises DeflateError on an unknown version, a
    truncated or corrupt stream or hex packing, bytes after its end, or the limit.
    """
    if not is_packed(data):
        return data
    if len(data) < 5 or data[4] not in _DICTIONARIES:
        raise DeflateError(f"deflated payload of unknown version {data[4:5].hex() or 'none'}")
    z = zlib.decompressobj(wbits=-15, zdict=_DICTIONARIES[data[4]])
    try:
        out = z.decompress(data[5:], limit + 1)
    except zlib.error as exc:
        raise DeflateError(f"corrupt deflated payload: {exc}") from None
    if len(out) > limit or z.unconsumed_tail:
        raise DeflateError(f"deflated payload inflates past {limit} bytes")
    if not z.eof:
        raise DeflateError("truncated deflated payload")
    if z.unused_data:
        raise DeflateError("bytes after the end of a deflated payload")
    return _to_hex(out, limit)


def _to_bytes(m: re.Match[bytes]) -> bytes:
    raw = bytes.fromhex(m.group(1).decode("ascii"))
    return _MARK + bytes([len(raw)]) + raw


def _to_hex(text: bytes, limit: int) -> bytes:
    """``text`` with each packed hex string spelled out again, refused past ``limit``."""
    parts, pos, size = [], 0, len(text)
    while (mark := text.find(_MARK, pos)) >= 0:
        n = text[mark + 1] if mark + 1 < len(text) else 0
        raw = text[mark + 2 : mark + 2 + n]
        if n < 16 or len(raw) != n:
            raise DeflateError("corrupt hex packing in a deflated payload")
        size += n  # 2 + n packed bytes become 2 + 2n characters
        if size > limit:
            raise DeflateError(f"deflated payload inflates past {limit} bytes")
        parts += [text[pos:mark], b'"', raw.hex().encode("ascii"), b'"']
        pos = mark + 2 + n
    parts.append(text[pos:])
    return b"".join(parts)
