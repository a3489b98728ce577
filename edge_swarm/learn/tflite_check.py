"""Bounds-check a .tflite flatbuffer before any TFLite interpreter is handed it.

How it works:
    ``check_tflite_structure(data)`` walks the tables of a TFLite model (schema version 3,
    field slots as in tensorflow/lite/schema/schema.fbs) with `_FlatReader`, whose every
    read checks its offset against the length of ``data``. It visits what an interpreter
    follows: operator codes, buffers (including data stored after the flatbuffer),
    metadata, signatures and, per subgraph, tensors and operators. It checks indices
    (buffers, tensors, operator codes, subgraphs), tensor shapes (no negative dimension,
    at most ``MAX_PARAMS`` values) and that every operator reads only tensors that exist
    by then. ``runtimes`` calls it and turns its ValueError into ``ModelFileError``.

    Why: tflite-runtime 2.14 does not verify a model given as bytes, so a truncated file
    makes it read past the end (seen: segfaults, or a model that "loads" with garbage
    weights) and an operator cycle that one flipped bit can make crashes it; a flipped bit
    in a dimension has even ai-edge-litert, which does verify, die of OOM rather than
    raise. Checking for every package keeps one behaviour. It lives in its own module
    because it is a self-contained parser of a foreign format.

Invariants:
    - Pure: reads only ``data`` and imports no TFLite package; what it finds wrong it
      raises as ValueError, saying what lies out of range.
    - Structure only: a file that passes can still be rejected by the interpreter or by
      ``runtimes``' graph checks (one 2-D float32 input and output).
"""

from __future__ import annotations

import math
import struct

from edge_swarm.learn.model import MAX_PARAMS

__all__ = ["check_tflite_structure"]


