"""Export dense layers as an ONNX model, with the ``onnx`` helper API only (no PyTorch).

How it works:
    Each `Dense` layer becomes one ``Gemm`` node (``x @ W + b``, W stored (in, out) as in
    ``learn.model``, so no transpose) followed by ``Relu`` or ``Tanh`` for hidden layers.
    The input is ``float32 [N, n_in]`` and the output ``float32 [N, n_out]`` with a
    symbolic batch dimension ``N``, so one file serves any batch size.

Invariants:
    - Opset 17 and IR version 8: the pair ONNX 1.12 introduced, so ONNX Runtime 1.12 and
      newer (what JetPack and Pi wheels ship) can load the file; newer ``onnx`` packages
      would otherwise stamp an IR version those runtimes refuse.
    - The model passes ``onnx.checker.check_model`` with shape inference before it is
      written; serialization is deterministic, so equal layers give an equal sha256.
    - ``onnx`` is imported inside the functions, never at module import.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from edge_swarm.learn.runtimes import Dense, check_layers, write_atomic

__all__ = ["IR_VERSION", "OPSET", "onnx_bytes", "write_onnx"]

OPSET = 17
IR_VERSION = 8  # the IR version that goes with opset 17 (ONNX 1.12)
_ACTIVATION_OPS = {"relu": "Relu", "tanh": "Tanh"}


def onnx_bytes(
    layers: Sequence[Dense], input_name: str = "x", output_name: str = "logits"
) -> bytes:
    """The serialized ONNX model for ``layers`` (see the module header).

    Raises ValueError on a bad layer list or names (empty, equal to each other, or holding
    a ``/``, which the internal ``denseK/...`` names use).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    layers = check_layers(layers)
    _check_names(input_name, output_name)
    nodes, initializers = [], []
    current = input_name
    for i, layer in enumerate(layers, start=1):
        last = i == len(layers)
        w, b = f"dense{i}/weight", f"dense{i}/bias"
        initializers += [
            numpy_helper.from_array(layer.weight, w),
            numpy_helper.from_array(layer.bias, b),
        ]
        gemm_out = output_name if last and layer.activation is None else f"dense{i}/linear"
        nodes.append(helper.make_node("Gemm", [current, w, b], [gemm_out], name=f"dense{i}/gemm"))
        current = gemm_out
        if layer.activation is not None:
            act_out = output_name if last else f"dense{i}/{layer.activation}"
            op = _ACTIVATION_OPS[layer.activation]
            nodes.append(helper.make_node(op, [current], [act_out], name=f"dense{i}/{op.lower()}"))
            current = act_out
    graph = helper.make_graph(
        nodes,
        "edge_swarm_dense",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", layers[0].n_in])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["N", layers[-1].n_out])],
        initializer=initializers,
    )
    model = helper.make_model(
        graph,
        producer_name="edge-swarm",
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
    )
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString(deterministic=True)


def write_onnx(
    layers: Sequence[Dense],
    path: str | os.PathLike[str],
    input_name: str = "x",
    output_name: str = "logits",
) -> str:
    """Write ``layers`` as an ONNX model to ``path`` atomically; returns the file's sha256 hex."""
    return write_atomic(path, onnx_bytes(layers, input_name, output_name))


def _check_names(input_name: str, output_name: str) -> None:
    for name in (input_name, output_name):
        if not isinstance(name, str) or not name or "/" in name:  # internal names hold a "/"
            raise ValueError(f"tensor names must be non-empty and hold no '/', got {name!r}")
    if input_name == output_name:
        raise ValueError(f"input and output need different names, both are {input_name!r}")
