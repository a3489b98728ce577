"""What an agent does with its kept delta after a restart (a mixin of ``node/agent.Agent``):
in committee mode it commits again the delta kept on disk for the round still open instead
of training another (``node/own_commit.py``); in any mode its committed, unmerged delta goes
out again (``node/resend.py``)."""

from __future__ import annotations

import time
from typing import Any


class Resuming:
    """See the module header; ``Agent`` provides the attributes."""

    cfg: Any
    machine: Any
    holder: Any
    own_commits: Any
    own_delta: Any
    sender: Any
    topics: Any
    y: Any

    def _submit(self, action: Any) -> None: ...

    def _on_envelope(self, payload: bytes, rnd: int, node: str) -> None: ...

    def _resume_open_commit(self) -> None:
        """Committee mode, after a restart: commit again the delta kept on disk for the round
        still open (node/own_commit.py) instead of training another."""
        again = self.own_commits.recommit(self.machine, self.own_delta.kept(), len(self.y))
        if again is None:
            return
        rnd, frame, commit = again
        self._submit(commit)
        topic = self.topics.delta(rnd, self.cfg.node_id)
        self.sender.publish(topic, frame, qos=1)
        self.own_delta.sent(rnd, topic, frame, time.monotonic())
        self._on_envelope(frame, rnd, self.cfg.node_id)

    def _resume_own_delta(self) -> None:
        """After a restart: our committed, unmerged delta kept on disk goes out again."""
        if self.machine is None or self.holder is None:
            return
        ours = {
            r: c[self.cfg.node_id] for r, c in self.machine.commits.items() if self.cfg.node_id in c
        }
        resumed = self.own_delta.resume(ours, self.holder.round, time.monotonic())
        if resumed is not None:
            self._on_envelope(resumed[1], resumed[0], self.cfg.node_id)
