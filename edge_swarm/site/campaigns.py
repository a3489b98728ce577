"""The operator's side of campaigns: admin-signed ``campaign`` entries and the status.

``campaign_tx`` signs an entry (checked against the schema here, so a typo is an error on
the laptop, not a refusal from the site); ``site.operator.publish_tx`` submits it over MQTT
and waits until the ledger shows it, or for the coordinator's reason to refuse it (an entry
that would change nothing: resume a running campaign, extend an ended one). ``read_ledger``
copies the chain from a gateway over MQTT and checks it from its genesis (links, authors,
signatures: a gateway's reply is untrusted); ``campaign_of`` folds it with the same code
the coordinator runs (``swarm/campaign.py``), so ``status`` shows what the gateways know.
"""

from __future__ import annotations

import logging
import queue
import secrets
import time
from typing import Any

from edge_swarm.io.mqtt import Message, MqttClient
from edge_swarm.site.operator import OperatorError
from edge_swarm.swarm.campaign import CampaignBook, CampaignSettings
from edge_swarm.swarm.messages import MessageError, Query, Reply
from edge_swarm.swarm.topics import Topics
from ledger_lite import Entry, LedgerState, SigningKey, Tx, make_tx
from ledger_lite.errors import LedgerError
from ledger_lite.schema import CAMPAIGN_OPS, payload_problem

log = logging.getLogger(__name__)

PAGE_TIMEOUT_S = 10.0  # how long one page of the ledger may take to come back


def campaign_tx(
    admin: SigningKey,
    swarm: str,
    op: str,
    rounds: int | None = None,
    reason: str = "",
    admin_id: str = "admin",
) -> Tx:
    """An admin-signed ``campaign`` entry; OperatorError says what is wrong with it."""
    if op not in CAMPAIGN_OPS:
        raise OperatorError(f"a campaign op is one of {', '.join(CAMPAIGN_OPS)}, not {op!r}")
    payload: dict[str, Any] = {"op": op}
    if rounds is not None:
        payload["rounds"] = rounds
    if reason:
        payload["reason"] = reason
    problem = payload_problem("campaign", payload)
    if problem is not None:
        raise OperatorError(problem.replace("campaign.rounds", "--rounds"))
    return make_tx(admin, swarm, "campaign", admin_id, payload)


def read_ledger(
    swarm: str,
    host: str,
    port: int,
    mqtt_options: dict[str, Any] | None = None,
    timeout: float = PAGE_TIMEOUT_S,
) -> list[Entry]:
    """The swarm's chain as a gateway holds it (compact entries, as agents get them),
    verified from its genesis. OperatorError if no gateway answers or the chain is bad."""
    topics = Topics(swarm)
    client_id = f"operator-{secrets.token_hex(4)}"
    inbox: queue.Queue[Message] = queue.Queue()
    client = MqttClient(
        f"{swarm}.{client_id}", host, port, on_message=inbox.put, **(mqtt_options or {})
    )
    client.start()
    entries: list[Entry] = []
    try:
        if not client.wait_connected(timeout):
            raise OperatorError(f"cannot reach the broker at {host}:{port}")
        client.subscribe(topics.ledger_reply(client_id), qos=1)
        while True:
            req = secrets.token_hex(8)
            q = Query(client_id, req, start=len(entries))
            client.publish(topics.ledger_query(), q.encode(), qos=1)
            reply = _reply(inbox, topics.ledger_reply(client_id), req, timeout)
            try:
                page = [Entry.from_dict(raw) for raw in reply.entries]
            except LedgerError as exc:
                raise OperatorError(f"a gateway sent a malformed entry: {exc}") from None
            entries += page
            if not page or len(entries) > reply.tip_height:
                break
    finally:
        client.stop()
    _verify(entries)
    return entries


def _reply(inbox: queue.Queue[Message], topic: str, req: str, timeout: float) -> Reply:
    """The reply to query ``req`` (others, and garbage, are skipped); OperatorError on a
    timeout."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            msg = inbox.get(timeout=left)
        except queue.Empty:
            break
        if msg.topic != topic:
            continue
        try:
            got = Reply.decode(msg.payload)
        except MessageError as exc:
            log.warning("a malformed ledger reply: %s", exc)
            continue
        if got.req == req:
            return got
    raise OperatorError(f"no gateway answered a ledger query within {timeout:g} s: is one running?")


def _verify(entries: list[Entry]) -> None:
    """Check the chain from its genesis as an agent's copy does (compact entries taken)."""
    if not entries:
        raise OperatorError("the gateway's ledger is empty")
    try:
        state = LedgerState.from_genesis(entries[0])
        state.light = True  # the gateway sends committee entries in their compact form
        for entry in entries[1:]:
            state.apply(entry)
    except LedgerError as exc:
        raise OperatorError(f"the gateway's ledger does not verify: {exc}") from None


def campaign_of(entries: list[Entry]) -> CampaignBook:
    """The campaign state the chain folds to (the first entry is its genesis)."""
    params = entries[0].payload["params"]
    try:
        book = CampaignBook(CampaignSettings.from_params(params))
    except ValueError as exc:
        raise OperatorError(f"the genesis's campaign settings are unusable: {exc}") from None
    for e in entries[1:]:
        book.fold(e.kind, e.author, e.payload)
    return book
