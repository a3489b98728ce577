"""A node's part in secure aggregation (``swarm/secagg.py``), between the wire and the merge.

How it works
------------
At each ``round_open`` every node draws the round's neighbour graph over the agents that are
enrolled, active and hold an encryption key as of that entry (so every node draws the same
graph from its copy of the ledger) and keeps it by round.

As an agent (``masked_body``): it clips its update, weighs it, turns it into integers modulo
``2**bits`` (adding its share of discrete Gaussian noise under DP), adds a mask agreed with
each neighbour (X25519 of their enrolled keys) and a self mask, and deals its self-mask seed
in Shamir shares to its neighbours, each sealed under a key only the two of them hold
(``round/{r}/share/{neighbour}``). The self seed is an HMAC of its private key and the round,
so a restart deals and masks with the same seed. Once ``round_close`` names who is in, it
``reveal``s, signed, what the committee needs and nothing more: its shares of the included
neighbours' self seeds, and the pair seed of each neighbour on the other side of the
in/out line (never both for one neighbour: ``secagg.needed_reveals``).

As a committee member (``unmask``): it keeps the signed reveals of the round; once every
included agent's self seed can be rebuilt from ``threshold`` shares and every pair seed that
did not cancel is revealed, it removes the masks and returns the exact integer sum; until
then it raises ``KeyError`` (the merge waits, like one for a missing envelope) and
``stuck`` says why for the ledger when the round is abandoned.

A light agent's ``round_close`` is compact (its ``included`` is a digest), so the
coordinator adds ``included_bits``: one bit per agent of the graph, in graph order.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_swarm.node.private_upload import RevealsPending
from edge_swarm.swarm import dp, ring_codec, secagg
from edge_swarm.swarm.privacy import PrivacyPolicy
from edge_swarm.swarm.topics import Topics
from ledger_lite import LedgerState, verify

log = logging.getLogger(__name__)

__all__ = ["RevealsPending", "SecureRounds", "graph_agents", "included_bits", "parse_bits"]

SIG_LEN = 64  # Ed25519, appended to every reveal
MAX_REVEAL_BYTES = 64 * 1024
KEEP_ROUNDS = 4  # rounds of graphs, shares and reveals held (older ones are final)
EARLY_SHARES = 256  # shares held for a round not opened here yet (a neighbour was quicker)
REVEAL_AGAIN_S = 5.0  # a round closed and not final this long after our reveal: send it again
TRACE_ENV = "EDGE_SWARM_SECAGG_TRACE"  # tests only: a directory for integer vectors


@dataclass
class _Round:
    graph: dict[str, tuple[str, ...]]
    order: tuple[str, ...]  # the graph's agents, sorted: the order of included_bits
    round_hash: str
    threshold: int
    pubs: dict[str, str]  # agent -> X25519 public hex (as of round_open)
    pair: dict[str, secagg.PairKeys] = field(default_factory=dict)  # ours, by neighbour
    held: dict[str, bytes] = field(default_factory=dict)  # sender -> our share of its seed
    reveals: dict[str, secagg.Reveal] = field(default_factory=dict)  # member: signed, checked
    revealed: bool = False
    seeds: dict[str, bytes] = field(default_factory=dict)  # member: self seeds rebuilt


def graph_agents(state: LedgerState, at_ms: int, keyed: bool = True) -> dict[str, str]:
    """Agents enrolled, unrevoked and unexpired at ``at_ms`` (node -> X25519 public hex, ""
    without one); with ``keyed``, only those that hold an encryption key."""
    return {
        node: m.enc_pubkey or ""
        for node, m in sorted(state.members.items())
        if m.role == "agent" and m.active_at(at_ms) and (m.enc_pubkey or not keyed)
    }


def included_bits(order: tuple[str, ...], included: set[str]) -> str:
    """``included`` as a bitmap over ``order`` (bit i of byte i // 8, low bit first), hex."""
    out = bytearray((len(order) + 7) // 8)
    for i, node in enumerate(order):
        if node in included:
            out[i // 8] |= 1 << (i % 8)
    return out.hex()


def parse_bits(order: tuple[str, ...], bits: Any) -> set[str] | None:
    """The inverse of ``included_bits``; None for a value that is not one."""
    try:
        raw = bytes.fromhex(bits) if isinstance(bits, str) else None
    except ValueError:
        return None
    if raw is None or len(raw) != (len(order) + 7) // 8:
        return None
    return {n for i, n in enumerate(order) if raw[i // 8] >> (i % 8) & 1}


class SecureRounds:
    """Secure aggregation for one node; see the module header."""

    def __init__(
        self,
        node: str,
        swarm: str,
        policy: PrivacyPolicy,
        enc_private: bytes | None,
        sign: Callable[[bytes], bytes],
        publish: Callable[[str, bytes], None],
    ) -> None:
        self.node, self.swarm, self.policy = node, swarm, policy
        self._enc = enc_private
        self._sign, self._publish = sign, publish
        self.topics = Topics(swarm)
        self.rounds: dict[int, _Round] = {}
        self.expected: dict[int, int] = {}  # agents whose noise a round's sum should carry
        self._early: list[tuple[int, bytes]] = []  # shares for rounds not open here yet
        # Our last reveal (round, topic, frame, monotonic time sent): a gateway restarted
        # after it came loses it with its memory, so it goes again until the round is final.
        # The same bytes each time: what the ledger's round_close fixed, nothing more.
        self.last_reveal: tuple[int, str, bytes, float] | None = None
        self.trace = Path(os.environ[TRACE_ENV]) if os.environ.get(TRACE_ENV) else None

    # -- every node
    def candidates(self, state: LedgerState, at_ms: int) -> dict[str, str]:
        """Who may take part in a round opened at ``at_ms``: agents with an encryption key
        under secure aggregation (node -> its X25519 hex), every active agent under DP."""
        return graph_agents(state, at_ms, keyed=self.policy.secagg)

    def open_round(
        self, rnd: int, round_hash: str, state: LedgerState, at_ms: int, bits: Any = None
    ) -> None:
        """Draw round ``rnd``'s graph from its ``round_open``: its hash, the ledger state and
        ts, and ``agents_bits`` (the candidates the coordinator saw online; None: all). A
        second open of a round (two leaders a moment apart) changes nothing: the first
        counts, for the coordinator too, and the masks and shares of the round are its."""
        if rnd in self.expected or rnd <= max(self.expected, default=0) - KEEP_ROUNDS:
            return
        for old in [r for r in self.expected if r <= rnd - KEEP_ROUNDS]:
            del self.expected[old]
        pubs = self.candidates(state, at_ms)
        online = parse_bits(tuple(pubs), bits) if bits is not None else set(pubs)
        if online is None:
            log.warning("round %d: round_open's agents_bits do not fit its roster", rnd)
            online = set(pubs)
        pubs = {n: k for n, k in pubs.items() if n in online}
        self.expected[rnd] = len(pubs)  # the agents whose noise the round's sum should carry
        if not self.policy.secagg:
            return
        early, self._early = [e for e in self._early if e[0] == rnd], []
        n = len(pubs)
        degree = min(self.policy.degree or secagg.default_degree(n), max(n - 1, 1))
        threshold = self.policy.threshold or secagg.default_threshold(degree)
        graph = secagg.neighbours(round_hash, pubs, degree) if n >= 2 else {}
        order = tuple(sorted(graph))
        self.rounds[rnd] = _Round(graph, order, round_hash, min(threshold, degree + 1), pubs)
        for old in [r for r in self.rounds if r <= rnd - KEEP_ROUNDS]:
            del self.rounds[old]
        for _, payload in early:  # a neighbour that saw the round open before we did
            why = self.offer_share(rnd, payload)
            if why:
                log.warning("round %d: dropped an early seed share: %s", rnd, why)

    def open_bits(self, state: LedgerState, at_ms: int, online: set[str]) -> str:
        """``agents_bits`` for the coordinator's round_open: the candidates online."""
        return included_bits(tuple(self.candidates(state, at_ms)), online)

    def close_bits(self, rnd: int, included: list[str]) -> str | None:
        """``included_bits`` for the coordinator's round_close (None: no graph here)."""
        r = self.rounds.get(rnd)
        return None if r is None else included_bits(r.order, set(included))

    # -- as an agent
    def noised(self, rnd: int, delta: np.ndarray) -> np.ndarray | None:
        """DP without secure aggregation: our update clipped, plus our share of the round's
        Gaussian noise (float32, for the genesis codec); None before the round opened."""
        expected = self.expected.get(rnd)
        if expected is None:
            return None
        pol = self.policy
        clipped, _ = dp.clip(np.asarray(delta, dtype=np.float64), pol.clip)
        noise = dp.gaussian_share(
            clipped.shape,
            noise_multiplier=pol.noise_multiplier,
            clip=pol.clip,
            n_agents=max(expected, 1),
            rng=dp.new_rng(),
        )
        return (clipped + noise).astype(np.float32)

    def _pair(self, r: _Round, rnd: int, peer: str) -> secagg.PairKeys:
        if peer not in r.pair:
            assert self._enc is not None
            r.pair[peer] = secagg.pair_keys(
                self._enc,
                bytes.fromhex(r.pubs[peer]),
                swarm=self.swarm,
                round_no=rnd,
                round_hash=r.round_hash,
                a=self.node,
                b=peer,
            )
        return r.pair[peer]

    def _self_seed(self, rnd: int, r: _Round) -> bytes:
        assert self._enc is not None
        msg = f"edge-swarm/secagg/self/v1\0{self.swarm}\0{rnd}\0{r.round_hash}".encode()
        return hmac.new(self._enc, msg, hashlib.sha256).digest()[:16]

    def _aad(self, rnd: int, sender: str, recipient: str) -> bytes:
        return f"edge-swarm/secagg/share/v1\0{self.swarm}\0{rnd}\0{sender}\0{recipient}".encode()

    def masked_body(self, rnd: int, delta: np.ndarray, n_samples: int) -> bytes | None:
        """Our masked update for round ``rnd`` as ring elements (u32, little-endian), with
        our seed's shares sent to our neighbours; None if the round has no place for us."""
        r = self.rounds.get(rnd)
        if r is None or self.node not in r.graph or self._enc is None:
            return None
        pol = self.policy
        clipped, _ = dp.clip(np.asarray(delta, dtype=np.float64), pol.clip)
        assert pol.scale is not None
        x = secagg.encode_fixed(clipped * pol.weight(n_samples), scale=pol.scale, bits=pol.bits)
        if pol.dp:  # our share of the round's noise, in the ring: nobody sees x without it
            noise = dp.discrete_share(
                x.shape,
                noise_multiplier=pol.noise_multiplier,
                clip=pol.clip,
                scale=pol.scale,
                n_agents=len(r.order),
                rng=dp.new_rng(),
            )
            x = ((x.astype(np.int64) + noise) % (1 << pol.bits)).astype(np.uint32)
        if self.trace is not None:  # tests: the plain integers, to check the sum exactly
            np.save(self.trace / f"x-{rnd}-{self.node}.npy", x)
        mates = r.graph[self.node]
        seeds = {j: self._pair(r, rnd, j).mask_seed for j in mates}
        own = self._self_seed(rnd, r)
        y = secagg.mask(
            x, node=self.node, neighbours=mates, pair_seeds=seeds, self_seed=own, bits=pol.bits
        )
        shares = secagg.split_seed(own, sorted((*mates, self.node)), r.threshold)
        r.held[self.node] = shares[self.node]
        for j in mates:
            blob = secagg.seal_share(
                shares[j], self._pair(r, rnd, j).share_key, aad=self._aad(rnd, self.node, j)
            )
            bundle = secagg.ShareBundle(self.swarm, rnd, self.node, j, blob)
            self._publish(self.topics.share(rnd, j), bundle.to_bytes())
        return ring_codec.pack(y, ring_codec.ring_codec(pol.bits))

    def offer_share(self, rnd: int, payload: bytes) -> str | None:
        """Keep a neighbour's share of its seed (sealed for us); the reason if dropped."""
        r = self.rounds.get(rnd)
        if r is None:
            newest = max(self.expected, default=0)  # a share for a round far ahead is noise
            if newest < rnd <= newest + 2 and len(self._early) < EARLY_SHARES:
                self._early.append((rnd, payload))  # checked once the round opens here
                return None
            return f"share for round {rnd}, which is not open here"
        try:
            b = secagg.ShareBundle.from_bytes(payload)
            if (b.swarm, b.round_no, b.recipient) != (self.swarm, rnd, self.node):
                return "a share addressed elsewhere"
            if b.sender not in r.graph.get(self.node, ()):
                return f"a share from {b.sender}, not our neighbour in round {rnd}"
            key = self._pair(r, rnd, b.sender).share_key
            r.held[b.sender] = secagg.open_share(
                b.blob, key, aad=self._aad(rnd, b.sender, self.node)
            )
        except secagg.SecAggError as exc:
            return str(exc)
        return None

    def reveal(self, rnd: int, close: Mapping[str, Any]) -> bool:
        """Send, once, what round ``rnd``'s ``round_close`` payload asks of us; False if we
        have nothing to say (not in the graph, a close we cannot read)."""
        r = self.rounds.get(rnd)
        if r is None or r.revealed or self.node not in r.graph:
            return False
        included = _included(r, close)
        if included is None:
            log.warning("round %d: round_close without a readable included set", rnd)
            return False
        share_for, pair_for = secagg.needed_reveals(self.node, r.graph, included)
        shares = {j: r.held[j] for j in share_for if j in r.held}
        pairs = {j: self._pair(r, rnd, j).mask_seed for j in pair_for}
        body = secagg.Reveal(self.swarm, rnd, self.node, shares, pairs).to_bytes()
        frame, topic = body + self._sign(body), self.topics.reveal(rnd, self.node)
        self._publish(topic, frame)
        self.last_reveal = (rnd, topic, frame, time.monotonic())
        r.revealed = True
        return True

    def reveal_again(self, final_round: int, now: float) -> bool:
        """Send our last reveal again if its round is still not final ``REVEAL_AGAIN_S``
        after it went (members keep the first copy, so a duplicate changes nothing)."""
        last = self.last_reveal
        if last is None or last[0] <= final_round:
            self.last_reveal = None
            return False
        if now - last[3] < REVEAL_AGAIN_S:
            return False
        self._publish(last[1], last[2])
        self.last_reveal = (*last[:3], now)
        return True

    # -- as a committee member
    def offer_reveal(
        self, rnd: int, node: str, payload: bytes, public_key: Callable[[str], str | None]
    ) -> str | None:
        """Keep ``node``'s signed reveal for round ``rnd``; the reason if dropped."""
        r = self.rounds.get(rnd)
        if r is None or node not in r.graph:
            return f"a reveal of {node} for round {rnd}, outside its graph"
        if len(payload) > MAX_REVEAL_BYTES or len(payload) <= SIG_LEN:
            return f"a reveal of {len(payload)} bytes"
        body, sig = payload[:-SIG_LEN], payload[-SIG_LEN:]
        key = public_key(node)
        if key is None or not verify(key, body, sig):
            return f"a reveal of {node} whose signature does not verify"
        try:
            rv = secagg.Reveal.from_bytes(body)
        except secagg.SecAggError as exc:
            return str(exc)
        if (rv.swarm, rv.round_no, rv.node) != (self.swarm, rnd, node):
            return "a reveal for another swarm, round or node"
        r.reveals.setdefault(node, rv)  # the first one counts: an honest agent sends one
        return None

    def unmask(self, rnd: int, masked: Mapping[str, np.ndarray]) -> np.ndarray:
        """The exact sum of the included agents' integer updates (``masked``: node -> ring
        elements). Raises KeyError while the reveals do not suffice (``stuck`` says why)."""
        r = self.rounds.get(rnd)
        if r is None:
            raise KeyError(f"round {rnd}: no neighbour graph here")
        why, seeds, pairs = self._gather(r, set(masked))
        if why:
            raise RevealsPending(f"round {rnd}: secure aggregation waits: {why}")
        total = secagg.unmask_sum(
            masked, graph=r.graph, self_seeds=seeds, revealed_pairs=pairs, bits=self.policy.bits
        )
        if self.trace is not None:  # tests: what this member saw, and what it unmasked
            for node, seen in masked.items():
                np.save(self.trace / f"view-{rnd}-{node}.npy", seen)
            np.save(self.trace / f"sum-{rnd}-{self.node}.npy", total)
        return total

    def stuck(self, rnd: int, included: set[str]) -> str:
        """Why round ``rnd`` cannot be unmasked (empty if it can)."""
        r = self.rounds.get(rnd)
        return "no neighbour graph" if r is None else self._gather(r, included)[0]

    def _gather(
        self, r: _Round, included: set[str]
    ) -> tuple[str, dict[str, bytes], dict[tuple[str, str], bytes]]:
        # Counted first, combined only once all suffice (every reveal that arrives retries
        # the merge: combining 100 seeds each time was a round's worth of CPU), and a seed
        # once rebuilt is kept for the round.
        shares: dict[str, list[bytes]] = {}
        short: list[str] = []
        for j in sorted(included - set(r.seeds)):
            holders = (*r.graph.get(j, ()), j)
            got = [rv.shares[j] for h in holders if (rv := r.reveals.get(h)) and j in rv.shares]
            if len(got) < r.threshold:
                short.append(f"{j} ({len(got)} of {r.threshold} shares)")
            shares[j] = got[: r.threshold + 1]  # one more than needed: a check, not a cost
        pairs: dict[tuple[str, str], bytes] = {}
        lost: list[str] = []
        for i in sorted(included):
            for j in r.graph.get(i, ()):
                if j in included:
                    continue
                a, b = r.reveals.get(i), r.reveals.get(j)
                seed = (a.pairs.get(j) if a else None) or (b.pairs.get(i) if b else None)
                if seed is None:
                    lost.append(f"{i}-{j}")
                else:
                    pairs[(min(i, j), max(i, j))] = seed
        if not short and not lost:
            for j, got in shares.items():
                try:
                    r.seeds[j] = secagg.combine_seed(got, r.threshold)
                except secagg.SecAggError as exc:  # shares that do not agree: a liar
                    short.append(f"{j} ({exc})")
        parts = []
        if short:
            parts.append(f"{len(short)} self-mask seed(s) short of shares: {', '.join(short)}")
        if lost:
            parts.append(f"{len(lost)} pair seed(s) unrevealed: {', '.join(lost[:8])}")
        seeds = {j: r.seeds[j] for j in included if j in r.seeds}
        return "; ".join(parts), seeds, pairs


def _included(r: _Round, close: Mapping[str, Any]) -> set[str] | None:
    included = close.get("included")
    if isinstance(included, list):
        return {n for n in included if isinstance(n, str)}
    return parse_bits(r.order, close.get("included_bits"))
