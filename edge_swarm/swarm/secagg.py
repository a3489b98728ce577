"""Secure aggregation (SecAgg+): the committee learns the sum of the updates and nothing else.

How it works
------------
Bonawitz et al. 2017 ("Practical Secure Aggregation"), with the sparse graph of Bell et al.
2020 (SecAgg+), in ``Z_{2^bits}`` (``bits = 32`` in the swarm):

1. **Graph.** ``neighbours(round_hash, agents, degree)`` draws a ring from the hash of the
   round's ``round_open`` entry: agents sorted by ``sha256(domain || hash || id)``, each
   joined to ``degree // 2`` on either side (complete when ``degree >= n - 1``). Everyone
   holding the ledger draws the same graph; nobody steers it without steering that hash.
2. **Keys.** For each edge ``(i, j)`` both ends derive the same ``PairKeys`` from their
   enrolled X25519 keys (``pair_keys``): a mask seed ``s_ij`` and, independently, a share key.
3. **Shares.** Agent ``i`` draws a fresh self seed ``b_i`` and splits it among its
   neighbours and itself with threshold ``t`` (``secagg_shares.split_seed``); each
   neighbour's share travels sealed under the pair's share key (``ShareBundle``).
4. **Upload.** ``i`` quantizes its clipped update (``encode_fixed``) and uploads
   ``y_i = x_i + PRG(b_i) + sum_j (+PRG(s_ij) if i < j else -PRG(s_ij))`` (``mask``).
5. **Unmask.** The ledger fixes the included set ``U`` (agents whose ``y`` arrived). Each
   agent reveals what ``needed_reveals`` lists (``Reveal``): shares of ``b_j`` for ``j`` in
   ``U``, and the mask seed of each of its edges with exactly one end in ``U``. The
   committee rebuilds each ``b_j`` (``combine_seed``) and ``unmask_sum`` returns
   ``sum_{j in U} x_j mod 2^bits``: masks of edges inside ``U`` cancel in the sum, the rest
   are removed with the revealed seeds. ``decode_fixed`` turns it back into floats.

Invariants
----------
- The unmasked sum equals the plain integer sum bit for bit (modular arithmetic, no floats);
  ``max_scale`` picks the largest fixed-point scale for which that sum cannot wrap.
- Honest reveals never expose an included agent's update: self-seed shares are revealed
  only for included agents, pair seeds only for edges crossing the cut, so the masks on the
  edges between two included agents stay secret and still hide each ``y_j`` individually.
  An excluded agent's ``b_j`` is never revealed, so its (late) ``y_j`` stays masked.
- The PRG is AES-CTR over zeros from the seed, read as little-endian uint32 words: the same
  numbers on every CPU (a known-answer test pins them).
- Every function validates its arguments and raises ``SecAggError`` (a ValueError) naming
  what is wrong or missing; ``unmask_sum`` names every missing seed at once.

Threat model, briefly: honest-but-curious committee; up to ``t - 1`` of an agent's holders
colluding with it learn nothing of ``b_i``. A committee colluding with all of an agent's
included neighbours learns that agent's update (inherent to SecAgg+'s sparse graph). A
device that lies about its clipping, or sends garbage, is not caught by masking.

Pure: no sockets, no threads, no logging. Shamir and the wire messages live in
``secagg_shares`` and are re-exported here.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from edge_swarm.swarm.secagg_shares import (
    MAX_HOLDERS,
    PAIR_SEED_LEN,
    SEALED_LEN,
    SEED_LEN,
    SHARE_LEN,
    Reveal,
    SecAggError,
    ShareBundle,
    _id,
    _ids,
    _round,
    combine_seed,
    open_share,
    seal_share,
    share_aad,
    split_seed,
)
from ledger_lite.libcrypto import aes_ctr, hkdf_sha256, x25519

__all__ = [
    "GRAPH_DOMAIN",
    "MAX_HOLDERS",
    "PAIR_SEED_LEN",
    "SEALED_LEN",
    "SEED_LEN",
    "SHARE_LEN",
    "PairKeys",
    "Reveal",
    "SecAggError",
    "ShareBundle",
    "add_mod",
    "combine_seed",
    "decode_fixed",
    "default_degree",
    "default_threshold",
    "encode_fixed",
    "mask",
    "max_scale",
    "needed_reveals",
    "neighbours",
    "new_self_seed",
    "open_share",
    "pair_keys",
    "prg",
    "seal_share",
    "share_aad",
    "split_seed",
    "unmask_sum",
]

GRAPH_DOMAIN = b"edge-swarm/secagg/graph/v1\0"
"""Prefix of every ring-position score, so a score is never some other sha256 of the bytes."""
_KEY_DOMAIN = b"edge-swarm/secagg/pair-keys/v1\0"
_HEX64 = re.compile(r"[0-9a-f]{64}")


# --------------------------------------------------------------------------- graph


def _check_hash(round_hash: object) -> bytes:
    if not isinstance(round_hash, str) or _HEX64.fullmatch(round_hash) is None:
        raise SecAggError(f"round hash is not 64 lowercase hex chars: {round_hash!r:.80}")
    return bytes.fromhex(round_hash)


def _check_int(value: object, what: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise SecAggError(f"{what} must be an int >= {low}, not {value!r}")
    if high is not None and value > high:
        raise SecAggError(f"{what} must be <= {high}, not {value}")
    return value


def neighbours(round_hash: str, agents: Iterable[str], degree: int) -> dict[str, tuple[str, ...]]:
    """The round's SecAgg+ graph: ``{agent: sorted neighbour ids}``, symmetric, no loops.

    Agents are placed on a ring in the order of ``sha256(GRAPH_DOMAIN || hash || id)`` and
    each is joined to the ``degree // 2`` next on either side, so an odd ``degree`` acts as
    ``degree - 1``; ``degree >= n - 1`` gives the complete graph. Depends only on the hash,
    the *set* of agents and ``degree``. Raises SecAggError on a bad hash, id or degree.
    """
    seed = _check_hash(round_hash)
    _check_int(degree, "degree", 0)
    pool = sorted(set(_ids(agents, "agent")))
    n = len(pool)
    if degree >= n - 1:
        return {a: tuple(b for b in pool if b != a) for a in pool}
    # Scores are 256-bit hashes: a tie never happens in practice, the id breaks one anyway.
    ring = sorted(
        pool, key=lambda a: (hashlib.sha256(GRAPH_DOMAIN + seed + a.encode()).digest(), a)
    )
    half = degree // 2
    out: dict[str, set[str]] = {a: set() for a in ring}
    for pos, a in enumerate(ring):
        for step in range(1, half + 1):
            b = ring[(pos + step) % n]  # 2 * half < n - 1 here, so b != a and no repeats
            out[a].add(b)
            out[b].add(a)
    return {a: tuple(sorted(out[a])) for a in pool}


def default_degree(n: int) -> int:
    """Neighbours per agent for ``n`` agents: ``min(n - 1, 2 * ceil(log2 n))`` (8 -> 6,
    100 -> 14, 1000 -> 20). Logarithmic as SecAgg+ prescribes; even, so the ring uses all
    of it, unless the graph is complete."""
    _check_int(n, "n", 1)
    return min(n - 1, 2 * math.ceil(math.log2(n))) if n > 1 else 0


def default_threshold(degree: int) -> int:
    """Shares needed to rebuild a self seed: a strict majority of its ``degree + 1``
    holders (the neighbours and the agent), ``(degree + 1) // 2 + 1``. A majority means the
    committee cannot gather enough shares of one seed from two disjoint groups of agents."""
    _check_int(degree, "degree", 0)
    return (degree + 1) // 2 + 1


# --------------------------------------------------------------------------- keys


@dataclass(frozen=True)
class PairKeys:
    """The secrets an edge's two ends share in one round. ``mask_seed`` seeds the pairwise
    mask (and is revealed if the edge crosses the cut); ``share_key`` seals the self-seed
    shares the two exchange and is never revealed. They come from separate HKDF outputs,
    so one says nothing about the other."""

    mask_seed: bytes
    share_key: bytes

    def __post_init__(self) -> None:
        for name in ("mask_seed", "share_key"):
            value = getattr(self, name)
            if not isinstance(value, bytes) or len(value) != 32:
                raise SecAggError(f"{name} must be 32 bytes")

    def __repr__(self) -> str:  # secrets stay out of logs and tracebacks
        return "PairKeys(<secret>)"


def _hkdf_info(label: bytes, swarm: str, round_no: int, a: str, b: str) -> bytes:
    lo, hi = sorted((a, b))
    out = bytearray(_KEY_DOMAIN + label + b"\0" + struct.pack(">Q", round_no))
    for field in (swarm, lo, hi):  # length-prefixed: no field can run into the next
        raw = field.encode("ascii")
        out += bytes([len(raw)]) + raw
    return bytes(out)


def pair_keys(
    own_private: bytes,
    peer_public: bytes,
    *,
    swarm: str,
    round_no: int,
    round_hash: str,
    a: str,
    b: str,
) -> PairKeys:
    """The edge ``{a, b}``'s keys for one round, from an X25519 agreement of ``a``'s raw
    private key and ``b``'s raw public key (32 bytes each).

    HKDF-SHA256 over the shared secret, salt = the round hash, info = domain, purpose,
    swarm, round and the two ids sorted, so both ends get the same keys and a new round
    gives new ones. Raises SecAggError on bad ids or hash, ``a == b``, or a peer key that
    yields the all-zero secret (a low-order point: a hostile key, never an honest one).
    """
    _id(swarm, "swarm")
    _round(round_no)
    _id(a, "agent")
    _id(b, "agent")
    if a == b:
        raise SecAggError("an agent has no pair keys with itself")
    salt = _check_hash(round_hash)
    if not all(isinstance(k, bytes) and len(k) == 32 for k in (own_private, peer_public)):
        raise SecAggError("pair_keys needs a raw X25519 private key and public key (32 bytes)")
    try:
        shared = x25519(own_private, peer_public)
    except ValueError:
        raise SecAggError(f"the X25519 key of the edge {a}-{b} is not usable") from None
    keys = {}
    for label in (b"mask", b"share"):
        info = _hkdf_info(label, swarm, round_no, a, b)
        keys[label] = hkdf_sha256(shared, 32, salt=salt, info=info)
    return PairKeys(mask_seed=keys[b"mask"], share_key=keys[b"share"])


def new_self_seed() -> bytes:
    """A fresh 16-byte self seed from the OS. Never reuse one across rounds."""
    return os.urandom(SEED_LEN)


# --------------------------------------------------------------------------- prg, fixed point


def _check_bits(bits: object) -> int:
    return _check_int(bits, "bits", 1, 32)


def prg(seed: bytes, n: int, bits: int) -> np.ndarray:
    """``n`` pseudo-random uint32 values in ``[0, 2^bits)`` from ``seed``.

    AES-CTR (counter block 0, big-endian increment) over ``4n`` zero bytes, read as
    little-endian uint32 words and reduced mod ``2^bits``. A 32-byte seed (a pair mask
    seed) keys AES-256; a 16-byte seed (a self seed: 128 bits is what Shamir shares) keys
    AES-128. Each seed masks one vector in one round, so the fixed counter start is safe.
    """
    if not isinstance(seed, bytes) or len(seed) not in (SEED_LEN, PAIR_SEED_LEN):
        raise SecAggError(f"a PRG seed is {SEED_LEN} or {PAIR_SEED_LEN} bytes")
    _check_int(n, "n", 0)
    _check_bits(bits)
    words = np.frombuffer(aes_ctr(seed, bytes(16), bytes(4 * n)), dtype="<u4").astype(np.uint32)
    return words if bits == 32 else words & np.uint32((1 << bits) - 1)


def _reduce(values: np.ndarray, bits: int) -> np.ndarray:
    # uint32 arithmetic wraps mod 2^32, and 2^bits divides 2^32: masking finishes the job.
    return values if bits == 32 else values & np.uint32((1 << bits) - 1)


def max_scale(
    clip: float, n_max: int, bits: int, *, noise_multiplier: float = 0.0, tails: float = 12.0
) -> float:
    """The largest fixed-point scale for which a sum of ``n_max`` vectors, each coordinate
    ``|x| <= clip`` (implied by an L2 clip of ``clip``), cannot wrap in signed ``bits``.

    Each coordinate encodes to at most ``clip * scale + 1/2`` after rounding, so the bound
    is ``n_max * (clip * scale + 1/2) <= 2^(bits-1) - 1``. With DP noise of multiplier
    ``noise_multiplier`` added in the integer domain (standard deviation of the sum at most
    ``noise_multiplier * clip * scale``), ``tails`` such deviations are kept free too: a
    wrap then needs a 12-sigma event (probability about 1e-32 per coordinate).
    """
    if not (isinstance(clip, (int, float)) and math.isfinite(clip) and clip > 0):
        raise SecAggError(f"clip must be a finite number > 0, not {clip!r}")
    _check_int(n_max, "n_max", 1)
    _check_bits(bits)
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise SecAggError("noise_multiplier must be finite and >= 0")
    if not (math.isfinite(tails) and tails >= 0):
        raise SecAggError("tails must be finite and >= 0")
    room = (2 ** (bits - 1) - 1) - n_max / 2
    if room <= 0:
        raise SecAggError(f"{bits} bits cannot hold a sum of {n_max} values")
    return room / (clip * (n_max + tails * noise_multiplier))


def encode_fixed(x: np.ndarray, *, scale: float, bits: int) -> np.ndarray:
    """``rint(x * scale) mod 2^bits`` as uint32 (two's complement for negatives).

    Raises SecAggError on a non-finite value or scale, or a value whose encoding does not
    fit in signed ``bits`` (clip first; ``max_scale`` sizes the scale for the sum)."""
    _check_bits(bits)
    if not (math.isfinite(scale) and scale > 0):
        raise SecAggError(f"scale must be finite and > 0, not {scale!r}")
    xf = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(xf)):
        raise SecAggError("cannot encode NaN or infinity")
    q = np.rint(xf * scale)
    half = float(2 ** (bits - 1))
    if q.size and (q.max() >= half or q.min() < -half):
        raise SecAggError(f"a value encodes outside signed {bits} bits (scale {scale:g})")
    return (q.astype(np.int64) & ((1 << bits) - 1)).astype(np.uint32)


def decode_fixed(total: np.ndarray, *, scale: float, bits: int) -> np.ndarray:
    """Read ``total`` (values in ``[0, 2^bits)``) as signed two's complement in ``bits``
    and divide by ``scale``: float64."""
    _check_bits(bits)
    if not (math.isfinite(scale) and scale > 0):
        raise SecAggError(f"scale must be finite and > 0, not {scale!r}")
    v = _check_vec(total, bits, "total").astype(np.int64)
    v = np.where(v >= (1 << (bits - 1)), v - (1 << bits), v)
    return v / scale


def add_mod(x_int: np.ndarray, k: np.ndarray, *, bits: int) -> np.ndarray:
    """``(x_int + k) mod 2^bits`` for an encoded vector and signed int64 values ``k`` (an
    agent's integer noise share, ``dp.discrete_share``), as uint32."""
    _check_bits(bits)
    x = _check_vec(x_int, bits, "x_int")
    k = np.asarray(k)
    if k.dtype.kind not in "iu" or k.shape != x.shape:
        raise SecAggError("k must be an integer array of the same shape as x_int")
    low = (k.astype(np.int64) & ((1 << bits) - 1)).astype(np.uint32)  # k mod 2^bits
    return _reduce(x + low, bits)


# --------------------------------------------------------------------------- mask, unmask


def _check_vec(v: object, bits: int, what: str) -> np.ndarray:
    if not isinstance(v, np.ndarray) or v.dtype != np.uint32 or v.ndim != 1:
        raise SecAggError(f"{what} must be a 1-D uint32 array")
    if bits < 32 and v.size and int(v.max()) >= 1 << bits:
        raise SecAggError(f"{what} has a value outside [0, 2^{bits})")
    return v


def mask(
    x_int: np.ndarray,
    *,
    node: str,
    neighbours: Sequence[str],
    pair_seeds: Mapping[str, bytes],
    self_seed: bytes,
    bits: int,
) -> np.ndarray:
    """``node``'s masked upload: ``x + PRG(b) + sum_j (+PRG(s_j) if node < j else -PRG(s_j))
    mod 2^bits``. ``pair_seeds[j]`` is the edge's ``PairKeys.mask_seed``. Raises
    SecAggError on a bad vector or seed, ``node`` among its neighbours, or missing seeds."""
    _check_bits(bits)
    x = _check_vec(x_int, bits, "x_int")
    _id(node, "node")
    nbrs = _ids(neighbours, "neighbour")
    if node in nbrs:
        raise SecAggError(f"{node} is listed among its own neighbours")
    missing = sorted(j for j in set(nbrs) if j not in pair_seeds)
    if missing:
        raise SecAggError(f"{node} has no pair seed for {', '.join(missing)}")
    y = x + prg(self_seed, x.size, bits)
    for j in sorted(set(nbrs)):
        if node < j:
            y += prg(pair_seeds[j], x.size, bits)
        else:
            y -= prg(pair_seeds[j], x.size, bits)
    return _reduce(y, bits)


def unmask_sum(
    masked: Mapping[str, np.ndarray],
    *,
    graph: Mapping[str, Sequence[str]],
    self_seeds: Mapping[str, bytes],
    revealed_pairs: Mapping[tuple[str, str], bytes],
    bits: int,
) -> np.ndarray:
    """``sum_{j in U} x_j mod 2^bits`` from the masked uploads of ``U = masked.keys()``.

    Subtracts ``PRG(b_j)`` for every ``j`` in ``U`` and the pairwise mask of every graph edge
    ``(i, j)`` with ``i`` in ``U`` and ``j`` not (``revealed_pairs`` keyed by the sorted
    pair). Masks of edges inside ``U`` cancel and are never looked up. Raises SecAggError
    on no uploads, uploads of different lengths, a node of ``U`` missing from the graph or
    an asymmetric edge inside ``U``, or, naming all of them, missing self or pair seeds.
    """
    _check_bits(bits)
    if not masked:
        raise SecAggError("no masked uploads to sum")
    included = set(masked)
    vecs = {i: _check_vec(masked[i], bits, f"upload of {i}") for i in sorted(included)}
    if len({v.size for v in vecs.values()}) != 1:
        raise SecAggError("masked uploads differ in length")
    n = next(iter(vecs.values())).size
    cross: list[tuple[str, str]] = []  # (i in U, j not in U)
    for i in sorted(included):
        if i not in graph:
            raise SecAggError(f"{i} uploaded but is not in the graph")
        for j in graph[i]:
            if j not in included:
                cross.append((i, j))
            elif i not in graph.get(j, ()):
                raise SecAggError(f"the graph has {i}->{j} but not {j}->{i}")
    missing_self = sorted(i for i in included if i not in self_seeds)
    missing_pair = sorted({_edge(i, j) for i, j in cross if _edge(i, j) not in revealed_pairs})
    if missing_self or missing_pair:
        parts = []
        if missing_self:
            parts.append("self seeds of " + ", ".join(missing_self))
        if missing_pair:
            parts.append("pair seeds of " + ", ".join(f"{a}-{b}" for a, b in missing_pair))
        raise SecAggError("cannot unmask: missing " + "; ".join(parts))
    total = np.zeros(n, dtype=np.uint32)
    for i, y in vecs.items():
        total += y
        total -= prg(self_seeds[i], n, bits)
    for i, j in cross:
        # i added +PRG(s_ij) if i < j, else -PRG(s_ij): take back exactly that.
        if i < j:
            total -= prg(revealed_pairs[_edge(i, j)], n, bits)
        else:
            total += prg(revealed_pairs[_edge(i, j)], n, bits)
    return _reduce(total, bits)


def _edge(i: str, j: str) -> tuple[str, str]:
    return (i, j) if i < j else (j, i)


def needed_reveals(
    node: str, graph: Mapping[str, Sequence[str]], included: set[str]
) -> tuple[list[str], list[str]]:
    """What honest ``node`` reveals once the ledger fixed ``included``:
    ``(share_of, pair_with)``, both sorted.

    ``share_of``: the agents whose self-seed share ``node`` reveals, its neighbours in
    ``included`` and itself if included. ``pair_with``: the neighbours for which exactly one
    of ``node`` and ``j`` is included; ``node`` reveals the mask seed of that edge (either
    end may, so an included agent that vanished after uploading is covered by its
    excluded-but-online neighbour, and the other way round). No revealed pair seed ever
    joins two included agents and no share of an excluded agent's seed is ever revealed:
    that is what keeps each included update hidden (see the module invariants).
    """
    if node not in graph:
        raise SecAggError(f"{node} is not in the graph")
    inside = node in included
    nbrs = sorted(set(graph[node]))
    share_of = [j for j in nbrs if j in included] + ([node] if inside else [])
    pair_with = [j for j in nbrs if (j in included) != inside]
    return sorted(share_of), pair_with
