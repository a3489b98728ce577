"""What an agent's privacy mode asks of its upload, kept apart from ``node/secure_rounds.py``
so that an agent of a swarm without privacy imports none of secure aggregation (its
crypto and its numbers cost start-up time and memory on a Pi)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_swarm.swarm import ring_codec

if TYPE_CHECKING:
    from edge_swarm.node.secure_rounds import SecureRounds

log = logging.getLogger("edge_swarm.node.secure_rounds")


class RevealsPending(KeyError):
    """The merge of a round waits for reveals (not a fault: they are on their way)."""


def upload_body(
    secure: SecureRounds | None,
    rnd: int,
    delta: np.ndarray,
    n_samples: int,
    codec: Any,
    feedback: Any,
    rng: np.random.Generator,
) -> tuple[bytes, int, int] | None:
    """(codec body, codec id, codec flags) of an agent's update for round ``rnd``: masked
    ring elements under secure aggregation, the clipped and noised update through the
    genesis codec under DP alone, else the codec with error feedback. None: the agent sits
    the round out (logged)."""
    if secure is None or not secure.policy.active:
        return feedback.compress(delta, codec, rng)[0], codec.codec_id, codec.flags
    if secure.policy.secagg:
        body = secure.masked_body(rnd, delta, n_samples)
        if body is None:
            log.warning(
                "round %d: no place in its secure aggregation (not enrolled with an"
                " encryption key when it opened?); sitting it out",
                rnd,
            )
            return None
        return body, ring_codec.ring_codec(secure.policy.bits), 0
    noised = secure.noised(rnd, delta)
    if noised is None:
        return None
    return feedback.compress(noised, codec, rng)[0], codec.codec_id, codec.flags
