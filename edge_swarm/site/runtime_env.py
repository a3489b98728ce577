"""How an agent's Python runs, on a device (its systemd unit) and on a demo site alike.

``PYTHONOPTIMIZE=2`` (``python -OO``): an agent carries no docstrings, numpy's above all
(its ``add_newdoc`` texts and function docs), which were 2.4 MiB of a 45 MiB budget (issue
20: peak RSS 45.1 -> 42.7 MiB on the standard workload). ``-OO`` also drops ``assert``
statements; the project uses them only for invariants of its own state (type narrowing),
never to check input, and no agent code reads ``__doc__``.

Bytecode for ``-OO`` lives in ``.opt-2.pyc`` files, which neither pip nor Debian writes; an
interpreter that finds none compiles every module it imports at each start (0.5 s and 4 MiB
more here, several seconds on a Pi). ``make`` compiles them beside the others; a device
keeps its own in ``PYTHONPYCACHEPREFIX`` under its state directory (``install.sh`` fills
it once, the service user may refresh it).

Gateways and operator commands run as usual: they are not the constrained side.
"""

from __future__ import annotations

AGENT_ENV: dict[str, str] = {"PYTHONOPTIMIZE": "2"}
"""Environment an agent process (or a process of agents) starts with."""

AGENT_ROLES = frozenset({"agent", "agents"})
