"""Which TFLite interpreter and onnxruntime a device gets, by Python version and machine.

The markers in pyproject's ``serve`` extra are evaluated here for the targets we ship to
(Raspberry Pi OS 64-bit, Jetson, x86 gateways; Python 3.10-3.12); the command that checks
the wheels really exist on the registry is in pyproject next to them (and in the README).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def extra(name: str) -> list[Requirement]:
    data = tomllib.loads(PYPROJECT.read_text())
    return [Requirement(r) for r in data["project"]["optional-dependencies"][name]]


def picked(name: str, python: str, machine: str) -> set[str]:
    env = {**default_environment(), "python_version": python, "platform_machine": machine}
    return {r.name for r in extra(name) if r.marker is None or r.marker.evaluate(env)}


@pytest.mark.parametrize("python", ["3.10", "3.11", "3.12"])
@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_every_target_gets_a_tflite_interpreter_and_onnxruntime(python: str, machine: str) -> None:
    assert picked("serve", python, machine) == {"ai-edge-litert", "onnxruntime"}
    assert picked("tflite", python, machine) == {"ai-edge-litert"}  # a Jetson's extra


def test_no_target_gets_tflite_runtime_which_needs_numpy_1() -> None:
    for name in ("serve", "tflite", "export"):
        assert all(r.name != "tflite-runtime" for r in extra(name))


def test_a_32_bit_pi_gets_no_runtime_wheel_it_cannot_install() -> None:
    # No runtime publishes armv7l wheels for these Pythons: the device runs the numpy engine.
    assert picked("serve", "3.11", "armv7l") == set()
