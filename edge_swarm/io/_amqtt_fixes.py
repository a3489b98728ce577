"""A race in amqtt 0.12's broker, worked around from outside.

amqtt iterates its topic-filter table (``Broker._subscriptions``, a dict) in loops that
``await`` inside: publishing retained messages to a client that just connected, dropping a
session's subscriptions, delivering each broadcast. Another client subscribing during one
of those awaits changes the dict's size, and the loop raises ``RuntimeError: dictionary
changed size during iteration``: the connecting client is dropped 5 ms after its CONNACK and
reconnects a second later. With a site's nine processes connecting at once that happened in
about one demo in three (site launch -> round 1 took 2.1 s instead of 1.2 s, issue 20), and
a broadcast loop that raised could lose a delivery.

The fix: the table iterates over a snapshot of its keys or items. Lookups, inserts and
deletes are a dict's own; only iteration copies (a few dozen filters on a site).
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterator, KeysView, ValuesView
from typing import Any


class SnapshotDict(dict):  # type: ignore[type-arg]
    """A dict whose iteration walks a copy, so it may change while a loop awaits."""

    def __iter__(self) -> Iterator[Any]:
        return iter(list(dict.keys(self)))

    def _copy(self) -> dict[Any, Any]:
        return dict(dict.items(self))  # through dict's own view: no method of ours

    def keys(self) -> KeysView[Any]:
        return self._copy().keys()

    def items(self) -> ItemsView[Any, Any]:
        return self._copy().items()

    def values(self) -> ValuesView[Any]:
        return self._copy().values()


def fix_broker(broker: object) -> None:
    """Give an amqtt ``Broker`` a topic-filter table that survives concurrent subscribers.
    Leaves a broker of another shape (a later amqtt) as it is."""
    table = getattr(broker, "_subscriptions", None)
    if type(table) is dict:
        broker._subscriptions = SnapshotDict(table)  # type: ignore[attr-defined]
