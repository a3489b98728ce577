"""Export dense layers as a .tflite flatbuffer, built by hand (no TensorFlow converter).

How it works:
    The file is one ``Model`` (schema version 3, identifier ``TFL3``) with one subgraph.
    Each `Dense` layer is a ``FULLY_CONNECTED`` operator with inputs (x, weight, bias);
    its weight is stored (out, in) as that operator wants, i.e. our (in, out) transposed.
    ReLU is fused into the operator (``fused_activation_function = RELU``); tanh is a
    separate ``TANH`` operator, because FULLY_CONNECTED only fuses clamps (NONE, RELU,
    RELU_N1_TO_1, RELU6): the interpreter refuses a fused TANH when it prepares the graph.

    Activation tensors have shape ``[1, n]`` and shape_signature ``[-1, n]``, so the
    interpreter's ``resize_tensor_input`` accepts any batch size. Everything is float32.
    Tables are written with the generated builder functions of the ``tflite`` package
    (the TensorFlow Lite schema compiled for Python) on a ``flatbuffers.Builder``.

Invariants:
    - Buffer 0 is the empty sentinel the schema requires; tensors without data use it.
    - Constant data is 16-byte aligned in the file, as the TFLite converter writes it, so
      the interpreter can use it in place with aligned SIMD loads.
    - Equal layers give equal bytes (the builder is deterministic), so an equal sha256.
    - ``flatbuffers`` and ``tflite`` are imported inside the functions only.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from edge_swarm.learn.runtimes import Dense, check_layers, write_atomic

__all__ = ["SCHEMA_VERSION", "tflite_bytes", "write_tflite"]

SCHEMA_VERSION = 3
_FILE_IDENTIFIER = b"TFL3"
_DATA_ALIGNMENT = 16


def tflite_bytes(layers: Sequence[Dense]) -> bytes:
    """The serialized .tflite model for ``layers`` (see the module header).

    Raises ValueError on a bad layer list.
    """
    import flatbuffers
    import tflite

    layers = check_layers(layers)
    plan = _Plan(layers)
    b = flatbuffers.Builder(1024 + 4 * sum(d.weight.size + d.bias.size for d in layers))
    # Flatbuffers are built back to front: children (vectors, strings, tables) first.
    buffers = [_buffer(b, tflite, data) for data in plan.buffers]
    tensors = [_tensor(b, tflite, *t) for t in plan.tensors]
    codes = [_operator_code(b, tflite, code) for code in plan.opcodes]
    operators = [_operator(b, tflite, *op) for op in plan.operators]

    name = b.CreateString("main")
    inputs = _int32_vector(b, [0])
    outputs = _int32_vector(b, [plan.output])
    tensor_vec = _table_vector(b, tensors)
    operator_vec = _table_vector(b, operators)
    tflite.SubGraphStart(b)
    tflite.SubGraphAddTensors(b, tensor_vec)
    tflite.SubGraphAddInputs(b, inputs)
    tflite.SubGraphAddOutputs(b, outputs)
    tflite.SubGraphAddOperators(b, operator_vec)
    tflite.SubGraphAddName(b, name)
    subgraph = tflite.SubGraphEnd(b)

    description = b.CreateString("edge-swarm dense export")
    code_vec = _table_vector(b, codes)
    subgraph_vec = _table_vector(b, [subgraph])
    buffer_vec = _table_vector(b, buffers)
    tflite.ModelStart(b)
    tflite.ModelAddVersion(b, SCHEMA_VERSION)
    tflite.ModelAddOperatorCodes(b, code_vec)
    tflite.ModelAddSubgraphs(b, subgraph_vec)
    tflite.ModelAddDescription(b, description)
    tflite.ModelAddBuffers(b, buffer_vec)
    b.Finish(tflite.ModelEnd(b), file_identifier=_FILE_IDENTIFIER)
    return bytes(b.Output())


def write_tflite(layers: Sequence[Dense], path: str | os.PathLike[str]) -> str:
    """Write ``layers`` as a .tflite model to ``path`` atomically; returns its sha256 hex."""
    return write_atomic(path, tflite_bytes(layers))


class _Plan:
    """The model as plain lists (buffers, tensors, opcodes, operators) before building.

    ``tensors`` holds ``(name, shape, shape_signature or None, buffer index)``;
    ``operators`` holds ``(opcode index, inputs, outputs, fused activation or None)``
    where a fused activation of None means "not FULLY_CONNECTED: no options".
    """

    def __init__(self, layers: list[Dense]) -> None:
        from tflite.ActivationFunctionType import ActivationFunctionType
        from tflite.BuiltinOperator import BuiltinOperator

        self.buffers: list[bytes] = [b""]  # the empty sentinel, buffer 0
        self.tensors: list[tuple[str, list[int], list[int] | None, int]] = []
        self.opcodes: list[int] = [BuiltinOperator.FULLY_CONNECTED]
        self.operators: list[tuple[int, list[int], list[int], int | None]] = []
        current = self._activation("x", layers[0].n_in)
        for i, d in enumerate(layers, start=1):
            last = i == len(layers)
            weight = self._constant(f"dense{i}/weight", np.ascontiguousarray(d.weight.T))
            bias = self._constant(f"dense{i}/bias", d.bias)
            fc_name = "logits" if last and d.activation != "tanh" else f"dense{i}/linear"
            out = self._activation(fc_name, d.n_out)
            fused = ActivationFunctionType.RELU if d.relu else ActivationFunctionType.NONE
            self.operators.append((0, [current, weight, bias], [out], fused))
            current = out
            if d.activation == "tanh":
                if BuiltinOperator.TANH not in self.opcodes:
                    self.opcodes.append(BuiltinOperator.TANH)
                out = self._activation("logits" if last else f"dense{i}/tanh", d.n_out)
                self.operators.append(
                    (self.opcodes.index(BuiltinOperator.TANH), [current], [out], None)
                )
                current = out
        self.output = current

    def _activation(self, name: str, width: int) -> int:
        self.tensors.append((name, [1, width], [-1, width], 0))
        return len(self.tensors) - 1

    def _constant(self, name: str, arr: np.ndarray) -> int:
        self.buffers.append(arr.astype("<f4", copy=False).tobytes())
        self.tensors.append((name, list(arr.shape), None, len(self.buffers) - 1))
        return len(self.tensors) - 1


def _int32_vector(b: Any, values: Sequence[int]) -> int:
    return b.CreateNumpyVector(np.asarray(values, dtype="<i4"))


def _table_vector(b: Any, offsets: Sequence[int]) -> int:
    b.StartVector(4, len(offsets), 4)
    for off in reversed(offsets):
        b.PrependUOffsetTRelative(off)
    return b.EndVector()


def _buffer(b: Any, tflite: Any, data: bytes) -> int:
    vec = None
    if data:
        # Like Builder.CreateByteVector, but aligned for SIMD reads of the float32 data.
        b.StartVector(1, len(data), _DATA_ALIGNMENT)
        b.head -= len(data)
        b.Bytes[b.head : b.head + len(data)] = data
        vec = b.EndVector()
    tflite.BufferStart(b)
    if vec is not None:
        tflite.BufferAddData(b, vec)
    return tflite.BufferEnd(b)


def _tensor(
    b: Any, tflite: Any, name: str, shape: list[int], signature: list[int] | None, buffer: int
) -> int:
    name_off = b.CreateString(name)
    shape_off = _int32_vector(b, shape)
    sig_off = _int32_vector(b, signature) if signature is not None else None
    tflite.TensorStart(b)
    tflite.TensorAddShape(b, shape_off)
    tflite.TensorAddType(b, tflite.TensorType.FLOAT32)
    tflite.TensorAddBuffer(b, buffer)
    tflite.TensorAddName(b, name_off)
    if sig_off is not None:
        tflite.TensorAddShapeSignature(b, sig_off)
    return tflite.TensorEnd(b)


def _operator_code(b: Any, tflite: Any, code: int) -> int:
    tflite.OperatorCodeStart(b)
    # Readers older than schema 3a read only the deprecated int8 field; codes < 127 fit.
    tflite.OperatorCodeAddDeprecatedBuiltinCode(b, min(code, 127))
    tflite.OperatorCodeAddBuiltinCode(b, code)
    tflite.OperatorCodeAddVersion(b, 1)
    return tflite.OperatorCodeEnd(b)


def _operator(
    b: Any, tflite: Any, opcode: int, inputs: list[int], outputs: list[int], fused: int | None
) -> int:
    in_off = _int32_vector(b, inputs)
    out_off = _int32_vector(b, outputs)
    options = None
    if fused is not None:
        tflite.FullyConnectedOptionsStart(b)
        tflite.FullyConnectedOptionsAddFusedActivationFunction(b, fused)
        tflite.FullyConnectedOptionsAddWeightsFormat(
            b, tflite.FullyConnectedOptionsWeightsFormat.DEFAULT
        )
        tflite.FullyConnectedOptionsAddKeepNumDims(b, False)
        options = tflite.FullyConnectedOptionsEnd(b)
    tflite.OperatorStart(b)
    tflite.OperatorAddOpcodeIndex(b, opcode)
    tflite.OperatorAddInputs(b, in_off)
    tflite.OperatorAddOutputs(b, out_off)
    if options is not None:
        tflite.OperatorAddBuiltinOptionsType(b, tflite.BuiltinOptions.FullyConnectedOptions)
        tflite.OperatorAddBuiltinOptions(b, options)
    return tflite.OperatorEnd(b)
