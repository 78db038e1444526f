"""Lower an ONNX model to the bound IR.

The model is read as a function of ONE sample: VNN-COMP files fix the batch to 1 (or leave it
symbolic, or have no batch dimension at all), and a property is stated for one input. Every
perturbed ONNX tensor is tracked as an IR node plus one flag, ``batch``:

- ``batch=True``: the tensor's ONNX dim 0 is the size-1 batch and is the IR's free batch
  dimension; the node's per-sample shape is the ONNX shape without dim 0.
- ``batch=False``: the IR prepends a batch dimension the ONNX tensor does not have; the
  per-sample shape is the whole ONNX shape (rank-1 inputs such as ACAS Xu-style vectors).

An ONNX axis ``a`` is IR dim ``a`` in the first case and ``a + 1`` in the second. An op that acts
on ONNX dim 0 of a ``batch=True`` tensor (a transpose moving it, a concat along it, a reshape
mixing it) first *absorbs* the batch: a reshape to the per-sample shape ``(1, *shape)``, which
is exact because the ONNX batch is 1. Ops that need the N, C, spatial layout (Conv, pooling,
BatchNormalization) do the reverse when the leading dim is 1.

Constant subgraphs (initializers, Constant nodes, shape arithmetic) are folded at load time
with ONNX's reference evaluator, so the IR only sees perturbed nodes and constant tensors.
Shapes come from running each new IR node's forward rule on a dummy batch of 2 (2, so that a
mix-up of the batch with a size-1 dim shows). After lowering, the IR is evaluated against
onnxruntime on random inputs; a disagreement above 1e-4 (relative to max(1, |output|)) raises.

``lower_onnx`` returns the graph and a runner: a callable that runs the ORIGINAL model with
onnxruntime on a torch batch (samples one by one when the model's batch is fixed), used to
confirm counterexamples.
"""
from __future__ import annotations

import math
import os
import re
import string
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from lirpac.errors import ModelFormatError, UnsupportedOperationError
from lirpac.ir.graph import Graph, Node
from lirpac.ir.opdef import REGISTRY, get_op
from lirpac.ir.torch_frontend import remove_dead_nodes

# relative tolerance of the load-time check against onnxruntime
CHECK_TOLERANCE = 1e-4

_FLOAT_TYPES = {1: torch.float32, 11: torch.float64}   # onnx.TensorProto.FLOAT / DOUBLE
_NP_DTYPES = {torch.float32: np.float32, torch.float64: np.float64, torch.int64: np.int64}
_TOKEN_TYPE = 7   # onnx.TensorProto.INT64: token ids, which a Gather on a table embeds
_INT_MAX = 2 ** 62


@dataclass
class _Value:
    """A perturbed ONNX tensor: its IR node and whether ONNX dim 0 is the IR batch dim."""
    node: Node
    batch: bool

    @property
    def onnx_shape(self) -> tuple[int, ...]:
        return ((1,) + self.node.shape) if self.batch else self.node.shape

    @property
    def rank(self) -> int:
        return len(self.onnx_shape)


def _attrs(node) -> dict[str, Any]:
    import onnx
    out = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, onnx.TensorProto):
            v = onnx.numpy_helper.to_array(v)
        out[a.name] = v
    return out


def _norm_axis(axis: int, rank: int) -> int:
    a = axis + rank if axis < 0 else axis
    if not 0 <= a < max(rank, 1):
        raise IndexError(axis)
    return a


class _Lowering:
    def __init__(self, model, opset: int):
        self.model = model
        self.opset = opset
        self.graph = Graph()
        self.env: dict[str, np.ndarray | _Value] = {}
        self.dummy: dict[Node, torch.Tensor] = {}
        self.const_nodes: dict[int, Node] = {}
        self.skip: set[int] = set()          # ids of ONNX nodes already lowered by a fusion
        self.onnx_node = None
        self.dtype = torch.float32
        g = model.graph
        self.consumers: dict[str, list] = {}
        for n in g.node:
            for name in n.input:
                self.consumers.setdefault(name, []).append(n)
        self.graph_outputs = {o.name for o in g.output}

    # -- errors ------------------------------------------------------------------------------
    def where(self) -> str:
        n = self.onnx_node
        return f"ONNX {n.op_type} node '{n.name or n.output[0]}'"

    def unsupported(self, message: str) -> UnsupportedOperationError:
        return UnsupportedOperationError(f"{self.where()}: {message}")

    # -- building ----------------------------------------------------------------------------
    def base_name(self, node=None) -> str:
        """A readable name for IR nodes made from an ONNX node: its name, else op and output."""
        n = node or self.onnx_node
        return n.name or f"{n.op_type.lower()}_{n.output[0]}"

    def add(self, op: str, inputs: list[Node], suffix: str = "", **attrs) -> Node:
        """Add an IR node; its shape comes from its forward rule on the dummy batch."""
        opdef = get_op(op)
        perturbed = any(i.perturbed for i in inputs)
        refusal = perturbed and opdef.check_attrs and opdef.check_attrs(**attrs)
        if refusal:
            raise self.unsupported(refusal)
        n = self.onnx_node
        base = self.base_name() + suffix
        try:
            value = opdef.forward(*[self.dummy[i] for i in inputs], **attrs)
        except Exception as err:  # a shape the op cannot take: a frontend limitation, say so
            raise self.unsupported(f"lowering to IR op '{op}' failed on the example batch "
                                   f"({type(err).__name__}: {err})") from err
        node = self.graph.add(op, inputs, name=base, attrs=attrs, shape=tuple(value.shape[1:]),
                              dtype=value.dtype, batched=True,
                              perturbed=any(i.perturbed for i in inputs),
                              source=f"{n.op_type} '{n.name or n.output[0]}'")
        self.dummy[node] = value
        return node

    def const(self, array: np.ndarray, name: str = "const") -> Node:
        """A constant IR node (one per array object)."""
        key = id(array)
        if key in self.const_nodes:
            return self.const_nodes[key]
        tensor = torch.from_numpy(np.array(array))
        if tensor.is_floating_point():
            tensor = tensor.to(self.dtype)
        node = self.graph.add("constant", [], name=name, shape=tuple(tensor.shape), dtype=tensor.dtype,
                              value=tensor)
        self.const_nodes[key] = node
        self.dummy[node] = tensor
        self._keep = getattr(self, "_keep", [])
        self._keep.append(array)  # the id stays valid while the lowering lives
        return node

    def reshape(self, v: _Value, onnx_shape: tuple[int, ...], suffix: str = "") -> _Value:
        """The value reshaped to ``onnx_shape`` (same number of elements); a leading 1 of a
        tensor of rank 2 or more becomes the batch dim."""
        onnx_shape = tuple(int(s) for s in onnx_shape)
        if onnx_shape == v.onnx_shape:
            return v
        batch = len(onnx_shape) >= 2 and onnx_shape[0] == 1
        per_sample = onnx_shape[1:] if batch else onnx_shape
        if per_sample == v.node.shape:
            return _Value(v.node, batch)
        return _Value(self.add("reshape", [v.node], suffix or "_reshape", shape=per_sample), batch)

    def absorb(self, v: _Value) -> _Value:
        """Make the size-1 ONNX batch dim a per-sample dim (exact: the ONNX batch is 1)."""
        if not v.batch:
            return v
        return _Value(self.add("reshape", [v.node], "_unbatch", shape=v.onnx_shape), False)

    def batched(self, v: _Value) -> _Value:
        """The value with its leading ONNX dim as the IR batch (needs that dim to be 1)."""
        if v.batch:
            return v
        if not v.node.shape or v.node.shape[0] != 1:
            raise self.unsupported(f"the op needs a batch dim first (N, C, ...) but the input has "
                                   f"shape {list(v.onnx_shape)}; lirpac bounds one sample (N = 1)")
        return self.reshape(v, v.onnx_shape, "_batch")

    def expand_rank(self, v: _Value, rank: int) -> _Value:
        """Prepend size-1 dims so the ONNX rank is ``rank`` (for broadcasting)."""
        if v.rank >= rank:
            return v
        v = self.absorb(v)
        return _Value(self.add("reshape", [v.node], "_expand",
                               shape=(1,) * (rank - v.rank) + v.node.shape), False)

    def ir_dims(self, v: _Value, axes) -> tuple[_Value, list[int]]:
        """IR dims of ONNX axes, absorbing the batch first when an axis is ONNX dim 0."""
        try:
            axes = [_norm_axis(int(a), v.rank) for a in axes]
        except IndexError as err:
            raise self.unsupported(f"axis {err} out of range for rank {v.rank}") from None
        if v.batch and 0 in axes:
            v = self.absorb(v)
        return v, [a + (0 if v.batch else 1) for a in axes]

    def input_value(self, name: str):
        if name == "":
            return None
        if name not in self.env:
            raise ModelFormatError(f"{self.where()} reads '{name}', which no node, input or "
                                   "initializer defines (the graph is not topologically sorted?)")
        return self.env[name]

    # -- the walk ----------------------------------------------------------------------------
    def run(self, input_info) -> Graph:
        import onnx
        g = self.model.graph
        for init in g.initializer:
            self.env[init.name] = onnx.numpy_helper.to_array(init)
        name, per_sample, batch, dtype = input_info
        self.dtype = dtype if dtype.is_floating_point else torch.float32
        x = self.graph.add("input", [], name=name, shape=per_sample, dtype=dtype, batched=True,
                           perturbed=True)
        self.dummy[x] = (torch.rand(2, *per_sample, dtype=dtype, generator=torch.Generator().manual_seed(0))
                         if dtype.is_floating_point else torch.zeros(2, *per_sample, dtype=dtype))
        self.env[name] = _Value(x, batch)
        for node in g.node:
            self.onnx_node = node
            if id(node) in self.skip:
                continue
            custom = _custom_op(node)
            if node.domain not in ("", "ai.onnx") and custom is None:
                raise self.unsupported(f"operator domain '{node.domain}' is not supported; export "
                                       "with standard ONNX operators only")
            inputs = [self.input_value(i) for i in node.input]
            if not any(isinstance(i, _Value) for i in inputs):
                outputs = self.fold(node, inputs)
            else:
                converter = _custom_converter(custom) if custom else _CONVERTERS.get(node.op_type)
                if converter is None:
                    raise self.unsupported(
                        f"operator '{node.op_type}' is not supported by lirpac's ONNX frontend "
                        f"(supported: {', '.join(sorted(_CONVERTERS))}). Re-export the model with "
                        "those operators, or give lirpac its bound rules with "
                        f"lirpac.register_op(..., onnx_op='{node.op_type}') (docs/custom_ops.md)")
                outputs = converter(self, node, inputs)
                if not isinstance(outputs, (list, tuple)):
                    outputs = [outputs]
            for out_name, value in zip(node.output, outputs):
                if out_name:
                    self.env[out_name] = value
        if len(g.output) != 1:
            raise UnsupportedOperationError(
                f"the ONNX model has {len(g.output)} outputs ({', '.join(o.name for o in g.output)}); "
                "lirpac bounds a model with one output tensor")
        out = self.env.get(g.output[0].name)
        if not isinstance(out, _Value):
            raise UnsupportedOperationError(f"the ONNX model's output '{g.output[0].name}' does not "
                                            "depend on its input")
        self.graph.output = out.node
        remove_dead_nodes(self.graph)
        return self.graph

    def fold(self, node, inputs: list) -> list[np.ndarray]:
        """Evaluate a node whose inputs are all constant with ONNX's reference evaluator."""
        if node.op_type == "Constant":
            attrs = _attrs(node)
            if "value" in attrs:
                return [np.asarray(attrs["value"])]
            for key in ("value_float", "value_int"):
                if key in attrs:
                    return [np.asarray(attrs[key], dtype=np.float32 if key == "value_float" else np.int64)]
            for key in ("value_floats", "value_ints"):
                if key in attrs:
                    return [np.asarray(attrs[key], dtype=np.float32 if key == "value_floats" else np.int64)]
        if node.op_type == "Identity":
            return [inputs[0]]
        import onnx
        from onnx import helper
        from onnx.reference import ReferenceEvaluator
        feeds = {f"in{i}": v for i, v in enumerate(inputs) if v is not None}
        renamed = helper.make_node(node.op_type, [f"in{i}" if v is not None else "" for i, v in enumerate(inputs)],
                                   [f"out{i}" for i in range(len(node.output))], domain=node.domain)
        renamed.attribute.extend(node.attribute)
        graph = helper.make_graph(
            [renamed], "fold",
            [helper.make_tensor_value_info(k, onnx.TensorProto.UNDEFINED, None) for k in feeds],
            [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in renamed.output])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        try:
            return [np.asarray(v) for v in ReferenceEvaluator(model).run(None, feeds)]
        except Exception as err:
            raise self.unsupported(f"could not evaluate this constant computation "
                                   f"({type(err).__name__}: {err})") from err