class _FlatReader:
    """Bounds-checked reads of a flatbuffer; anything out of range raises ValueError."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def unpack(self, fmt: str, pos: int) -> int:
        if pos < 0 or pos + struct.calcsize(fmt) > len(self.data):
            raise ValueError(f"offset {pos} lies past the end of the {len(self.data)} bytes")
        return struct.unpack_from(fmt, self.data, pos)[0]

    def table(self, pos: int) -> tuple[int, int, int]:
        """(position, vtable position, vtable length) of the table at ``pos``."""
        vtable = pos - self.unpack("<i", pos)
        vlen, tlen = self.unpack("<H", vtable), self.unpack("<H", vtable + 2)
        if vlen < 4 or vlen % 2 or pos + tlen > len(self.data):
            raise ValueError(f"malformed table at offset {pos}")
        self.unpack("<H", vtable + vlen - 2)
        return pos, vtable, vlen

    def field(self, table: tuple[int, int, int], slot: int) -> int:
        pos, vtable, vlen = table
        if 4 + 2 * slot + 2 > vlen:
            return 0
        off = self.unpack("<H", vtable + 4 + 2 * slot)
        return pos + off if off else 0

    def scalar(self, table: tuple[int, int, int], slot: int, fmt: str) -> int:
        pos = self.field(table, slot)
        return self.unpack(fmt, pos) if pos else 0

    def ref(self, table: tuple[int, int, int], slot: int) -> int:
        pos = self.field(table, slot)
        return pos + self.unpack("<I", pos) if pos else 0

    def vector(self, table: tuple[int, int, int], slot: int, size: int) -> tuple[int, int]:
        """(first element's position, length) of a vector field; (0, 0) when absent."""
        pos = self.ref(table, slot)
        if not pos:
            return 0, 0
        n = self.unpack("<I", pos)
        if pos + 4 + n * size > len(self.data):
            raise ValueError(f"vector at offset {pos} runs past the end")
        return pos + 4, n

    def ints(self, table: tuple[int, int, int], slot: int) -> list[int]:
        start, n = self.vector(table, slot, 4)
        return [self.unpack("<i", start + 4 * i) for i in range(n)]

    def tables(self, table: tuple[int, int, int], slot: int) -> list[tuple[int, int, int]]:
        start, n = self.vector(table, slot, 4)
        return [self.table(start + 4 * i + self.unpack("<I", start + 4 * i)) for i in range(n)]


def check_tflite_structure(data: bytes) -> None:
    """Raise ValueError unless every table, vector and index the interpreter follows lies
    inside ``data``.

    tflite-runtime 2.14 does not verify a model given as bytes: a truncated file makes it
    read past the end (seen: segfaults, or a model that "loads" with garbage weights).
    ai-edge-litert verifies, but running this for every package keeps one behaviour.
    Field slots are those of tensorflow/lite/schema/schema.fbs (version 3).
    """
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ValueError("no TFL3 file identifier at offset 4: not a .tflite flatbuffer")
    r = _FlatReader(data)
    model = r.table(r.unpack("<I", 0))
    if r.scalar(model, 0, "<I") != 3:
        raise ValueError(f"schema version {r.scalar(model, 0, '<I')}, expected 3")
    r.vector(model, 3, 1), r.vector(model, 5, 4)  # description, metadata_buffer
    codes, buffers, subgraphs = r.tables(model, 1), r.tables(model, 4), r.tables(model, 2)
    if not subgraphs:
        raise ValueError("the model has no subgraph")
    for code in codes:
        r.vector(code, 1, 1)  # custom_code
    filled = []  # per buffer: does it hold data (a constant tensor)?
    for buf in buffers:
        _, size = r.vector(buf, 0, 1)  # data
        offset, outside = r.scalar(buf, 1, "<Q"), r.scalar(buf, 2, "<Q")
        if offset > 1 and offset + outside > len(data):  # data stored after the flatbuffer
            raise ValueError(f"buffer data at {offset}+{outside} lies past the end")
        filled.append(size > 0 or offset > 1)
    for meta in r.tables(model, 6):
        r.vector(meta, 0, 1)
        if r.scalar(meta, 1, "<I") >= len(buffers):
            raise ValueError("metadata names a buffer that does not exist")
    for sig in r.tables(model, 7):
        r.vector(sig, 2, 1)
        if r.scalar(sig, 4, "<I") >= len(subgraphs):
            raise ValueError("a signature names a subgraph that does not exist")
        for tensor_map in r.tables(sig, 0) + r.tables(sig, 1):
            r.vector(tensor_map, 0, 1)
    for sg in subgraphs:
        _check_subgraph(r, sg, len(codes), filled)


def _check_subgraph(
    r: _FlatReader, sg: tuple[int, int, int], n_codes: int, filled: list[bool]
) -> None:
    """Bounds and indices of one subgraph, and that each operator reads only tensors that
    exist by then (tflite-runtime 2.14 crashes on a cycle that one flipped bit can make)."""
    r.vector(sg, 4, 1)  # name
    tensors = r.tables(sg, 0)
    ready = set(r.ints(sg, 1))  # the subgraph's inputs, then constants and variables
    for i, t in enumerate(tensors):
        shape = r.ints(t, 0)
        r.vector(t, 7, 4), r.vector(t, 3, 1)  # shape_signature, name
        if any(d < 0 for d in shape) or math.prod(shape) > MAX_PARAMS:
            # A flipped bit in a dimension would otherwise have the interpreter allocate
            # gigabytes (ai-edge-litert then dies of OOM rather than raising).
            raise ValueError(f"tensor {i} has shape {shape}: negative or over {MAX_PARAMS} values")
        r.tables(t, 10)  # variant_tensors
        buffer = r.scalar(t, 2, "<I")
        if buffer >= len(filled):
            raise ValueError(f"tensor {i} names buffer {buffer}, which does not exist")
        for slot in (4, 6):  # quantization, sparsity
            if r.ref(t, slot):
                r.table(r.ref(t, slot))
        if filled[buffer] or r.scalar(t, 5, "<B"):  # constant or is_variable
            ready.add(i)
    if not all(0 <= i < len(tensors) for i in r.ints(sg, 1) + r.ints(sg, 2)):
        raise ValueError("a subgraph input or output names a tensor that does not exist")
    for k, op in enumerate(r.tables(sg, 3)):
        if r.scalar(op, 0, "<I") >= n_codes:
            raise ValueError(f"operator {k} names an operator code that does not exist")
        inputs, outputs = r.ints(op, 1), r.ints(op, 2)
        if not all(-1 <= i < len(tensors) for i in inputs + outputs):
            raise ValueError(f"operator {k} names a tensor that does not exist")
        if not all(i == -1 or i in ready for i in inputs):
            raise ValueError(f"operator {k} reads a tensor before any operator writes it")
        ready.update(outputs)
        for slot in (4, 13):  # builtin_options, builtin_options_2
            if r.ref(op, slot):
                r.table(r.ref(op, slot))
        r.vector(op, 5, 1), r.vector(op, 7, 1), r.ints(op, 9)  # custom, mutating, intermediates
