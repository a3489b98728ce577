"""The genesis's privacy against the swarm's own members, as command-line options of
``edge-swarm demo`` and ``edge-swarm admin init`` (swarm/privacy.py, docs/SECURITY.md).

Kept out of ``cli/main.py`` so that ``--help`` imports nothing heavy: the policy (and, for
``--target-epsilon``, Google's dp-accounting) are imported only when a privacy is chosen.
"""

from __future__ import annotations

import argparse
from typing import Any

PRIVACY_MODES = ("none", "secagg", "dp", "secagg+dp")


def add_privacy_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("privacy against fellow members (docs/SECURITY.md)")
    g.add_argument(
        "--privacy",
        choices=PRIVACY_MODES,
        default="none",
        help="secagg: the committee learns only the sum of the updates (secure aggregation, "
        "pairwise masks + Shamir-shared seeds; survives dropouts up to a threshold); dp: "
        "each update clipped and noised so the model carries a differential-privacy "
        "guarantee (epsilon on the ledger every round); secagg+dp: both, each agent adding "
        "its share of the noise so nobody sees an update without it (default: none)",
    )
    g.add_argument(
        "--clip", type=float, default=1.0, help="L2 bound of each agent's update (default 1.0)"
    )
    g.add_argument(
        "--noise-multiplier",
        type=float,
        default=None,
        metavar="Z",
        help="dp: the round's sum carries Gaussian noise of Z x clip (or give --target-epsilon)",
    )
    g.add_argument(
        "--target-epsilon",
        type=float,
        default=None,
        metavar="EPS",
        help="dp: choose Z so that epsilon reaches EPS after --rounds rounds at --dp-delta",
    )
    g.add_argument(
        "--dp-delta", type=float, default=1e-5, help="the delta epsilon is reported at (1e-5)"
    )
    g.add_argument(
        "--epsilon-budget",
        type=float,
        default=None,
        metavar="EPS",
        help="dp: end the campaign before a round would take epsilon past EPS",
    )


def privacy_policy(args: argparse.Namespace, rounds: int | None) -> Any:
    """The PrivacyPolicy the options describe, or None for ``none``. Raises PrivacyError
    (a ValueError) with what to change."""
    if args.privacy == "none":
        return None
    from edge_swarm.swarm.privacy import PrivacyError, PrivacyPolicy

    z = args.noise_multiplier
    dp = "dp" in args.privacy
    if dp and z is None:
        if args.target_epsilon is None:
            raise PrivacyError(
                f"--privacy {args.privacy} needs --noise-multiplier Z or --target-epsilon EPS"
            )
        if rounds is None:
            raise PrivacyError("--target-epsilon needs a round budget (--rounds N)")
        from edge_swarm.swarm.dp import noise_for_epsilon

        z = round(noise_for_epsilon(args.target_epsilon, rounds, args.dp_delta), 4)
    policy = PrivacyPolicy(
        mode=args.privacy,
        clip=args.clip,
        noise_multiplier=z if dp else 0.0,
        delta=args.dp_delta,
        epsilon_budget=args.epsilon_budget,
    )
    if policy.epsilon_budget is not None:
        from edge_swarm.swarm.dp import epsilon

        first = epsilon([policy.noise_multiplier], policy.delta)
        if first > policy.epsilon_budget:
            raise PrivacyError(
                f"--epsilon-budget {policy.epsilon_budget:g} is spent by the first round"
                f" (epsilon {first:.3g} at Z = {policy.noise_multiplier:g}): raise the"
                " budget or the noise multiplier"
            )
    return policy


def describe(policy: Any, rounds: int | None) -> str:
    """One line for the operator: what the chosen privacy is and costs."""
    if policy is None:
        return "privacy: none (every member of a key epoch can open each delta)"
    text = f"privacy: {policy.mode}, updates clipped to L2 norm {policy.clip:g}"
    if policy.dp:
        text += f", noise multiplier {policy.noise_multiplier:g}"
        if rounds:
            from edge_swarm.swarm.dp import epsilon

            eps = epsilon([policy.noise_multiplier] * rounds, policy.delta)
            text += f" (epsilon {eps:.3g} at delta {policy.delta:g} after {rounds} full rounds)"
    return text