# -- converters: (lowering, onnx node, inputs) -> value(s) --------------------------------------
# inputs are np.ndarray (constants), _Value (perturbed) or None (an omitted optional input)

def _perturbed(lw: _Lowering, v, what: str = "this input") -> _Value:
    if not isinstance(v, _Value):
        raise lw.unsupported(f"{what} must depend on the model input")
    return v


def _const_input(lw: _Lowering, v, what: str) -> np.ndarray:
    if isinstance(v, _Value):
        raise lw.unsupported(f"{what} depends on the model input; lirpac needs it constant "
                             "(weights, shapes and axes must be initializers or Constant nodes)")
    return v


def _unary(op: str):
    def convert(lw: _Lowering, node, inputs):
        if op not in REGISTRY:
            raise lw.unsupported(f"lirpac has no '{op}' op registered (yet); it cannot bound "
                                 f"{node.op_type}")
        v = _perturbed(lw, inputs[0])
        return _Value(lw.add(op, [v.node]), v.batch)
    return convert


def _identity(lw: _Lowering, node, inputs):
    if node.op_type == "Dropout" and len(node.output) > 1 and node.output[1] and \
            lw.consumers.get(node.output[1]):
        raise lw.unsupported("the Dropout mask output is used; only inference-mode Dropout is supported")
    return [inputs[0]] + [None] * (len(node.output) - 1)


def _cast(lw: _Lowering, node, inputs):
    to = _attrs(node).get("to")
    if to not in (1, 10, 11, 16):  # float, float16, double, bfloat16
        raise lw.unsupported("a cast of the perturbed tensor to a non-float type")
    return inputs[0]


def _is_all(c: np.ndarray, value: float) -> bool:
    return c.dtype.kind in "fiu" and bool(np.all(c == value))


def _broadcast_noop(v: _Value, c: np.ndarray) -> bool:
    try:
        return tuple(np.broadcast_shapes(v.onnx_shape, c.shape)) == v.onnx_shape
    except ValueError:
        return False


def _align_const(lw: _Lowering, v: _Value, c: np.ndarray) -> tuple[_Value, np.ndarray]:
    """Make ONNX broadcasting of (v, c) equal torch broadcasting of (IR node, c)."""
    if c.ndim > v.rank:
        v = lw.expand_rank(v, c.ndim)
    if v.batch and c.ndim == v.rank:
        if c.shape[0] == 1:
            c = c.reshape(c.shape[1:])
        else:
            v = lw.absorb(v)
    return v, c


def _align_pair(lw: _Lowering, a: _Value, b: _Value) -> tuple[_Value, _Value]:
    """Make two perturbed operands broadcast in the IR as they do in ONNX."""
    if a.batch and b.batch and a.rank == b.rank:
        return a, b
    rank = max(a.rank, b.rank)
    return lw.expand_rank(lw.absorb(a), rank), lw.expand_rank(lw.absorb(b), rank)


def _binary(op: str):
    def convert(lw: _Lowering, node, inputs):
        a, b = inputs
        if isinstance(a, _Value) and isinstance(b, _Value):
            a, b = _align_pair(lw, a, b)
            if op == "div":      # a * (1 / b), as the torch frontend (b's range must exclude 0)
                inverse = lw.add("reciprocal", [b.node], "_reciprocal")
                return _Value(lw.add("mul_bilinear", [a.node, inverse]), a.batch)
            if op == "mul":      # as the torch frontend: x * x is a square, else McCormick planes
                return _Value(lw.add("pow", [a.node], exponent=2) if a.node is b.node else
                              lw.add("mul_bilinear", [a.node, b.node]), a.batch)
            return _Value(lw.add(op, [a.node, b.node]), a.batch)
        const_first = not isinstance(a, _Value)
        v, c = (b, a) if const_first else (a, b)
        c = np.asarray(c)
        if op == "div" and const_first:      # c * (1 / x)
            inverse = _Value(lw.add("reciprocal", [v.node], "_reciprocal"), v.batch)
            return _with_const(lw, "mul", inverse, c, "")
        # no-ops real models carry: x - 0, x + 0, x * 1, x / 1 (normalisation with defaults)
        if _broadcast_noop(v, c) and ((op == "add" and _is_all(c, 0)) or
                                      (op == "sub" and not const_first and _is_all(c, 0)) or
                                      (op in ("mul", "div") and _is_all(c, 1))):
            return v
        if c.dtype.kind not in "f":
            c = c.astype(_NP_DTYPES[lw.dtype])
        v, c = _align_const(lw, v, c)
        const = lw.const(c, name=f"{lw.base_name()}_const")
        ins = [const, v.node] if const_first else [v.node, const]
        return _Value(lw.add(op, ins), v.batch)
    return convert


# -- matmul / gemm ---------------------------------------------------------------------------------

def _fusable_bias(lw: _Lowering, node, n_out: int):
    """If the node's only consumer is an Add of a constant bias of n_out entries (the
    MatMul + Add form of a dense layer), return (that Add node, bias vector)."""
    out = node.output[0]
    users = lw.consumers.get(out, [])
    if out in lw.graph_outputs or len(users) != 1 or users[0].op_type != "Add":
        return None, None
    add = users[0]
    other = add.input[1] if add.input[0] == out else add.input[0]
    c = lw.env.get(other)
    if c is None or isinstance(c, _Value) or add.input[0] == add.input[1]:
        return None, None
    c = np.asarray(c)
    if c.size != n_out or c.shape[-1:] != (n_out,) or c.ndim > 2:
        return None, None
    return add, c.reshape(n_out)


def _linear(lw: _Lowering, node, x: _Value, weight: np.ndarray, bias: np.ndarray | None,
            fuse: bool = True) -> _Value:
    """y = x W^T + b for a per-sample vector x; with ``fuse``, a following Add of a constant
    bias (the MatMul + Add form of a dense layer) becomes the bias."""
    add = None
    if bias is None and fuse:
        add, bias = _fusable_bias(lw, node, weight.shape[0])
    prefix = lw.base_name(node)
    ins = [x.node, lw.const(np.ascontiguousarray(weight), name=f"{prefix}_weight")]
    if bias is not None:
        ins.append(lw.const(np.ascontiguousarray(bias), name=f"{prefix}_bias"))
    result = _Value(lw.add("linear", ins), x.batch)
    if add is not None:
        lw.skip.add(id(add))
        lw.env[add.output[0]] = result
    return result


def _per_sample_vector(v: _Value) -> bool:
    return len(v.node.shape) == 1


def _matmul(lw: _Lowering, node, inputs):
    a, b = inputs
    if isinstance(a, _Value) and isinstance(b, _Value):          # (attention's q k^T, w v)
        if not (a.batch and b.batch and a.rank == b.rank and len(a.node.shape) >= 2):
            raise lw.unsupported("MatMul of two tensors that both depend on the input needs "
                                 "per-sample matrices of one rank on both sides")
        return _Value(lw.add("matmul_bilinear", [a.node, b.node]), a.batch)
    if isinstance(a, _Value):                       # x @ W
        x, w = a, np.asarray(b)
        if w.ndim == 1:                              # (..., k) @ (k,) -> (...)
            out = _matmul(lw, node, [x, w.reshape(-1, 1)])
            return lw.reshape(out, out.onnx_shape[:-1])
        if x.rank == 1 and w.ndim > 2:
            raise lw.unsupported("a vector times a stack of matrices")
        if w.ndim == 2 and _per_sample_vector(x) and x.rank <= 2:
            return _linear(lw, node, x, w.T, None)
        x, w = _align_const(lw, x, w)
        return _Value(lw.add("matmul_const_right", [x.node, lw.const(w, name=f"{lw.base_name()}_weight")]),
                      x.batch)
    w, x = np.asarray(a), b                          # W @ x
    if x.rank == 1:                                  # (m, k) @ (k,) -> (m,): a dense layer
        if w.ndim == 1:
            out = _linear(lw, node, x, w.reshape(1, -1), None, fuse=False)
            return lw.reshape(out, ())
        if w.ndim > 2:
            raise lw.unsupported("a stack of matrices times a vector")
        return _linear(lw, node, x, w, None)
    if w.ndim == 1:
        raise lw.unsupported("a vector times a matrix that depends on the input")
    if x.batch and x.rank == 2:                      # the contraction runs over ONNX dim 0
        x = lw.absorb(x)
    if w.ndim > 2:
        x, w = _align_const(lw, x, w)
    return _Value(lw.add("matmul_const_left", [lw.const(w, name=f"{lw.base_name()}_weight"), x.node]),
                  x.batch)


