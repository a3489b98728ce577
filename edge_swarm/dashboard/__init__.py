"""The gateway's read-only dashboard: data source, views, HTML page, HTTP server.

``source`` folds the ledger and device statuses into bounded views (``views``), ``page``
renders them, ``server`` serves them on the LAN. This module is the public surface.
"""

from edge_swarm.dashboard.page import (
    BAR_H,
    BAR_W,
    CHART_H,
    CHART_PAD,
    CHART_W,
    DASH,
    REFRESH_S,
    chart_series,
    render_page,
)
from edge_swarm.dashboard.server import (
    MAX_BODY,
    MAX_CLIENTS,
    REQUEST_TIMEOUT_S,
    DashboardServer,
    Response,
)
from edge_swarm.dashboard.source import (
    MAX_DEVICES,
    MAX_ROUNDS,
    DashboardSource,
    DevicesFn,
    EntriesFn,
)
from edge_swarm.dashboard.views import (
    DEVICE_STATES,
    HASH_CHARS,
    ID_CHARS,
    SUMMARY_CHARS,
    TAIL,
    Contribution,
    DeviceRow,
    LedgerLine,
    RoundView,
    summarize,
    weighted_accuracy,
)

__all__ = [
    "BAR_H",
    "BAR_W",
    "CHART_H",
    "CHART_PAD",
    "CHART_W",
    "DASH",
    "DEVICE_STATES",
    "HASH_CHARS",
    "ID_CHARS",
    "MAX_BODY",
    "MAX_CLIENTS",
    "MAX_DEVICES",
    "MAX_ROUNDS",
    "REFRESH_S",
    "REQUEST_TIMEOUT_S",
    "SUMMARY_CHARS",
    "TAIL",
    "Contribution",
    "DashboardServer",
    "DashboardSource",
    "DeviceRow",
    "DevicesFn",
    "EntriesFn",
    "LedgerLine",
    "Response",
    "RoundView",
    "chart_series",
    "render_page",
    "summarize",
    "weighted_accuracy",
]
