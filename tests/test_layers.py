"""The package map holds: imports run downward only, the pure core loads without the adapters'
libraries, and the tree stays small enough to read (see docs/INTERNALS.md, "Layers").

The check reads the source with ``ast`` (no import), so it also sees imports inside functions.
``if TYPE_CHECKING:`` blocks are skipped: they never run.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Which layer may import which. A layer may always import itself; the top-level package
# (``edge_swarm/__init__.py``, ``__main__.py``) is outside the table.
LOWER: dict[str, frozenset[str]] = {
    "ledger_lite": frozenset(),
    "trust": frozenset({"ledger_lite"}),
    "learn": frozenset({"ledger_lite"}),
    "swarm": frozenset({"ledger_lite", "trust"}),
    "io": frozenset({"ledger_lite", "trust", "learn", "swarm"}),
    "dashboard": frozenset({"ledger_lite", "trust", "learn", "swarm"}),
    "node": frozenset({"ledger_lite", "trust", "learn", "swarm", "io", "dashboard"}),
    "site": frozenset({"ledger_lite", "trust", "learn", "swarm", "io", "dashboard", "node"}),
    "cli": frozenset({"ledger_lite", "trust", "learn", "swarm", "io", "dashboard", "node", "site"}),
}
TOP_LEVEL_ALLOWED = 6
MAX_LINES = 500
# What the core layers must not import: the network (all three), and threads in ``swarm``,
# whose machines are driven by the wiring. (``learn`` may lock an interpreter it serves.)
NETWORK = frozenset({"socket", "paho", "zeroconf", "amqtt", "pysyncobj", "http", "urllib"})
FORBIDDEN = {
    "swarm": NETWORK | {"threading", "asyncio", "subprocess"},
    "learn": NETWORK,
    "trust": NETWORK | {"threading"},
}


def layer_of(module: str) -> str | None:
    """``edge_swarm.node.agent`` -> ``node``; ``ledger_lite.x`` -> ``ledger_lite``."""
    parts = module.split(".")
    if parts[0] == "ledger_lite":
        return "ledger_lite"
    if parts[0] == "edge_swarm" and len(parts) > 1 and parts[1] in LOWER:
        return parts[1]
    return None


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_block(node: ast.AST) -> bool:
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_modules(source: str, module: str, is_package: bool) -> set[str]:
    """Every module ``source`` imports (absolute names; relative imports resolved)."""
    found: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if _type_checking_block(node):
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.add(name)
            if layer_of(name) is None:  # ``from edge_swarm import node``: the subpackage
                found.update(f"{name}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return found


def violations(root: Path) -> list[str]:
    """Imports from a higher layer, as ``module -> imported (layer -> layer)`` lines."""
    out: list[str] = []
    for path in sorted([*root.glob("edge_swarm/**/*.py"), *root.glob("ledger_lite/**/*.py")]):
        module = module_name(path, root)
        own = layer_of(module)
        if own is None:
            continue
        for name in sorted(imported_modules(path.read_text(), module, path.name == "__init__.py")):
            other = layer_of(name)
            if own == "ledger_lite" and name.split(".")[0] == "edge_swarm":
                other = "edge_swarm"  # any of it
            if other is None or other == own:
                continue
            if other not in LOWER[own]:
                out.append(f"{module} -> {name} ({own} may not import {other})")
    return out


def impure_imports(root: Path) -> list[str]:
    out = []
    for layer, forbidden in FORBIDDEN.items():
        for path in sorted((root / "edge_swarm" / layer).glob("**/*.py")):
            module = module_name(path, root)
            names = imported_modules(path.read_text(), module, path.name == "__init__.py")
            out += [f"{module} -> {n}" for n in sorted(names) if n.split(".")[0] in forbidden]
    return out


def test_no_layer_imports_a_higher_one() -> None:
    assert violations(ROOT) == []


def test_the_core_layers_stay_off_the_network() -> None:
    assert impure_imports(ROOT) == []


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return tmp_path


def test_the_check_catches_a_lower_layer_importing_a_higher_one(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "edge_swarm/__init__.py": "",
            "edge_swarm/swarm/__init__.py": "",
            "edge_swarm/swarm/codec.py": "from edge_swarm.node.agent import Agent\n",
            "edge_swarm/swarm/merge.py": """
                def f():
                    from .. import io  # inside a function, relative: still an import
            """,
            "edge_swarm/swarm/fine.py": """
                from typing import TYPE_CHECKING
                from edge_swarm.trust import payload  # downward: allowed
                if TYPE_CHECKING:
                    from edge_swarm.node.base import NodeRuntime  # never runs: allowed
            """,
            "edge_swarm/node/__init__.py": "",
            "edge_swarm/node/agent.py": "from edge_swarm.cli import main\n",
            "ledger_lite/__init__.py": "",
            "ledger_lite/store.py": "import edge_swarm.swarm.topics\n",
        },
    )
    assert violations(root) == [
        "edge_swarm.node.agent -> edge_swarm.cli (node may not import cli)",
        "edge_swarm.swarm.codec -> edge_swarm.node.agent (swarm may not import node)",
        "edge_swarm.swarm.merge -> edge_swarm.io (swarm may not import io)",
        "ledger_lite.store -> edge_swarm.swarm.topics (ledger_lite may not import edge_swarm)",
    ]


def test_the_check_catches_a_socket_in_the_pure_core(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "edge_swarm/learn/train.py": "import socket\nimport numpy\n",
            "edge_swarm/swarm/merge.py": "import threading\n",
        },
    )
    assert impure_imports(root) == [
        "edge_swarm.swarm.merge -> threading",
        "edge_swarm.learn.train -> socket",
    ]


def test_only_main_imports_the_command_line() -> None:
    importers = []
    for path in sorted(ROOT.glob("edge_swarm/**/*.py")):
        module = module_name(path, ROOT)
        if layer_of(module) == "cli" or module == "edge_swarm.__main__":
            continue
        names = imported_modules(path.read_text(), module, path.name == "__init__.py")
        importers += [module for n in names if layer_of(n) == "cli"]
    assert importers == []


def test_the_tree_stays_readable() -> None:
    top = sorted(p.name for p in (ROOT / "edge_swarm").glob("*.py"))
    assert len(top) <= TOP_LEVEL_ALLOWED, top
    long = {
        str(p.relative_to(ROOT)): n
        for p in [*ROOT.glob("edge_swarm/**/*.py"), *ROOT.glob("ledger_lite/**/*.py")]
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


PURE_IMPORT = """
import importlib.abc, sys

class Refuse(importlib.abc.MetaPathFinder):
    # paho, zeroconf and the brokers are the adapters' libraries: the core must not need them
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"paho", "zeroconf", "amqtt", "pysyncobj", "ifaddr"}:
            raise ImportError(f"{name} is not available in this test")
        return None

sys.meta_path.insert(0, Refuse())
import pkgutil, importlib
import edge_swarm.swarm, edge_swarm.learn, edge_swarm.trust
for pkg in (edge_swarm.swarm, edge_swarm.learn, edge_swarm.trust):
    for info in pkgutil.iter_modules(pkg.__path__, pkg.__name__ + "."):
        importlib.import_module(info.name)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {"paho", "zeroconf", "amqtt"})
print("ok", loaded)
"""


def test_the_pure_core_imports_without_paho_or_zeroconf() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", PURE_IMPORT], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok []"


@pytest.mark.parametrize("adapter", ["edge_swarm.io.mqtt", "edge_swarm.io.discovery"])
def test_the_refusal_is_real(adapter: str) -> None:
    """The same harness does refuse the adapters (else the test above proves nothing)."""
    code = PURE_IMPORT.split("import pkgutil")[0] + f"import {adapter}\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "is not available in this test" in proc.stderr