def _transpose_last2(lw: _Lowering, v: _Value) -> _Value:
    v, dims = lw.ir_dims(v, [v.rank - 2, v.rank - 1])
    perm = list(range(len(v.node.shape) + 1))
    perm[dims[0]], perm[dims[1]] = perm[dims[1]], perm[dims[0]]
    return _Value(lw.add("permute", [v.node], "_transpose", dims=tuple(perm)), v.batch)


def _gemm(lw: _Lowering, node, inputs):
    """Y = alpha A' B' + beta C (A' = A^T with transA, B' likewise): a dense layer when A is the
    (one-row) input and B constant; W @ x otherwise."""
    at = _attrs(node)
    alpha, beta = float(at.get("alpha", 1.0)), float(at.get("beta", 1.0))
    trans_a, trans_b = int(at.get("transA", 0)), int(at.get("transB", 0))
    a, b = inputs[0], inputs[1]
    c = inputs[2] if len(inputs) > 2 and beta != 0 else None
    if isinstance(c, _Value):
        raise lw.unsupported("Gemm with an input-dependent C")
    dtype = _NP_DTYPES[lw.dtype]
    c = None if c is None else np.asarray(c, dtype=dtype) * dtype(beta)
    prefix = lw.base_name()
    if isinstance(a, _Value) and isinstance(b, _Value):
        raise lw.unsupported("Gemm of two tensors that both depend on the input is not supported")
    x = a if isinstance(a, _Value) else b
    if x.rank != 2:
        raise lw.unsupported(f"Gemm inputs must be 2-D, got shape {list(x.onnx_shape)}")
    if isinstance(a, _Value):
        if trans_a:
            x = _transpose_last2(lw, x)
        w = np.asarray(b, dtype=dtype)
        w = (w.T if trans_b else w) * dtype(alpha)               # (k, n)
        n = w.shape[1]
        if x.onnx_shape[0] == 1 and (c is None or c.size in (1, n)):
            bias = None if c is None else np.broadcast_to(c.reshape(-1), (n,)).copy()
            return _linear(lw, node, lw.batched(x), w.T, bias, fuse=False)
        out = _Value(lw.add("matmul_const_right", [x.node, lw.const(w, name=f"{prefix}_weight")]), x.batch)
    else:
        x = lw.absorb(x)                                           # W @ x contracts ONNX dim 0
        if trans_b:
            x = _transpose_last2(lw, x)
        w = np.asarray(a, dtype=dtype)
        w = (w.T if trans_a else w) * dtype(alpha)
        out = _Value(lw.add("matmul_const_left", [lw.const(w, name=f"{prefix}_weight"), x.node]), False)
    if c is None:
        return out
    out, c = _align_const(lw, out, c)
    return _Value(lw.add("add", [out.node, lw.const(c, name=f"{prefix}_bias")], "_bias"), out.batch)


# -- convolution, normalisation, pooling ----------------------------------------------------------

def _spatial_pads(lw: _Lowering, at: dict, in_spatial, kernel, strides, dilations):
    """(begin, end) pads per spatial dim from pads / auto_pad."""
    nd = len(in_spatial)
    auto = at.get("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        pads = list(at.get("pads", [0] * (2 * nd)))
        return pads[:nd], pads[nd:]
    if auto == "VALID":
        return [0] * nd, [0] * nd
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        raise lw.unsupported(f"auto_pad={auto!r}")
    begin, end = [], []
    for size, k, s, d in zip(in_spatial, kernel, strides, dilations):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small, big = total // 2, total - total // 2
        begin.append(small if auto == "SAME_UPPER" else big)
        end.append(big if auto == "SAME_UPPER" else small)
    return begin, end


def _explicit_pad(lw: _Lowering, v: _Value, begin, end, value: float = 0.0) -> _Value:
    """A pad node on the trailing spatial dims (F.pad order: last dim first)."""
    pad = []
    for b, e in zip(reversed(begin), reversed(end)):
        pad += [int(b), int(e)]
    return _Value(lw.add("pad", [v.node], "_pad", pad=tuple(pad), value=float(value)), v.batch)


def _conv(lw: _Lowering, node, inputs):
    at = _attrs(node)
    x = lw.batched(_perturbed(lw, inputs[0]))
    w = np.asarray(_const_input(lw, inputs[1], "the Conv weight"))
    bias = inputs[2] if len(inputs) > 2 else None
    if bias is not None:
        bias = np.asarray(_const_input(lw, bias, "the Conv bias"))
    nd = w.ndim - 2
    if nd not in (1, 2, 3) or len(x.node.shape) != nd + 1:
        raise lw.unsupported(f"Conv with weight {list(w.shape)} on input {list(x.onnx_shape)}")
    kernel = list(at.get("kernel_shape", w.shape[2:]))
    strides = list(at.get("strides", [1] * nd))
    dilations = list(at.get("dilations", [1] * nd))
    begin, end = _spatial_pads(lw, at, x.node.shape[1:], kernel, strides, dilations)
    if begin != end:
        x = _explicit_pad(lw, x, begin, end)
        begin = [0] * nd
    ins = [x.node, lw.const(w, name=f"{lw.base_name()}_weight")]
    if bias is not None:
        ins.append(lw.const(bias, name=f"{lw.base_name()}_bias"))
    return _Value(lw.add("conv", ins, stride=tuple(int(s) for s in strides),
                         padding=tuple(int(p) for p in begin), dilation=tuple(int(d) for d in dilations),
                         groups=int(at.get("group", 1))), True)


def _conv_transpose(lw: _Lowering, node, inputs):
    """ConvTranspose with explicit symmetric pads (what torch.onnx.export writes): the IR's
    conv_transpose; auto_pad, output_shape and asymmetric pads are refused by name."""
    at = _attrs(node)
    x = lw.batched(_perturbed(lw, inputs[0]))
    w = np.asarray(_const_input(lw, inputs[1], "the ConvTranspose weight"))
    nd = w.ndim - 2
    if nd not in (1, 2, 3) or len(x.node.shape) != nd + 1:
        raise lw.unsupported(f"ConvTranspose with weight {list(w.shape)} on input {list(x.onnx_shape)}")
    if at.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or "output_shape" in at:
        raise lw.unsupported("ConvTranspose with auto_pad or output_shape; export with explicit pads")
    pads = list(at.get("pads", [0] * 2 * nd))
    if pads[:nd] != pads[nd:]:
        raise lw.unsupported(f"ConvTranspose with asymmetric pads {pads}")
    ins = [x.node, lw.const(w, name=f"{lw.base_name()}_weight")]
    if len(inputs) > 2 and inputs[2] is not None:
        bias = np.asarray(_const_input(lw, inputs[2], "the ConvTranspose bias"))
        ins.append(lw.const(bias, name=f"{lw.base_name()}_bias"))

    def per_dim(name, default):
        return tuple(int(v) for v in at.get(name, [default] * nd))
    return _Value(lw.add("conv_transpose", ins, stride=per_dim("strides", 1),
                         padding=tuple(int(p) for p in pads[:nd]),
                         output_padding=per_dim("output_padding", 0), groups=int(at.get("group", 1)),
                         dilation=per_dim("dilations", 1)), True)


def _batch_norm(lw: _Lowering, node, inputs):
    at = _attrs(node)
    if int(at.get("training_mode", 0)):
        raise lw.unsupported("BatchNormalization in training mode; export the model in eval mode")
    x = lw.batched(_perturbed(lw, inputs[0]))
    params = [np.asarray(_const_input(lw, p, "a BatchNormalization parameter")) for p in inputs[1:5]]
    names = ("weight", "bias", "mean", "var")
    ins = [x.node] + [lw.const(p.reshape(-1), name=f"{lw.base_name()}_{n}") for p, n in zip(params, names)]
    out = _Value(lw.add("batch_norm", ins, eps=float(at.get("epsilon", 1e-5))), True)
    return [out] + [None] * (len(node.output) - 1)


def _avg_pool(lw: _Lowering, node, inputs):
    at = _attrs(node)
    x = lw.batched(_perturbed(lw, inputs[0]))
    kernel = list(at["kernel_shape"])
    nd = len(kernel)
    strides = list(at.get("strides", [1] * nd))
    if any(d != 1 for d in at.get("dilations", [1] * nd)):
        raise lw.unsupported("AveragePool with dilations")
    begin, end = _spatial_pads(lw, at, x.node.shape[1:], kernel, strides, [1] * nd)
    include = bool(int(at.get("count_include_pad", 0)))
    if begin != end or any(2 * b > k for b, k in zip(begin, kernel)):
        if not include and any(begin + end):
            raise lw.unsupported("AveragePool with asymmetric pads and count_include_pad=0")
        x = _explicit_pad(lw, x, begin, end)
        begin = [0] * nd
    return _Value(lw.add("avg_pool", [x.node], kernel_size=tuple(kernel), stride=tuple(strides),
                         padding=tuple(begin), ceil_mode=bool(int(at.get("ceil_mode", 0))),
                         count_include_pad=include), True)


def _global_avg_pool(lw: _Lowering, node, inputs):
    x = lw.batched(_perturbed(lw, inputs[0]))
    dims = tuple(range(2, len(x.node.shape) + 1))
    return _Value(lw.add("mean", [x.node], dims=dims, keepdim=True), True)


def _axes_input(lw: _Lowering, node, inputs, attr_until: int, index: int = 1):
    """Axes from the attribute (opset < attr_until) or the optional input (later opsets)."""
    if lw.opset < attr_until:
        return _attrs(node).get("axes")
    if len(inputs) > index and inputs[index] is not None:
        return [int(a) for a in np.asarray(_const_input(lw, inputs[index], "axes")).reshape(-1)]
    return None


def _reduce(op: str | Callable, attr_until: int):
    """Reduce* over the axes (attribute before opset ``attr_until``, input from then on);
    ``op`` is an IR reduction (dims, keepdim) or a builder (lw, node, dims, keepdim) -> Node."""
    def convert(lw: _Lowering, node, inputs):
        at = _attrs(node)
        v = _perturbed(lw, inputs[0])
        axes = _axes_input(lw, node, inputs, attr_until)
        keepdims = bool(int(at.get("keepdims", 1)))
        if not axes:
            if int(at.get("noop_with_empty_axes", 0)):
                return v
            axes = list(range(v.rank))
        v, dims = lw.ir_dims(v, axes)
        if not dims:
            return v
        dims = tuple(sorted(dims))
        if callable(op):
            return _Value(op(lw, v.node, dims, keepdims), v.batch)
        return _Value(lw.add(op, [v.node], dims=dims, keepdim=keepdims), v.batch)
    return convert


def _reduce_min(lw: _Lowering, x: Node, dims, keepdim) -> Node:
    """min = -max(-x), as the torch frontend lowers amin."""
    top = lw.add("amax", [lw.add("neg", [x], "_neg")], "_amax", dims=dims, keepdim=keepdim)
    return lw.add("neg", [top])


def _reduce_l1(lw: _Lowering, x: Node, dims, keepdim) -> Node:
    return lw.add("sum", [lw.add("abs", [x], "_abs")], dims=dims, keepdim=keepdim)


def _reduce_sum_square(lw: _Lowering, x: Node, dims, keepdim, suffix: str = "") -> Node:
    return lw.add("sum", [lw.add("pow", [x], "_square", exponent=2)], suffix, dims=dims,
                  keepdim=keepdim)


def _reduce_log_sum_exp(lw: _Lowering, x: Node, dims, keepdim) -> Node:
    """logsumexp = x_i - log_softmax_i for every i; their mean over i, one dim at a time (the
    last first, so the others keep their index), as the torch frontend lowers logsumexp."""
    for d in reversed(dims):
        if x.shape[d - 1] > 1:       # over one entry, logsumexp is that entry: its mean
            log_p = lw.add("log_softmax_from_diffs", [lw.add("pairwise_diff", [x], "_diff", dim=d)],
                           "_log_p", dim=d)
            x = lw.add("sub", [x, log_p], "_terms")
        x = lw.add("mean", [x], "_lse" if d != dims[0] else "", dims=(d,), keepdim=keepdim)
    return x


def _reduce_l2(lw: _Lowering, x: Node, dims, keepdim) -> Node:
    """sqrt of the sum of squares, as the torch frontend lowers a 2-norm (floor 0: exact)."""
    return lw.add("sqrt_floored", [_reduce_sum_square(lw, x, dims, keepdim, "_sum")], floor=0.0)


# -- shapes ---------------------------------------------------------------------------------------

def _shape(lw: _Lowering, node, inputs):
    shape = np.asarray(inputs[0].onnx_shape, dtype=np.int64)
    at = _attrs(node)
    start, end = at.get("start", 0), at.get("end", None)
    return shape[start:end]


def _size(lw: _Lowering, node, inputs):
    return np.asarray(int(np.prod(inputs[0].onnx_shape)), dtype=np.int64)


def _flatten(lw: _Lowering, node, inputs):
    v = _perturbed(lw, inputs[0])
    axis = int(_attrs(node).get("axis", 1))
    axis = axis + v.rank if axis < 0 else axis
    shape = v.onnx_shape
    return lw.reshape(v, (int(np.prod(shape[:axis])), int(np.prod(shape[axis:]))))


def _reshape(lw: _Lowering, node, inputs):
    v = _perturbed(lw, inputs[0])
    if lw.opset < 5:
        target = list(_attrs(node)["shape"])
    else:
        target = [int(s) for s in np.asarray(_const_input(lw, inputs[1], "the Reshape shape")).reshape(-1)]
    allow_zero = int(_attrs(node).get("allowzero", 0))
    shape = v.onnx_shape
    out = [shape[i] if (s == 0 and not allow_zero) else s for i, s in enumerate(target)]
    if out.count(-1) > 1:
        raise lw.unsupported(f"Reshape to {target} with more than one -1")
    if -1 in out:
        known = int(np.prod([s for s in out if s != -1]))
        out[out.index(-1)] = int(np.prod(shape)) // max(known, 1)
    if int(np.prod(out)) != int(np.prod(shape)):
        raise ModelFormatError(f"{lw.where()}: cannot reshape {list(shape)} to {target}")
    return lw.reshape(v, tuple(out))


def _squeeze(lw: _Lowering, node, inputs):
    v = _perturbed(lw, inputs[0])
    axes = _axes_input(lw, node, inputs, 13)
    shape = v.onnx_shape
    if axes is None:
        axes = [i for i, s in enumerate(shape) if s == 1]
    axes = {_norm_axis(int(a), v.rank) for a in axes}
    return lw.reshape(v, tuple(s for i, s in enumerate(shape) if i not in axes))


def _unsqueeze(lw: _Lowering, node, inputs):
    v = _perturbed(lw, inputs[0])
    axes = _axes_input(lw, node, inputs, 13)
    rank = v.rank + len(axes)
    axes = sorted(_norm_axis(int(a), rank) for a in axes)
    out = list(v.onnx_shape)
    for a in axes:
        out.insert(a, 1)
    return lw.reshape(v, tuple(out))


def _transpose(lw: _Lowering, node, inputs):
    v = _perturbed(lw, inputs[0])
    perm = list(_attrs(node).get("perm", reversed(range(v.rank))))
    if perm == list(range(v.rank)):
        return v
    if not (v.batch and perm[0] == 0):
        v = lw.absorb(v)
    dims = tuple(perm) if v.batch else (0,) + tuple(p + 1 for p in perm)
    return _Value(lw.add("permute", [v.node], dims=dims), v.batch)


def _concat(lw: _Lowering, node, inputs):
    axis = int(_attrs(node)["axis"])
    values = [i for i in inputs if isinstance(i, _Value)]
    rank = values[0].rank
    axis = _norm_axis(axis, rank)
    if not all(v.batch for v in values) or axis == 0:
        values = [lw.absorb(v) for v in values]
    batch = values[0].batch
    dim = axis + (0 if batch else 1)
    it = iter(values)
    nodes, sizes = [], []
    for i in inputs:
        if isinstance(i, _Value):
            v = next(it)
            nodes.append(v.node)
            sizes.append(v.onnx_shape[axis])
        else:
            c = np.asarray(i)
            if c.shape[axis] == 0:
                continue
            if batch:
                if c.shape[0] != 1:
                    raise lw.unsupported(f"Concat of a constant with leading dim {c.shape[0]}")
            else:
                c = c[None]
            if c.dtype.kind != "f":
                c = c.astype(_NP_DTYPES[lw.dtype])
            nodes.append(lw.const(c, name=f"{lw.base_name()}_const"))
            sizes.append(int(np.shape(i)[axis]))
    return _Value(lw.add("cat", nodes, dim=dim, sizes=tuple(sizes)), batch)


def _slice(lw: _Lowering, node, inputs):
    v = _perturbed(lw, inputs[0])
    if lw.opset < 10:
        at = _attrs(node)
        starts, ends = at["starts"], at["ends"]
        axes = at.get("axes", list(range(len(starts))))
        steps = [1] * len(starts)
    else:
        def arg(i, default):
            if len(inputs) > i and inputs[i] is not None:
                return [int(a) for a in np.asarray(_const_input(lw, inputs[i], "Slice arguments")).reshape(-1)]
            return default
        starts, ends = arg(1, None), arg(2, None)
        axes = arg(3, list(range(len(starts))))
        steps = arg(4, [1] * len(starts))
    for axis, start, end, step in zip(axes, starts, ends, steps):
        axis = _norm_axis(int(axis), v.rank)
        if step == 0:
            raise ModelFormatError(f"{lw.where()}: a Slice step of 0 (ONNX requires a nonzero step)")
        size = v.onnx_shape[axis]
        picked = range(*slice(max(min(start, _INT_MAX), -_INT_MAX), max(min(end, _INT_MAX), -_INT_MAX),
                              step).indices(size))
        if not picked:
            raise lw.unsupported(f"an empty Slice (axis {axis}, starts {start}, ends {end}, steps "
                                 f"{step}); lirpac bounds tensors with at least one entry: remove "
                                 "the empty branch from the model")
        if picked == range(size):
            continue
        v, (dim,) = lw.ir_dims(v, [axis])
        if step < 0:       # the entries run backwards: flip, then slice forwards
            v = _Value(lw.add("flip", [v.node], "_flip", dims=(dim,)), v.batch)
            picked = range(size - 1 - picked[0], size - picked[-1], -step)
        if picked != range(size):
            v = _Value(lw.add("slice", [v.node], dim=dim, start=picked.start, end=picked.stop,
                              step=picked.step), v.batch)
    return v


def _pad(lw: _Lowering, node, inputs):
    v = _perturbed(lw, inputs[0])
    at = _attrs(node)
    mode = at.get("mode", "constant")
    if lw.opset < 11:
        pads, value = list(at.get("pads", at.get("paddings", []))), float(at.get("value", 0.0))
        axes = list(range(v.rank))
    else:
        pads = [int(p) for p in np.asarray(_const_input(lw, inputs[1], "the Pad pads")).reshape(-1)]
        value = 0.0
        if len(inputs) > 2 and inputs[2] is not None and np.size(inputs[2]):
            value = float(np.asarray(_const_input(lw, inputs[2], "the Pad value")).reshape(-1)[0])
        axes = list(range(v.rank))
        if len(inputs) > 3 and inputs[3] is not None:
            axes = [_norm_axis(int(a), v.rank) for a in np.asarray(inputs[3]).reshape(-1)]
    if not any(pads):
        return v
    if mode != "constant":
        raise lw.unsupported(f"Pad with mode={mode!r} (only constant padding is supported)")
    if any(p < 0 for p in pads):
        raise lw.unsupported("Pad with negative pads (cropping)")
    k = len(axes)
    begin = dict(zip(axes, pads[:k]))
    end = dict(zip(axes, pads[k:]))
    padded = [a for a in range(v.rank) if begin.get(a, 0) or end.get(a, 0)]
    v, _ = lw.ir_dims(v, padded)
    first = min(padded)
    return _explicit_pad(lw, v, [begin.get(a, 0) for a in range(first, v.rank)],
                         [end.get(a, 0) for a in range(first, v.rank)], value)


# -- activations: ONNX nodes onto the IR ops the torch frontend lowers to -------------------------

def _activation(op: str, **attrs: Callable[[dict], Any]):
    """A unary ONNX activation as the IR op ``op``; ``attrs`` map the node's ONNX attributes
    to the op's attrs (ONNX defaults applied there)."""
    def convert(lw: _Lowering, node, inputs):
        at = _attrs(node)
        v = _perturbed(lw, inputs[0])
        return _Value(lw.add(op, [v.node], **{k: f(at) for k, f in attrs.items()}), v.batch)
    return convert


_SELU_ALPHA, _SELU_GAMMA = 1.67326319217681884765625, 1.05070102214813232421875


def _celu(lw: _Lowering, node, inputs):
    alpha = float(_attrs(node).get("alpha", 1.0))
    v = _perturbed(lw, inputs[0])
    return _Value(lw.add("elu", [v.node], alpha=alpha, scale=1.0, input_scale=1.0 / alpha), v.batch)


def _hard_sigmoid(lw: _Lowering, node, inputs):
    """max(0, min(1, alpha x + beta)): torch's hardsigmoid when alpha = 1/6 and beta = 1/2,
    else the affine map and a clamp."""
    at = _attrs(node)
    alpha, beta = float(at.get("alpha", 0.2)), float(at.get("beta", 0.5))
    v = _perturbed(lw, inputs[0])
    if abs(alpha - 1 / 6) < 1e-7 and beta == 0.5:
        return _Value(lw.add("hardsigmoid", [v.node]), v.batch)
    scaled = lw.add("mul", [v.node, lw.const(np.asarray(alpha, dtype=_NP_DTYPES[lw.dtype]),
                                            name=f"{lw.base_name()}_alpha")], "_scaled")
    shifted = lw.add("add", [scaled, lw.const(np.asarray(beta, dtype=_NP_DTYPES[lw.dtype]),
                                              name=f"{lw.base_name()}_beta")], "_shifted")
    return _Value(lw.add("clamp", [shifted], min=0.0, max=1.0), v.batch)


def _prelu(lw: _Lowering, node, inputs):
    """PRelu's slope, broadcast against X, as torch's per-channel weight (C,) or shared (1,)."""
    v = _perturbed(lw, inputs[0])
    slope = np.asarray(_const_input(lw, inputs[1], "the PRelu slope"), dtype=_NP_DTYPES[lw.dtype])
    if slope.size == 1:
        weight = slope.reshape(1)
    else:
        shape = (1,) * (v.rank - slope.ndim) + slope.shape
        channels = v.onnx_shape[1] if v.rank > 1 else None
        if v.rank < 2 or shape[1] != channels or any(s != 1 for i, s in enumerate(shape) if i != 1):
            raise lw.unsupported(f"PRelu with a slope of shape {list(slope.shape)}: lirpac takes "
                                 "one slope per channel (dim 1) or one for all")
        weight = slope.reshape(-1)
    v = lw.batched(v) if v.rank > 1 else v
    return _Value(lw.add("prelu", [v.node, lw.const(weight, name=f"{lw.base_name()}_slope")]), v.batch)


def _clip(lw: _Lowering, node, inputs):
    v = _perturbed(lw, inputs[0])
    if lw.opset < 11:
        at = _attrs(node)
        lo, hi = at.get("min"), at.get("max")
    else:
        def bound(i):
            if len(inputs) > i and inputs[i] is not None and np.size(inputs[i]):
                return float(np.asarray(_const_input(lw, inputs[i], "a Clip bound")).reshape(-1)[0])
            return None
        lo, hi = bound(1), bound(2)
    if lo is None and hi is None:
        return v
    attrs = {k: float(b) for k, b in (("min", lo), ("max", hi)) if b is not None}
    return _Value(lw.add("clamp", [v.node], **attrs), v.batch)


def _pow(lw: _Lowering, node, inputs):
    v = _perturbed(lw, inputs[0], "the Pow base")
    exponent = np.asarray(_const_input(lw, inputs[1], "the Pow exponent"))
    if exponent.size != 1:
        raise lw.unsupported("Pow with an exponent per element; lirpac takes one scalar exponent")
    e = float(exponent.reshape(-1)[0])
    return _Value(lw.add("pow", [v.node], exponent=int(e) if e.is_integer() else e), v.batch)


def _softmax(log: bool):
    """Softmax / LogSoftmax as the torch frontend lowers them (ir/ops/normalization.py):
    softmax_from_diffs (log_softmax_from_diffs) of the differences x_j - x_i. Before opset 13
    the op works on the dims from ``axis`` on, flattened into one."""
    def convert(lw: _Lowering, node, inputs):
        v = _perturbed(lw, inputs[0])
        axis = _norm_axis(int(_attrs(node).get("axis", -1 if lw.opset >= 13 else 1)), v.rank)
        shape = v.onnx_shape
        flat = lw.opset < 13 and axis < v.rank - 1
        if flat:
            v = lw.reshape(v, shape[:axis] + (int(np.prod(shape[axis:])),), "_flat")
        v, (dim,) = lw.ir_dims(v, [axis])
        diff = lw.add("pairwise_diff", [v.node], "_diff", dim=dim)
        out = lw.add("log_softmax_from_diffs" if log else "softmax_from_diffs", [diff], dim=dim)
        out = _Value(out, v.batch)
        return lw.reshape(out, shape, "_unflat") if flat else out
    return convert


def _softsign(lw: _Lowering, node, inputs):
    """x / (1 + |x|) as x * reciprocal(1 + |x|) (torch's Softsign exports as those nodes)."""
    v = _perturbed(lw, inputs[0])
    one = lw.const(np.ones((), _NP_DTYPES[lw.dtype]), f"{lw.base_name()}_one")
    denominator = lw.add("add", [lw.add("abs", [v.node], "_abs"), one], "_denominator")
    inverse = lw.add("reciprocal", [denominator], "_reciprocal")
    return _Value(lw.add("mul_bilinear", [v.node, inverse]), v.batch)


_ACTIVATIONS: dict[str, Callable] = {
    "Softmax": _softmax(log=False), "LogSoftmax": _softmax(log=True),
    "LeakyRelu": _activation("leaky_relu", negative_slope=lambda a: float(a.get("alpha", 0.01))),
    "Elu": _activation("elu", alpha=lambda a: float(a.get("alpha", 1.0))),
    "Selu": _activation("elu", alpha=lambda a: float(a.get("alpha", _SELU_ALPHA)),
                        scale=lambda a: float(a.get("gamma", _SELU_GAMMA))),
    "Celu": _celu, "HardSigmoid": _hard_sigmoid, "PRelu": _prelu, "Clip": _clip, "Pow": _pow,
    "Softsign": _softsign,
    "Gelu": _activation("gelu", approximate=lambda a: a.get("approximate", "none")),
    "HardSwish": _unary("hardswish"), "Mish": _unary("mish"), "Softplus": _unary("softplus"),
    "Abs": _unary("abs"), "Exp": _unary("exp"), "Log": _unary("log"), "Sqrt": _unary("sqrt"),
    "Sin": _unary("sin"), "Cos": _unary("cos"), "Erf": _unary("erf"), "Atan": _unary("atan"),
    "Sinh": _unary("sinh"), "Cosh": _unary("cosh"), "Sign": _unary("sign"),
    "Floor": _unary("floor"), "Ceil": _unary("ceil"), "Round": _unary("round"),
    "Reciprocal": _unary("reciprocal"),
}


# -- MaxPool, Gather, Split -------------------------------------------------------------------------

def _max_pool(lw: _Lowering, node, inputs):
    at = _attrs(node)
    if len(node.output) > 1 and node.output[1] and lw.consumers.get(node.output[1]):
        raise lw.unsupported("MaxPool's Indices output is used; only the pooled values are supported")
    x = lw.batched(_perturbed(lw, inputs[0]))
    kernel = list(at["kernel_shape"])
    nd = len(kernel)
    if nd not in (1, 2, 3) or len(x.node.shape) != nd + 1:
        raise lw.unsupported(f"{nd}-D MaxPool on input {list(x.onnx_shape)}; lirpac bounds 1-D, "
                             "2-D and 3-D max pooling of (N, C, spatial...) tensors")
    strides = list(at.get("strides", [1] * nd))
    dilations = list(at.get("dilations", [1] * nd))
    begin, end = _spatial_pads(lw, at, x.node.shape[1:], kernel, strides, dilations)
    if begin != end or any(2 * b > (k - 1) * d + 1 for b, k, d in zip(begin, kernel, dilations)):
        raise lw.unsupported(f"MaxPool with pads {begin + end}: lirpac takes symmetric pads of at "
                             "most half the kernel (torch's max_pool)")
    ceil_mode = bool(int(at.get("ceil_mode", 0)))
    if nd == 1:      # a 2-D pool over (1, L) with a (1, k) kernel: the same windows, exact
        channels, length = x.node.shape
        rows = lw.add("reshape", [x.node], "_rows", shape=(channels, 1, length))
        pooled = lw.add("max_pool", [rows], "_pool", kernel_size=(1, kernel[0]),
                        stride=(1, strides[0]), padding=(0, begin[0]), dilation=(1, dilations[0]),
                        ceil_mode=ceil_mode)
        out = _Value(lw.add("reshape", [pooled], shape=(channels, pooled.shape[-1])), True)
    else:
        out = _Value(lw.add("max_pool" if nd == 2 else "max_pool3d", [x.node],
                            kernel_size=tuple(kernel), stride=tuple(strides), padding=tuple(begin),
                            dilation=tuple(dilations), ceil_mode=ceil_mode), True)
    return [out] + [None] * (len(node.output) - 1)


def _gather(lw: _Lowering, node, inputs):
    """Gather with constant indices: a scalar index selects (the axis goes away), an index
    array picks along the axis and puts its shape there. Rows of a constant table at the
    token ids of the input: an embedding (ir/ops/embedding.py)."""
    if not isinstance(inputs[0], _Value) and isinstance(inputs[1], _Value) \
            and int(_attrs(node).get("axis", 0)) == 0 and not inputs[1].node.dtype.is_floating_point:
        table = lw.const(np.asarray(inputs[0]), name=f"{lw.base_name()}_table")
        return _Value(lw.add("embedding", [inputs[1].node, table]), inputs[1].batch)
    v = _perturbed(lw, inputs[0])
    indices = np.asarray(_const_input(lw, inputs[1], "the Gather indices")).astype(np.int64)
    axis = _norm_axis(int(_attrs(node).get("axis", 0)), v.rank)
    size = v.onnx_shape[axis]
    flat = [int(i) % size for i in indices.reshape(-1)]
    v, (dim,) = lw.ir_dims(v, [axis])
    picked = lw.add("index_select", [v.node], "_pick", dim=dim, index=tuple(flat))
    shape = v.onnx_shape[:axis] + indices.shape + v.onnx_shape[axis + 1:]
    return lw.reshape(_Value(picked, v.batch), shape)


def _split(lw: _Lowering, node, inputs):
    v = _perturbed(lw, inputs[0])
    at = _attrs(node)
    axis = _norm_axis(int(at.get("axis", 0)), v.rank)
    length, count = v.onnx_shape[axis], len(node.output)
    if lw.opset < 13:
        sizes = at.get("split")
    else:
        given = inputs[1] if len(inputs) > 1 else None
        sizes = None if given is None else [int(s) for s in np.asarray(
            _const_input(lw, given, "the Split sizes")).reshape(-1)]
    if sizes is None:
        count = int(at.get("num_outputs", count))
        size = -(-length // count)
        sizes = [min(size, length - i * size) for i in range(count)]
    v, (dim,) = lw.ir_dims(v, [axis])
    out, start = [], 0
    for i, size in enumerate(sizes):
        out.append(_Value(lw.add("slice", [v.node], f"_{i}", dim=dim, start=start, end=start + size,
                                 step=1), v.batch))
        start += size
    return out


# -- Expand, Tile, CumSum, DepthToSpace: linear maps that pick or add entries --------------------

def _expand(lw: _Lowering, node, inputs):
    """Expand's bidirectional broadcast to the IR's expand (size-1 dims repeated, new leading
    dims prepended); a new leading dim or a change of ONNX dim 0 absorbs the batch first."""
    v = _perturbed(lw, inputs[0])
    shape = [int(s) for s in np.asarray(_const_input(lw, inputs[1], "the Expand shape")).reshape(-1)]
    try:
        out = tuple(int(s) for s in np.broadcast_shapes(v.onnx_shape, tuple(shape)))
    except ValueError:
        raise lw.unsupported(f"shape {shape} does not broadcast with the input's "
                             f"{list(v.onnx_shape)}") from None
    if out == v.onnx_shape:
        return v
    if not (v.batch and len(out) == v.rank and out[0] == 1):
        v = lw.absorb(v)
    per_sample = out[1:] if v.batch else out
    return _Value(lw.add("expand", [v.node], shape=per_sample), v.batch)


def _tile(lw: _Lowering, node, inputs):
    v = _perturbed(lw, inputs[0])
    repeats = [int(r) for r in np.asarray(_const_input(lw, inputs[1], "the Tile repeats")).reshape(-1)]
    if len(repeats) != v.rank:
        raise ModelFormatError(f"{lw.where()}: {len(repeats)} repeats for an input of rank {v.rank}")
    if all(r == 1 for r in repeats):
        return v
    if v.batch and repeats[0] != 1:
        v = lw.absorb(v)
    return _Value(lw.add("repeat", [v.node], repeats=tuple(repeats[1:] if v.batch else repeats)),
                  v.batch)


def _cumsum(lw: _Lowering, node, inputs):
    """CumSum along a constant axis: ``reverse`` flips before and after, ``exclusive`` shifts
    the input one step along the axis (a slice and a zero pad) first; all exact linear maps."""
    at = _attrs(node)
    v = _perturbed(lw, inputs[0])
    axis = np.asarray(_const_input(lw, inputs[1], "the CumSum axis")).reshape(-1)
    if axis.size != 1:
        raise ModelFormatError(f"{lw.where()}: the axis must be a scalar, got {axis.tolist()}")
    v, (dim,) = lw.ir_dims(v, [int(axis[0])])
    x, size = v.node, v.node.shape[dim - 1]
    reverse, exclusive = bool(int(at.get("reverse", 0))), bool(int(at.get("exclusive", 0)))
    if reverse:
        x = lw.add("flip", [x], "_flip", dims=(dim,))
    if exclusive and size == 1:
        x = lw.add("mul", [x, lw.const(np.zeros((), _NP_DTYPES[lw.dtype]), f"{lw.base_name()}_zero")],
                   "_shift")
    elif exclusive:
        x = lw.add("slice", [x], "_head", dim=dim, start=0, end=size - 1, step=1)
        trailing = len(v.node.shape) - dim
        x = lw.add("pad", [x], "_shift", pad=(0, 0) * trailing + (1, 0), value=0.0)
    x = lw.add("cumsum", [x], "_scan" if reverse else "", dim=dim)
    if reverse:
        x = lw.add("flip", [x], dims=(dim,))
    return _Value(x, v.batch)


def _depth_space(to_space: bool):
    """DepthToSpace / SpaceToDepth: a reshape, a permutation and a reshape (exact)."""
    def convert(lw: _Lowering, node, inputs):
        at = _attrs(node)
        x = lw.batched(_perturbed(lw, inputs[0]))
        if len(x.node.shape) != 3:
            raise lw.unsupported(f"{node.op_type} needs an (N, C, H, W) input, got {list(x.onnx_shape)}")
        b = int(at["blocksize"])
        c, h, w = x.node.shape
        if to_space:
            crd = at.get("mode", "DCR") == "CRD"
            split = (c // (b * b), b, b, h, w) if crd else (b, b, c // (b * b), h, w)
            perm = (0, 1, 4, 2, 5, 3) if crd else (0, 3, 4, 1, 5, 2)
            out = (c // (b * b), h * b, w * b)
        else:
            split, perm, out = (c, h // b, b, w // b, b), (0, 3, 5, 1, 2, 4), (c * b * b, h // b, w // b)
        parts = lw.add("reshape", [x.node], "_blocks", shape=split)
        moved = lw.add("permute", [parts], "_move", dims=perm)
        return _Value(lw.add("reshape", [moved], shape=out), True)
    return convert


# -- LayerNormalization, InstanceNormalization, Resize -------------------------------------------

def _normalized(lw: _Lowering, v: _Value, axes, eps: float) -> _Value:
    """(x - mean) / sqrt(var + eps) over the axes, as the torch frontend lowers layer_norm:
    center, square, mean, rsqrt_floored (floor eps), one McCormick product."""
    if not eps > 0:
        raise lw.unsupported(f"epsilon={eps}: lirpac needs a positive epsilon to bound "
                             "1/sqrt(var + eps); export the normalisation with epsilon > 0")
    v, dims = lw.ir_dims(v, axes)
    dims = tuple(sorted(dims))
    centred = lw.add("center", [v.node], "_centred", dims=dims)
    square = lw.add("pow", [centred], "_square", exponent=2)
    var = lw.add("mean", [square], "_var", dims=dims, keepdim=True)
    var_eps = lw.add("add", [var, lw.const(np.asarray(eps, _NP_DTYPES[lw.dtype]), f"{lw.base_name()}_eps")],
                     "_var_eps")
    inv_std = lw.add("rsqrt_floored", [var_eps], "_inv_std", floor=float(eps))
    return _Value(lw.add("mul_bilinear", [centred, inv_std], "_normed"), v.batch)


def _affine(lw: _Lowering, v: _Value, scale, bias) -> _Value:
    """v * scale + bias with constant (broadcast) scale and optional bias."""
    v = _with_const(lw, "mul", v, scale, "_scaled")
    return v if bias is None else _with_const(lw, "add", v, bias, "")


def _layer_norm(lw: _Lowering, node, inputs):
    at = _attrs(node)
    if any(lw.consumers.get(o) or o in lw.graph_outputs for o in node.output[1:] if o):
        raise lw.unsupported("the Mean / InvStdDev outputs are used; only Y is supported")
    v = _perturbed(lw, inputs[0])
    axis = _norm_axis(int(at.get("axis", -1)), v.rank)
    scale = _const_input(lw, inputs[1], "the LayerNormalization scale")
    bias = inputs[2] if len(inputs) > 2 else None
    bias = None if bias is None else _const_input(lw, bias, "the LayerNormalization bias")
    out = _affine(lw, _normalized(lw, v, range(axis, v.rank), float(at.get("epsilon", 1e-5))),
                  scale, bias)
    return [out] + [None] * (len(node.output) - 1)


def _instance_norm(lw: _Lowering, node, inputs):
    v = lw.batched(_perturbed(lw, inputs[0]))
    if v.rank < 3:
        raise lw.unsupported(f"InstanceNormalization needs an (N, C, spatial...) input, got "
                             f"{list(v.onnx_shape)}")
    per_channel = (-1,) + (1,) * (v.rank - 2)
    scale, bias = (np.asarray(_const_input(lw, p, f"the InstanceNormalization {n}")).reshape(per_channel)
                   for p, n in ((inputs[1], "scale"), (inputs[2], "bias")))
    normed = _normalized(lw, v, range(2, v.rank), float(_attrs(node).get("epsilon", 1e-5)))
    return _affine(lw, normed, scale, bias)


# (coordinate_transformation_mode, nearest_mode) pairs that, for a whole upsampling factor k,
# read input entry o // k for output entry o, as F.interpolate's nearest does
_NEAREST_AS_FLOOR = {("asymmetric", "floor"), ("half_pixel", "round_prefer_floor"),
                     ("half_pixel", "round_prefer_ceil"), ("pytorch_half_pixel", "round_prefer_floor"),
                     ("pytorch_half_pixel", "round_prefer_ceil")}
# linear coordinate modes as F.interpolate's align_corners flag (for whole upsampling factors,
# pytorch_half_pixel is half_pixel)
_LINEAR_ALIGN_CORNERS = {"half_pixel": False, "pytorch_half_pixel": False, "align_corners": True}


def _resize(lw: _Lowering, node, inputs):
    """Upsampling of the spatial dims by whole factors: nearest (upsample_nearest) in the
    coordinate modes that read entry o // k, linear (upsample_linear) in those F.interpolate has."""
    at = _attrs(node)
    v = lw.batched(_perturbed(lw, inputs[0]))
    mode = at.get("mode", "nearest")
    coords = at.get("coordinate_transformation_mode", "half_pixel")
    rounding = at.get("nearest_mode", "round_prefer_floor")
    if lw.opset < 11:
        raise lw.unsupported("Resize of opset 10 (its coordinate rules differ); export with opset 11 "
                             "or later")
    nearest = mode == "nearest" and (coords, rounding) in _NEAREST_AS_FLOOR
    linear = mode == "linear" and coords in _LINEAR_ALIGN_CORNERS
    if not (nearest or linear):
        raise lw.unsupported(f"Resize with mode={mode!r}, coordinate_transformation_mode={coords!r}, "
                             f"nearest_mode={rounding!r}: lirpac bounds nearest upsampling (floor or "
                             "half-pixel rounding) and linear upsampling (half_pixel or align_corners "
                             "coordinates) by whole factors, which torch's nn.Upsample exports")
    if "axes" in at:
        raise lw.unsupported("Resize with the axes attribute; give scales or sizes for every dim")
    out = _upsampled_shape(lw, node, v, _resize_shape(lw, v, inputs))
    if out == v.onnx_shape:
        return v
    if nearest:
        return _Value(lw.add("upsample_nearest", [v.node], output_size=out[2:]), True)
    return _Value(lw.add("upsample_linear", [v.node], output_size=out[2:],
                         align_corners=_LINEAR_ALIGN_CORNERS[coords]), True)


def _resize_shape(lw: _Lowering, v: _Value, inputs) -> list[int]:
    """Resize's output shape from its sizes, else its scales (opset 11 on)."""
    scales, sizes = (inputs[i] if len(inputs) > i and inputs[i] is not None and np.size(inputs[i])
                     else None for i in (2, 3))
    if sizes is not None:
        return [int(n) for n in np.asarray(_const_input(lw, sizes, "the Resize sizes")).reshape(-1)]
    if scales is not None:
        factors = np.asarray(_const_input(lw, scales, "the Resize scales"), dtype=np.float64).reshape(-1)
        return [int(math.floor(n * f)) for n, f in zip(v.onnx_shape, factors)]
    raise ModelFormatError(f"{lw.where()}: neither scales nor sizes is given")


def _upsampled_shape(lw: _Lowering, node, v: _Value, out: list[int]) -> tuple[int, ...]:
    """``out``, checked to keep batch and channels and to upsample 1 to 3 spatial dims by whole
    factors (then torch's grid from the sizes is ONNX's from the scales)."""
    shape = v.onnx_shape
    if len(out) != len(shape) or tuple(out[:2]) != shape[:2] or not 1 <= len(shape) - 2 <= 3 or \
            any(o % n for o, n in zip(out[2:], shape[2:])):
        raise lw.unsupported(f"{node.op_type} from {list(shape)} to {out}: lirpac takes whole "
                             "upsampling factors of 1 to 3 spatial dims (batch and channels unchanged)")
    return tuple(out)


def _upsample(lw: _Lowering, node, inputs):
    """The deprecated Upsample (opsets 7-9), nearest mode: output entry o reads o // k."""
    at = _attrs(node)
    v = lw.batched(_perturbed(lw, inputs[0]))
    if at.get("mode", "nearest") != "nearest":
        raise lw.unsupported(f"Upsample with mode={at['mode']!r}: lirpac bounds nearest upsampling "
                             "(re-export with Resize, opset 11 or later, for linear)")
    scales = at.get("scales") if lw.opset < 9 else _const_input(lw, inputs[1], "the Upsample scales")
    factors = np.asarray(scales, dtype=np.float64).reshape(-1)
    out = _upsampled_shape(lw, node, v, [int(math.floor(n * f)) for n, f in zip(v.onnx_shape, factors)])
    if out == v.onnx_shape:
        return v
    return _Value(lw.add("upsample_nearest", [v.node], output_size=out[2:]), True)


def _global_max_pool(lw: _Lowering, node, inputs):
    x = lw.batched(_perturbed(lw, inputs[0]))
    dims = tuple(range(2, len(x.node.shape) + 1))
    return _Value(lw.add("amax", [x.node], dims=dims, keepdim=True), True)


def _variadic(op: str):
    """Sum / Mean of one or more inputs: the constants summed into one, then pairwise adds
    (ONNX broadcasting); Mean then scales."""
    def convert(lw: _Lowering, node, inputs):
        add = _binary("add")
        values = [i for i in inputs if isinstance(i, _Value)]
        consts = [_float_const(lw, i) for i in inputs if not isinstance(i, _Value)]
        out = values[0]
        for other in values[1:] + ([sum(consts[1:], consts[0])] if consts else []):
            out = add(lw, node, [out, other])
        if op == "mean" and len(inputs) > 1:
            out = _with_const(lw, "mul", out, np.asarray(1.0 / len(inputs)), "")
        return out
    return convert


def _einsum(lw: _Lowering, node, inputs):
    """Einsum of one input-dependent operand and one constant: einsum_const, with the
    equation made explicit and batch-first (ONNX's batch absorbed, a fresh letter for the IR's)."""
    equation = _attrs(node)["equation"].replace(" ", "")
    values = [i for i in inputs if isinstance(i, _Value)]
    if len(inputs) != 2 or len(values) != 1:
        raise lw.unsupported(f"Einsum of {len(inputs)} operands, {len(values)} of them input-dependent: "
                             "lirpac takes one input-dependent operand and one constant (write a "
                             "product of two input-dependent tensors as MatMul)")
    lhs, arrow, out = equation.partition("->")
    if not arrow:       # implicit output: the letters used once, in alphabetical order
        letters = [c for c in lhs if c.isalpha()]
        out = ("..." if "..." in lhs else "") + "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    x_term, w_term = lhs.split(",")
    if not isinstance(inputs[0], _Value):
        x_term, w_term = w_term, x_term
    v = lw.absorb(values[0])
    weight = _float_const(lw, next(i for i in inputs if not isinstance(i, _Value)))
    fresh = next(c for c in string.ascii_letters if c not in equation)
    return _Value(lw.add("einsum_const", [v.node, lw.const(weight, name=f"{lw.base_name()}_weight")],
                         equation=f"{fresh}{x_term},{w_term}->{fresh}{out}"), False)


# -- Max / Min, Where: elementwise choices ------------------------------------------------------

def _float_const(lw: _Lowering, c) -> np.ndarray:
    c = np.asarray(c)
    return c if c.dtype.kind == "f" else c.astype(_NP_DTYPES[lw.dtype])


def _with_const(lw: _Lowering, op: str, v: _Value, c: np.ndarray, suffix: str,
                const_first: bool = False) -> _Value:
    """``op`` of a perturbed value and a constant, broadcast as ONNX does."""
    v, c = _align_const(lw, v, _float_const(lw, c))
    const = lw.const(c, name=f"{lw.base_name()}_const")
    return _Value(lw.add(op, [const, v.node] if const_first else [v.node, const], suffix), v.batch)


def _extreme_pair(lw: _Lowering, a: _Value, b, is_max: bool) -> _Value:
    """max(a, b) = b + relu(a - b), min(a, b) = a - relu(a - b) (exact), the torch frontend's
    lowering of maximum / minimum; against a constant c, max = c + relu(a - c) and
    min = c - relu(c - a), so that IBP, monotone in a, stays exact."""
    if isinstance(b, _Value):
        if a.node is b.node:
            return a
        a, b = _align_pair(lw, a, b)
        gap = lw.add("relu", [lw.add("sub", [a.node, b.node], "_diff")], "_gap")
        return _Value(lw.add("add", [b.node, gap]) if is_max else lw.add("sub", [a.node, gap]),
                      a.batch)
    diff = _with_const(lw, "sub", a, b, "_diff", const_first=not is_max)
    gap = _Value(lw.add("relu", [diff.node], "_gap"), diff.batch)
    return _with_const(lw, "add" if is_max else "sub", gap, b, "", const_first=not is_max)


def _extreme(is_max: bool):
    """Max / Min of one or more inputs with ONNX (multidirectional) broadcasting: the constant
    inputs fold into one, then the perturbed ones pair up left to right."""
    def convert(lw: _Lowering, node, inputs):
        values = [i for i in inputs if isinstance(i, _Value)]
        consts = [_float_const(lw, i) for i in inputs if i is not None and not isinstance(i, _Value)]
        if consts:
            c = (np.maximum if is_max else np.minimum).reduce(np.broadcast_arrays(*consts))
            if np.all(c == (-np.inf if is_max else np.inf)) and _broadcast_noop(values[0], c):
                consts = []              # max(x, -inf) = x (torch's clamp without a bound)
            elif not np.all(np.isfinite(c)):
                raise lw.unsupported("a constant input with infinite or NaN entries: lirpac lowers "
                                     "max(x, c) to c + relu(x - c), which needs a finite c; replace "
                                     "them by large finite values")
            else:
                consts = [c]
        out = values[0]
        for other in values[1:] + consts:
            out = _extreme_pair(lw, out, other, is_max)
        return out
    return convert


def _where(lw: _Lowering, node, inputs):
    """Where(cond, X, Y) with a constant condition m: X * m + Y * (1 - m), exact (each entry
    takes one side, times 1, plus the other times 0)."""
    cond = np.asarray(_const_input(lw, inputs[0], "the Where condition")).astype(bool)
    keep = cond.astype(_NP_DTYPES[lw.dtype])
    parts = []
    for side, mask in ((inputs[1], keep), (inputs[2], 1 - keep)):
        if isinstance(side, _Value):
            parts.append(_with_const(lw, "mul", side, mask, "_pick"))
        else:
            parts.append(np.where(mask.astype(bool), _float_const(lw, side), 0).astype(keep.dtype))
    a, b = parts
    if isinstance(a, _Value) and isinstance(b, _Value):
        a, b = _align_pair(lw, a, b)
        return _Value(lw.add("add", [a.node, b.node]), a.batch)
    v, c = (a, b) if isinstance(a, _Value) else (b, a)
    shape = np.broadcast_shapes(cond.shape, *[np.shape(i) if not isinstance(i, _Value)
                                              else i.onnx_shape for i in inputs[1:]])
    if not np.any(c) and tuple(shape) == v.onnx_shape:
        return v
    return _with_const(lw, "add", v, c, "")


def _custom_op(node) -> str | None:
    """The IR op a node lowers to by lirpac.register_op(..., onnx_op=...), if any."""
    from lirpac.custom_ops import ONNX_OPS
    domain = "" if node.domain == "ai.onnx" else node.domain
    return ONNX_OPS.get((domain, node.op_type))


def _custom_converter(op: str):
    """A registered op: the node's inputs in order (constants as constant nodes), its
    attributes as the op's attrs."""
    def convert(lw: _Lowering, node, inputs):
        values = [i for i in inputs if isinstance(i, _Value)]
        if len({v.batch for v in values}) > 1:
            values = [lw.absorb(v) for v in values]
        it = iter(values)
        nodes = [next(it).node if isinstance(i, _Value) else
                 lw.const(np.asarray(i), name=f"{lw.base_name()}_const") for i in inputs if i is not None]
        return _Value(lw.add(op, nodes, **_attrs(node)), values[0].batch)
    return convert


_CONVERTERS: dict[str, Callable] = {
    **_ACTIVATIONS, "MaxPool": _max_pool, "Gather": _gather, "Split": _split,
    "Max": _extreme(is_max=True), "Min": _extreme(is_max=False), "Where": _where,
    "Expand": _expand, "Tile": _tile, "CumSum": _cumsum,
    "LayerNormalization": _layer_norm, "InstanceNormalization": _instance_norm, "Resize": _resize,
    "GlobalMaxPool": _global_max_pool, "Sum": _variadic("sum"), "Mean": _variadic("mean"),
    "Upsample": _upsample, "Einsum": _einsum,
    "DepthToSpace": _depth_space(to_space=True), "SpaceToDepth": _depth_space(to_space=False),
    "Add": _binary("add"), "Sub": _binary("sub"), "Mul": _binary("mul"), "Div": _binary("div"),
    "Neg": _unary("neg"), "Relu": _unary("relu"), "Sigmoid": _unary("sigmoid"), "Tanh": _unary("tanh"),
    "MatMul": _matmul, "Gemm": _gemm,
    "Conv": _conv, "ConvTranspose": _conv_transpose, "BatchNormalization": _batch_norm,
    "AveragePool": _avg_pool, "GlobalAveragePool": _global_avg_pool,
    "ReduceMean": _reduce("mean", 18), "ReduceSum": _reduce("sum", 13),
    "ReduceMax": _reduce("amax", 18), "ReduceMin": _reduce(_reduce_min, 18),
    "ReduceL1": _reduce(_reduce_l1, 18), "ReduceL2": _reduce(_reduce_l2, 18),
    "ReduceSumSquare": _reduce(_reduce_sum_square, 18), "ReduceLogSumExp": _reduce(_reduce_log_sum_exp, 18),
    "Flatten": _flatten, "Reshape": _reshape, "Squeeze": _squeeze, "Unsqueeze": _unsqueeze,
    "Transpose": _transpose, "Concat": _concat, "Slice": _slice, "Pad": _pad,
    "Shape": _shape, "Size": _size,
    "Identity": _identity, "Dropout": _identity, "Cast": _cast,
}


def supported_onnx_ops() -> list[str]:
    """ONNX operator types the frontend lowers (on input-dependent tensors)."""
    return sorted(_CONVERTERS)


# -- loading, the input, the runner, the check ------------------------------------------------------

def model_origin(model) -> str:
    """How messages name the model: its path, or "the ONNX model" for a ModelProto."""
    return repr(os.fspath(model)) if isinstance(model, (str, os.PathLike)) else "the ONNX model"


def load_model(model):
    """A ModelProto from a path or a ModelProto, checked; ModelFormatError otherwise."""
    import onnx
    origin = model_origin(model)
    if isinstance(model, onnx.ModelProto):
        proto = model
    elif isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        if not os.path.isfile(path):
            raise ModelFormatError(f"ONNX file {path!r} does not exist (or is not a file)")
        try:
            proto = onnx.load(path)
        except Exception as err:  # protobuf DecodeError and friends
            raise ModelFormatError(f"{path!r} is not a readable ONNX model: {type(err).__name__}: "
                                   f"{err}") from err
    else:
        raise ModelFormatError(f"expected an ONNX file path or onnx.ModelProto, got {type(model).__name__}")
    if not proto.graph.node:
        raise ModelFormatError(f"{origin} has an empty graph (is it an ONNX model?)")
    try:
        onnx.checker.check_model(proto)
    except Exception as err:
        raise ModelFormatError(f"{origin} is not a valid ONNX model: {str(err).splitlines()[0]}") from err
    return proto


def _opset(proto) -> int:
    for o in proto.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    return 1


def _model_input(proto):
    """(name, per-sample shape, batch flag, dtype, ONNX mode) of the one real input.

    mode: 'symbolic' (free batch dim 0), 'fixed' (batch dim 0 of size 1), 'none' (no batch dim).
    """
    inits = {i.name for i in proto.graph.initializer}
    real = [i for i in proto.graph.input if i.name not in inits]
    if len(real) != 1:
        raise UnsupportedOperationError(
            f"the ONNX model has {len(real)} inputs ({', '.join(i.name for i in real)}); lirpac bounds "
            "models with one input tensor")
    inp = real[0]
    tt = inp.type.tensor_type
    if tt.elem_type not in _FLOAT_TYPES and tt.elem_type != _TOKEN_TYPE:
        raise UnsupportedOperationError(f"input '{inp.name}' has element type {tt.elem_type}; "
                                        "lirpac supports float32 and float64 models (and int64 "
                                        "token ids that a Gather embeds)")
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim]
    if not dims:
        raise UnsupportedOperationError(f"input '{inp.name}' has no (or a scalar) shape; lirpac needs "
                                        "the input's shape in the model")
    if len(dims) >= 2 and dims[0] in (None, 1):
        batch, per_sample, mode = True, dims[1:], "symbolic" if dims[0] is None else "fixed"
    else:
        batch, per_sample, mode = False, dims, "none"
    if any(d is None for d in per_sample):
        raise UnsupportedOperationError(f"input '{inp.name}' has symbolic dims {[d or '?' for d in dims]} "
                                        "besides the batch; fix them in the model")
    return inp.name, tuple(per_sample), batch, _FLOAT_TYPES.get(tt.elem_type, torch.int64), mode


# the C++ source location and function signature onnxruntime puts in its messages
_ORT_SOURCE = re.compile(r"/onnxruntime_src/\S+ [^(]*\([^)]*\) ")


def _from_onnxruntime(err: Exception) -> bool:
    """onnxruntime's own exceptions (Fail, InvalidGraph, NotImplemented, ...: pybind classes of
    its own module); anything else, such as a bug of ours, keeps its type and traceback."""
    return type(err).__module__.startswith("onnxruntime")


class OnnxRunner:
    """Runs the original ONNX model with onnxruntime on a torch batch (batch, *input_shape) and
    returns (batch, *output_shape). Samples go one at a time unless the batch is free."""

    def __init__(self, proto, input_name: str, input_shape: tuple, output_shape: tuple, mode: str,
                 dtype: torch.dtype, origin: str = "the ONNX model"):
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.log_severity_level = 3
        self.origin, self.opset = origin, _opset(proto)
        try:
            self.session = ort.InferenceSession(proto.SerializeToString(), options,
                                                providers=["CPUExecutionProvider"])
        except Exception as err:
            if not _from_onnxruntime(err):
                raise
            raise self._error(err, "load") from err
        self.input_name = input_name
        self.output_name = proto.graph.output[0].name
        self.input_shape = tuple(input_shape)
        self.output_shape = tuple(output_shape)
        self.mode = mode
        self.np_dtype = _NP_DTYPES[dtype]
        self.max_error: float | None = None   # of the load-time check against the IR

    def _error(self, err: Exception, doing: str) -> ModelFormatError:
        """onnxruntime's exception as a ModelFormatError that names the model and the way out."""
        import onnxruntime as ort
        message = _ORT_SOURCE.sub("", str(err)).strip()
        return ModelFormatError(
            f"onnxruntime {ort.__version__} cannot {doing} {self.origin} (ONNX opset {self.opset}): "
            f"{type(err).__name__}: {message}. Hint: lirpac checks every model and confirms every "
            "counterexample with onnxruntime, so it must run the model: export it with a released "
            "opset (e.g. torch.onnx.export(..., opset_version=17)) and float32/float64 tensors, or "
            "update onnxruntime")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        try:
            return self._run(x)
        except Exception as err:
            if not _from_onnxruntime(err):
                raise
            raise self._error(err, f"run a batch of shape {tuple(x.shape)} through") from err

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().cpu().numpy().astype(self.np_dtype))
        batch = arr.shape[0]
        arr = arr.reshape(batch, *self.input_shape)
        if self.mode == "symbolic":
            out = self.session.run([self.output_name], {self.input_name: arr})[0].reshape(batch, -1)
        else:
            sample_shape = ((1,) if self.mode == "fixed" else ()) + self.input_shape
            out = np.stack([self.session.run([self.output_name], {self.input_name: s.reshape(sample_shape)})[0]
                            .reshape(-1) for s in arr]) if batch else np.zeros((0, 1), self.np_dtype)
        return torch.from_numpy(out.reshape(batch, *self.output_shape)).to(x.device)


def check_against(graph: Graph, runner: Callable, samples: int = 4, seed: int = 0) -> float:
    """Max error of the IR's forward against ``runner`` on random inputs, relative to
    max(1, max |output|)."""
    from lirpac.ir.interpret import evaluate
    x_node = graph.perturbed_input
    gen = torch.Generator().manual_seed(seed)
    if x_node.dtype.is_floating_point:
        x = torch.randn(samples, *x_node.shape, dtype=x_node.dtype, generator=gen)
        x[0] = 0.0
    else:           # token ids: rows of the embedding's table
        x = torch.randint(0, graph.set_leaf.inputs[1].shape[0], (samples, *x_node.shape), generator=gen)
    with torch.no_grad():
        ours = evaluate(graph, x).reshape(samples, -1).double()
    ref = runner(x).reshape(samples, -1).double()
    if ours.shape != ref.shape:
        raise ModelFormatError(f"the lowered IR gives outputs of shape {tuple(ours.shape)}, onnxruntime "
                               f"{tuple(ref.shape)}")
    if not torch.isfinite(ref).all():
        return 0.0 if torch.equal(ours.isfinite(), ref.isfinite()) else math.inf
    return float((ours - ref).abs().max() / max(1.0, float(ref.abs().max())))


def lower_onnx(model, *, check: bool = True, check_samples: int = 4):
    """Lower an ONNX model (path or ModelProto) to (Graph, runner).

    ``runner`` runs the original model with onnxruntime (None, with a warning, when onnxruntime
    is not installed); ``runner.max_error`` is the error of the load-time check. Raises
    ModelFormatError for unreadable or malformed files and when the IR disagrees with
    onnxruntime; UnsupportedOperationError names the ONNX op and node the IR cannot express.
    """
    proto = load_model(model)
    opset = _opset(proto)
    if opset < 8 or opset > 21:
        warnings.warn(f"ONNX opset {opset} is outside the tested range 8-21", stacklevel=2)
    name, per_sample, batch, dtype, mode = _model_input(proto)
    lowering = _Lowering(proto, opset)
    graph = lowering.run((name, per_sample, batch, dtype))
    custom = sorted({n.op_type for n in proto.graph.node if _custom_op(n)})
    if custom:
        warnings.warn(f"the ONNX model uses ops registered with lirpac.register_op "
                      f"({', '.join(custom)}), which onnxruntime cannot run: it is not checked "
                      "against onnxruntime and counterexamples are not confirmed", stacklevel=2)
        return graph, None
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        warnings.warn("onnxruntime is not installed: the ONNX model is not checked against it and "
                      "counterexamples cannot be confirmed (pip install onnxruntime)", stacklevel=2)
        return graph, None
    runner = OnnxRunner(proto, name, per_sample, graph.output.shape, mode, dtype, model_origin(model))
    if check:
        error = check_against(graph, runner, check_samples)
        runner.max_error = error
        if not error <= CHECK_TOLERANCE:
            raise ModelFormatError(
                f"lirpac's IR of this ONNX model disagrees with onnxruntime (max relative error "
                f"{error:.3g} > {CHECK_TOLERANCE:g}); this is a frontend bug: please report it with "
                "the model (lower_onnx(..., check=False) skips the check)")
    return graph, runner
