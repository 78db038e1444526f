"""Lower an nn.Module to the bound IR with torch.export.

The module is exported once with a free batch dimension (the example repeated to batch 2,
since torch.export specialises sizes 0 and 1), then each ATen node is converted by a small
converter from the table below, or generically through an OpDef's ``aten`` list. Nodes whose
inputs are all constant become ``const_fn`` nodes that the generated code evaluates.
"""
from __future__ import annotations

import contextlib
import math
import operator
import re
import warnings
from typing import Any, Callable

import torch
from torch.export import Dim, export

from lirpac.errors import InputError, UnsupportedOperationError
from lirpac.ir.graph import Graph, Node
from lirpac.ir.opdef import ATEN_LOWERINGS, REGISTRY, get_op
from lirpac.ir.attention import rewrite_attention
from lirpac.ir.recurrent import unroll_recurrent

_INT_MAX = 2 ** 62


class _Batch:
    """Stands for the symbolic batch size wherever the exported graph reads it."""

    def __repr__(self):
        return "B"


BATCH = _Batch()


class _Permuted:
    """A permute that moved the batch dimension away from dim 0 (a seq-first model's
    ``x.transpose(0, 1)``), kept pending: the IR keeps dim 0 as the batch, so only another
    permute that brings the batch back to dim 0 may use it; the two then compose into one
    permute of the batch-first node (or none)."""

    def __init__(self, node: Node, dims: tuple[int, ...]):
        self.node, self.dims = node, dims


def source_of(fx_node) -> str | None:
    """Where a node came from: 'model.py:12' when the trace has a frame outside torch, else the
    innermost module, e.g. 'layer1.0.conv1 (Conv2d)'."""
    trace = fx_node.meta.get("stack_trace") or ""
    frames = [(p, line) for p, line in re.findall(r'File "([^"]+)", line (\d+)', trace)
              if "/torch/" not in p and not p.startswith("torch/")]
    if frames:
        path, line = frames[-1]
        return f"{path.rsplit('/', 1)[-1]}:{line}"
    stack = fx_node.meta.get("nn_module_stack") or {}
    if stack:
        path, cls = list(stack.values())[-1]
        cls = cls.rsplit(".", 1)[-1] if isinstance(cls, str) else getattr(cls, "__name__", str(cls))
        return f"{path} ({cls})" if path else f"{cls}.forward"
    return None


class _Lowering:
    def __init__(self, exported, module: torch.nn.Module, perturbed_inputs: set[str]):
        self.exported = exported
        self.module = module
        self.graph = Graph()
        self.env: dict[Any, Any] = {}
        self.perturbed_inputs = perturbed_inputs
        self.fx_node = None
        self.batch_symbol = None    # the SymInt of the batch size, read off the first input
        # constants of batch dim 1 that stand for a batch of equal rows (torch.zeros(B, ...))
        self.row_constants: set[int] = set()

    def is_batch_dim(self, size) -> bool:
        return isinstance(size, torch.SymInt) and str(size) == str(self.batch_symbol)

    # -- helpers ---------------------------------------------------------------------------
    def error(self, message: str, hint: str = "") -> UnsupportedOperationError:
        n = self.fx_node
        src = source_of(n)
        where = f"node %{n.name}" + (f" ({src})" if src else "")
        return UnsupportedOperationError(f"{message} at {where}" + (f". {hint}" if hint else ""))

    def value(self, arg):
        if isinstance(arg, torch.fx.Node):
            return self.env[arg]
        if isinstance(arg, (list, tuple)):
            return type(arg)(self.value(a) for a in arg)
        return arg

    def meta_shape(self, fx_node=None):
        val = (fx_node or self.fx_node).meta.get("val")
        if isinstance(val, (tuple, list)):     # multi-output ops (batch norm): the first is the value
            val = val[0]
        return tuple(val.shape), val.dtype

    def add(self, op: str, inputs: list[Node], name: str | None = None, **attrs) -> Node:
        n = self.fx_node
        shape, dtype = self.meta_shape()
        batched = any(i.batched for i in inputs)
        if batched:
            if not shape or not self.is_batch_dim(shape[0]):
                raise self.error(f"'{n.target}' mixes the batch dimension with others "
                                 "(lirpac keeps dim 0 as the batch); reshape per sample instead")
            shape = shape[1:]
        node = self.graph.add(op, inputs, name=name or n.name, attrs=attrs,
                              shape=tuple(int(s) for s in shape), dtype=dtype, batched=batched,
                              perturbed=any(i.perturbed for i in inputs), source=source_of(n))
        opdef = get_op(op)  # every op the frontend emits must be registered
        refusal = node.perturbed and opdef.check_attrs and opdef.check_attrs(**attrs)
        if refusal:
            raise self.error(refusal)
        return node

    def constant(self, value, like: Node) -> Node:
        tensor = torch.as_tensor(value, dtype=like.dtype)
        return self.graph.add("constant", [], name="const", shape=tuple(tensor.shape),
                              dtype=tensor.dtype, value=tensor)

    def operand(self, arg, like: Node) -> Node:
        v = self.value(arg)
        return v if isinstance(v, Node) else self.constant(v, like)

    # -- the walk --------------------------------------------------------------------------
    def run(self) -> Graph:
        sig = self.exported.graph_signature
        params = sig.inputs_to_parameters
        buffers = sig.inputs_to_buffers
        constants = getattr(sig, "inputs_to_lifted_tensor_constants", {})
        user_inputs = list(sig.user_inputs)
        for n in self.exported.graph.nodes:
            self.fx_node = n
            if n.op == "placeholder":
                if n.name in params:
                    target = params[n.name]
                    t = self.module.get_parameter(target)
                    self.env[n] = self.graph.add("param", [], name=n.name, attrs={"target": target},
                                                 shape=tuple(t.shape), dtype=t.dtype, value=t)
                elif n.name in buffers or n.name in constants:
                    target = buffers.get(n.name) or constants[n.name]
                    t = (self.module.get_buffer(target) if n.name in buffers
                         else self.exported.constants[target])
                    self.env[n] = self.graph.add("constant", [], name=n.name, attrs={"target": target},
                                                 shape=tuple(t.shape), dtype=t.dtype, value=t)
                elif n.name in user_inputs:
                    shape, dtype = self.meta_shape()
                    if self.batch_symbol is None:
                        self.batch_symbol = shape[0]
                    self.env[n] = self.graph.add("input", [], name=n.name, shape=tuple(int(s) for s in shape[1:]),
                                                 dtype=dtype, batched=True,
                                                 perturbed=n.name in self.perturbed_inputs)
                else:
                    raise self.error("unexpected exported input")
            elif n.op == "call_function":
                self.env[n] = self.convert(n)
            elif n.op == "output":
                outs = [a for a, spec in zip(n.args[0], sig.output_specs)
                        if a is not None and spec.kind.name == "USER_OUTPUT"]
                if len(outs) != 1:
                    raise self.error(f"the model returns {len(outs)} tensors; lirpac bounds one "
                                     "output tensor (wrap the model to return one)")
                out = self.env[outs[0]]
                if isinstance(out, _Permuted):
                    raise self.error("the model returns a tensor whose batch dimension is not "
                                     "dim 0; move it back (e.g. y.transpose(0, 1))")
                if out is None:
                    raise self.error("the model returns an output lirpac does not compute (such "
                                     "as the indices of a max/min: an argmax has no bounds)",
                                     "return the values of the max/min, or the logits")
                if not isinstance(out, Node) or not out.perturbed:
                    raise self.error("the model's output does not depend on its perturbed input")
                self.graph.output = out
        return self.graph

    def convert(self, n):
        val = n.meta.get("val")
        if n.target is operator.getitem:
            return self.env[n.args[0]][n.args[1]]
        if isinstance(val, torch.SymInt):
            # sizes read from the graph: only the batch size is symbolic
            return BATCH if not val.node.is_constant() else int(val)
        name = str(n.target)  # 'aten.relu.default'
        key = name[len("aten."):] if name.startswith("aten.") else name
        inputs = [self.env[a] for a in n.all_input_nodes]
        if any(isinstance(i, _Permuted) for i in inputs) and key not in _ALIASES:
            if key in ("permute.default", "transpose.int"):
                return _CONVERTERS[key](self, *n.args, **n.kwargs)
            raise self.error(
                f"'{name}' on a tensor whose batch dimension was moved from dim 0 by a permute",
                "lirpac keeps dim 0 as the batch: move it back (e.g. x.transpose(0, 1)) before "
                "other ops, or use batch_first modules")
        tensor_inputs = [i for i in inputs if isinstance(i, Node)]
        if key.startswith("_assert"):         # shape/dtype checks of the trace: nothing to bound
            return None
        for a, v in zip(n.all_input_nodes, inputs):
            if v is None:       # e.g. max.dim's indices (ir/ops/pooling.py)
                raise self.error(f"'{name}' reads %{a.name}, an output lirpac does not compute "
                                 "(such as the indices of a max/min: an argmax has no bounds)",
                                 "use the values of the max/min, not their indices")
        if key in _BATCH_FILLS and self.value(_size_arg(n)[0:1]) == [BATCH]:
            return self.batch_fill(n, key)
        rounding = key in _ALIASES and _rounding_cast(n)
        if rounding and any(i.perturbed for i in tensor_inputs):
            return self.rounding_cast(n, self.value(n.args[0]), rounding)
        if tensor_inputs and not any(i.perturbed for i in tensor_inputs) and (
                key not in _ALIASES or rounding):
            return self.const_fn(n, name)
        if not tensor_inputs:
            return self.const_fn(n, name)
        if key in _ALIASES:
            return self.value(n.args[0])
        if key in _CONVERTERS:
            return _CONVERTERS[key](self, *n.args, **n.kwargs)
        if key in ATEN_LOWERINGS:
            return ATEN_LOWERINGS[key](self, *n.args, **n.kwargs)
        if key in _GENERIC:
            return self.generic(n, _GENERIC[key])
        if key.startswith("_assert") or key in ("_assert_tensor_metadata.default",):
            return None
        raise self.error(
            f"unsupported op '{name}'",
            "lirpac has no bound rule for it. Supported ATen ops are listed in docs/ops.md: "
            "rewrite the model with those, or give lirpac its bound rules with "
            "lirpac.register_op (docs/custom_ops.md)")

    def rounding_cast(self, n, x: Node, to: str) -> Node:
        """A cast of the perturbed tensor that rounds: to an integer dtype it is trunc (toward
        0), to bool it is x != 0, i.e. sign(|x|); both keep x's float dtype in the IR (a later
        .float() is an alias). A half-precision rounding has no such op: refused."""
        if n.meta["val"].dtype in (torch.float16, torch.bfloat16):
            raise self.error(f"a cast of the perturbed tensor to {to}",
                             "lirpac bounds float32/float64 values (a half-precision cast rounds "
                             "each value); remove the cast")
        steps = ["abs", "sign"] if n.meta["val"].dtype == torch.bool else ["trunc"]
        for i, op in enumerate(steps):
            x = self.add(op, [x], name=n.name if i == len(steps) - 1 else f"{n.name}_{op}")
            x.dtype = x.inputs[0].dtype
        return x

    def constant_shape(self, shape) -> tuple[int, ...]:
        """A constant's full shape, with a batch dim of 1 where the graph has the batch size."""
        return tuple(1 if i == 0 and self.is_batch_dim(s) else int(s) for i, s in enumerate(shape))

    def batch_fill(self, n, key: str) -> Node:
        """``torch.zeros(batch_size, ...)``, ``x.new_zeros(x.size(0), ...)`` (an RNN's initial
        state): the same value for every sample, so a constant with a batch dim of 1 that
        broadcasts over the batch."""
        size = [1] + [int(s) for s in self.value(_size_arg(n))[1:]]
        dtype = n.meta["val"].dtype
        value = (torch.full(size, float(_BATCH_FILLS[key](n)), dtype=dtype))
        node = self.graph.add("constant", [], name=n.name, shape=tuple(size), dtype=dtype,
                              value=value, source=source_of(n))
        self.row_constants.add(id(node))
        return node

    def const_fn(self, n, name: str) -> Node:
        inputs: list[Node] = []
        # a constant expanded over the batch (a gather index) stays batch 1 and broadcasts
        batch_expand = name == "aten.expand.default" and self.value(n.args[1][0]) is BATCH
        # a constant of batch size made of rows that are all alike (a zero state): computed
        # at batch 1, unless the op works along the batch dim
        val = n.meta.get("val")
        first = val[0] if isinstance(val, (list, tuple)) and val else val
        uniform = (isinstance(first, torch.Tensor) and first.dim() > 0
                   and self.is_batch_dim(first.shape[0]) and not batch_expand)
        if uniform and _along_batch(n):
            raise self.error(f"'{name}' works along the batch dimension of a constant")

        def slot(a):
            if isinstance(a, torch.fx.Node):
                v = self.env[a]
                if isinstance(v, Node):
                    inputs.append(v)
                    return ("%input", len(inputs) - 1)
                if v is BATCH and (batch_expand and a is n.args[1][0] or uniform):
                    return 1
                if v is BATCH:
                    raise self.error(f"'{name}' on constants reads the batch size")
                return v
            if isinstance(a, (list, tuple)):
                return [slot(v) for v in a]
            return a
        args = tuple(slot(a) for a in n.args)
        kwargs = {k: slot(v) for k, v in n.kwargs.items()}
        if isinstance(val, (list, tuple)) and val and all(isinstance(v, torch.Tensor) for v in val):
            return [self.graph.add("const_fn", inputs, name=f"{n.name}_{i}", dtype=v.dtype,
                                   shape=self.constant_shape(v.shape), source=source_of(n),
                                   attrs=dict(target=name, args=args, kwargs=kwargs, item=i))
                    for i, v in enumerate(val)]
        if not isinstance(n.meta.get("val"), torch.Tensor):
            raise self.error(f"'{name}' does not produce a tensor")
        if batch_expand or uniform:
            shape, dtype = self.meta_shape()
            node = self.graph.add("const_fn", inputs, name=n.name, shape=(1, *map(int, shape[1:])),
                                  dtype=dtype, source=source_of(n),
                                  attrs=dict(target=name, args=args, kwargs=kwargs))
            if uniform:
                self.row_constants.add(id(node))
            return node
        if any(id(i) in self.row_constants for i in inputs):
            raise self.error(f"'{name}' reduces a constant of batch size (torch.zeros(batch, "
                             "...)) over its batch dimension",
                             "make the constant per sample (e.g. torch.zeros(1, ...))")
        return self.add("const_fn", inputs, target=name, args=args, kwargs=kwargs)

    def generic(self, n, op: str) -> Node:
        schema = n.target._schema
        inputs, attrs = [], {}
        for i, arg in enumerate(schema.arguments):
            given = n.args[i] if i < len(n.args) else n.kwargs.get(arg.name, arg.default_value
                                                                   if arg.has_default_value() else None)
            if isinstance(given, torch.fx.Node):
                inputs.append(self.env[given])
            elif "Tensor" in str(arg.type):
                if given is not None:
                    raise self.error(f"unexpected tensor argument {arg.name}")
            else:
                attrs[arg.name] = given
        return self.add(op, inputs, **attrs)


def _size_arg(n) -> list:
    """The size list of a factory op (zeros(size), new_zeros(x, size), full(size, v))."""
    return list(n.args[1] if str(n.target).startswith("aten.new_") else n.args[0])


_BATCH_FILLS: dict[str, Callable] = {
    "zeros.default": lambda n: 0.0, "ones.default": lambda n: 1.0,
    "full.default": lambda n: n.args[1], "new_zeros.default": lambda n: 0.0,
    "new_ones.default": lambda n: 1.0, "new_full.default": lambda n: n.args[2],
}


def _along_batch(n) -> bool:
    """Whether an ATen call names dim 0 in a dim argument (a sum over the batch, say)."""
    schema = getattr(n.target, "_schema", None)
    if schema is None:
        return False
    if str(n.target) == "aten.slice.Tensor":      # x[:] keeps every row
        start, end = (list(n.args[2:4]) + [None, None])[:2]
        if start in (None, 0) and (end is None or not isinstance(end, int) or end >= _INT_MAX // 4):
            return False
    for i, arg in enumerate(schema.arguments):
        if arg.name not in ("dim", "dims", "dim0", "dim1", "start_dim"):
            continue
        given = n.args[i] if i < len(n.args) else n.kwargs.get(arg.name)
        given = given if isinstance(given, (list, tuple)) else [given]
        first = n.args[0].meta.get("val") if isinstance(n.args[0], torch.fx.Node) else None
        rank = first.dim() if isinstance(first, torch.Tensor) else 1
        if any(isinstance(d, int) and d % max(rank, 1) == 0 for d in given):
            return True
    return False


def _dims(x: Node, dims, lowering: _Lowering) -> list[int]:
    rank = len(x.shape) + 1
    out = []
    for d in ([dims] if isinstance(dims, int) else dims):
        d = d + rank if d < 0 else d
        if d == 0:
            raise lowering.error("an op along the batch dimension (dim 0) cannot be bounded per sample")
        out.append(d)
    return out


# -- converters: (lowering, *aten args) -> Node ---------------------------------------------------

def _linear(lw: _Lowering, x, weight, bias=None):
    x, weight = lw.value(x), lw.value(weight)
    if weight.perturbed:
        raise lw.error("linear with a perturbed weight", "perturb an nn.Linear's weight with "
                       "lirpac.PerturbedParameters, or write W x as torch.matmul")
    bias = lw.value(bias)
    if isinstance(bias, Node) and bias.perturbed:     # a per-sample bias: added after the product
        out = lw.add("linear", [x, weight], name=lw.fx_node.name + "_product")
        return lw.add("add", [out, bias])
    return lw.add("linear", [x, weight] + ([bias] if bias is not None else []))


def _addmm(lw: _Lowering, bias, x, mat2, beta=1, alpha=1):
    if beta != 1 or alpha != 1:
        raise lw.error("addmm with beta/alpha != 1")
    x, mat2 = lw.value(x), lw.value(mat2)
    out = lw.add("matmul_const_right", [x, mat2])
    return lw.add("add", [out, lw.operand(bias, out)], name=lw.fx_node.name + "_bias")


def _matmul(lw: _Lowering, a, b):
    a, b = lw.value(a), lw.value(b)
    if a.perturbed and b.perturbed:     # products of perturbed tensors: ir/ops/bivariate.py
        return ATEN_LOWERINGS["matmul.default"](lw, a, b)
    if b.perturbed:
        return lw.add("matmul_const_left", [a, b])
    return lw.add("matmul_const_right", [a, b])


def _conv(lw: _Lowering, x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    x, weight = lw.value(x), lw.value(weight)
    if weight.perturbed or (bias is not None and lw.value(bias).perturbed):
        raise lw.error("conv with a perturbed weight or bias", "perturb a conv layer's parameters "
                       "with lirpac.PerturbedParameters")
    nd = len(weight.shape) - 2
    if isinstance(padding, str):
        raise lw.error(f"conv with padding='{padding}'; use explicit integer padding")

    def tup(v):
        v = list(v) if isinstance(v, (list, tuple)) else [v]
        return tuple(v * nd if len(v) == 1 else v)
    inputs = [x, weight] + ([lw.value(bias)] if bias is not None else [])
    return lw.add("conv", inputs, stride=tup(stride), padding=tup(padding), dilation=tup(dilation),
                  groups=groups)


def _convolution(lw: _Lowering, x, weight, bias, stride, padding, dilation, transposed, output_padding, groups):
    if transposed:
        raise lw.error("transposed convolution is not supported yet")
    return _conv(lw, x, weight, bias, stride, padding, dilation, groups)


def _batch_norm(lw: _Lowering, x, weight, bias, mean, var, training, momentum, eps, *rest):
    if training:
        raise lw.error("batch norm in training mode (batch statistics); call model.eval() first")
    return _bn(lw, x, weight, bias, mean, var, eps)


def _bn(lw, x, weight, bias, mean, var, eps):
    x = lw.value(x)
    like = x
    ins = [x] + [lw.value(v) if v is not None else lw.constant(1.0 if i == 0 else 0.0, like)
                 for i, v in enumerate((weight, bias))]
    ins += [lw.value(mean), lw.value(var)]
    return lw.add("batch_norm", ins, eps=float(eps))


def _bn_no_training(lw: _Lowering, x, weight, bias, mean, var, momentum, eps):
    return (_bn(lw, x, weight, bias, mean, var, eps), None, None)


def _reshape(lw: _Lowering, x, *rest, **kw):
    x = lw.value(x)
    shape, _ = lw.meta_shape()
    if not shape or not lw.is_batch_dim(shape[0]):
        raise lw.error("this reshape merges the batch dimension with others; keep dim 0 as the "
                       "batch (e.g. x.view(x.shape[0], -1) or x.flatten(1))")
    per_sample = tuple(int(s) for s in shape[1:])
    if per_sample == x.shape:
        return x
    return lw.add("reshape", [x], shape=per_sample)


def _flatten(lw: _Lowering, x, start_dim=0, end_dim=-1):
    node = lw.value(x)
    if start_dim == 0 and len(node.shape) > 0:
        raise lw.error("flatten from dim 0 merges the batch; use torch.flatten(x, 1)")
    return _reshape(lw, x)


def _permute(lw: _Lowering, x, dims):
    node = lw.value(x)
    pending = node if isinstance(node, _Permuted) else None
    node = pending.node if pending else node
    rank = len(node.shape) + 1
    dims = [d + rank if d < 0 else d for d in dims]
    if pending:     # permute(permute(x, p), d) = permute(x, p[d])
        dims = [pending.dims[d] for d in dims]
    if dims[0] != 0:
        return _Permuted(node, tuple(dims))
    if dims == list(range(rank)):
        return node
    return lw.add("permute", [node], dims=tuple(dims))


def _transpose(lw: _Lowering, x, d0, d1):
    node = lw.value(x)
    rank = len((node.node if isinstance(node, _Permuted) else node).shape) + 1
    dims = list(range(rank))
    d0, d1 = d0 % rank, d1 % rank
    dims[d0], dims[d1] = dims[d1], dims[d0]
    return _permute(lw, x, dims)


def _binary(op: str):
    def convert(lw: _Lowering, a, b, alpha=1):
        a_v, b_v = lw.value(a), lw.value(b)
        like = a_v if isinstance(a_v, Node) else b_v
        a_n, b_n = lw.operand(a, like), lw.operand(b, like)
        if alpha != 1:
            b_n = lw.add("mul", [b_n, lw.constant(alpha, like)], name=lw.fx_node.name + "_alpha")
        if op in ("mul", "div") and b_n.perturbed and (a_n.perturbed or op == "div"):
            return ATEN_LOWERINGS[f"{op}.Tensor"](lw, a_n, b_n)   # ir/ops/bivariate.py
        return lw.add(op, [a_n, b_n])
    return convert


def _rsub(lw: _Lowering, a, b, alpha=1):
    return _binary("sub")(lw, b, a) if alpha == 1 else _binary("sub")(lw, lw.value(b), a)


def _slice(lw: _Lowering, x, dim=0, start=None, end=None, step=1):
    node = lw.value(x)
    rank = len(node.shape) + 1
    dim = dim + rank if dim < 0 else dim
    if dim == 0:
        if (start in (None, 0)) and (end is None or end >= _INT_MAX // 4 or end is BATCH) and step == 1:
            return node
        raise lw.error("slicing the batch dimension")
    size = node.shape[dim - 1]
    start, stop, step = slice(start, end if end is not BATCH else None, step).indices(size)
    if (start, stop, step) == (0, size, 1):
        return node
    return lw.add("slice", [node], dim=dim, start=start, end=stop, step=step)


def _select(lw: _Lowering, x, dim, index):
    node = lw.value(x)
    rank = len(node.shape) + 1
    dim = dim + rank if dim < 0 else dim
    if dim == 0:
        raise lw.error("selecting along the batch dimension")
    index = index % node.shape[dim - 1]
    sliced = lw.add("slice", [node], name=lw.fx_node.name + "_slice", dim=dim, start=index,
                    end=index + 1, step=1) if node.shape[dim - 1] != 1 else node
    # the slice keeps the selected dim (size 1); the fx meta shape is the squeezed one
    sliced.shape = node.shape[:dim - 1] + (1,) + node.shape[dim:]
    shape, _ = lw.meta_shape()
    return lw.add("reshape", [sliced], shape=tuple(int(s) for s in shape[1:]))


def _cat(lw: _Lowering, tensors, dim=0):
    nodes = [lw.value(t) for t in tensors]
    like = next(n for n in nodes if n.perturbed)
    dim = _dims(like, dim, lw)[0]
    sizes = tuple(n.shape[dim - 1] if n.batched else n.shape[dim] for n in nodes)
    return lw.add("cat", nodes, dim=dim, sizes=sizes)


def _pad(lw: _Lowering, x, pad, value=0.0):
    if all(p == 0 for p in pad):
        return lw.value(x)
    return lw.add("pad", [lw.value(x)], pad=tuple(pad), value=float(value))


def _pad_mode(lw: _Lowering, x, pad, mode="constant", value=None):
    if mode in ("reflect", "replicate", "circular"):     # index selections, exact
        from lirpac.ir.ops.aten_composites import pad_by_index
        return pad_by_index(lw, lw.value(x), list(pad), mode)
    if mode != "constant":
        raise lw.error(f"pad with mode='{mode}'", "use 'constant', 'reflect', 'replicate' or "
                       "'circular'")
    return _pad(lw, x, pad, value or 0.0)


def _avg_pool(lw: _Lowering, x, kernel_size, stride=(), padding=0, ceil_mode=False,
              count_include_pad=True, divisor_override=None):
    node = lw.value(x)
    nd = len(node.shape) - 1

    def tup(v):
        v = list(v) if isinstance(v, (list, tuple)) else [v]
        return tuple(v * nd if len(v) == 1 else v)
    stride = tup(stride) if stride not in ((), [], None) else tup(kernel_size)
    attrs = dict(kernel_size=tup(kernel_size), stride=stride, padding=tup(padding),
                 ceil_mode=bool(ceil_mode), count_include_pad=bool(count_include_pad))
    if divisor_override is not None:
        attrs["divisor_override"] = divisor_override
    return lw.add("avg_pool", [node], **attrs)


def _adaptive_avg_pool(lw: _Lowering, x, output_size):
    node = lw.value(x)
    spatial = node.shape[1:]
    output_size = tuple(output_size)
    if all(o == 1 for o in output_size):
        dims = tuple(range(2, 2 + len(spatial)))
        return lw.add("mean", [node], dims=dims, keepdim=True)
    if all(s % o == 0 for s, o in zip(spatial, output_size)):
        kernel = tuple(s // o for s, o in zip(spatial, output_size))
        return lw.add("avg_pool", [node], kernel_size=kernel, stride=kernel,
                      padding=(0,) * len(kernel), ceil_mode=False, count_include_pad=True)
    return lw.add("adaptive_avg_pool", [node], output_size=output_size)


def _reduce(op: str):
    def convert(lw: _Lowering, x, dim=None, keepdim=False, dtype=None):
        node = lw.value(x)
        dims = list(range(1, len(node.shape) + 1)) if dim in (None, []) else _dims(node, dim, lw)
        return lw.add(op, [node], dims=tuple(dims), keepdim=bool(keepdim))
    return convert


def _filled_like(fill):
    def convert(lw: _Lowering, x, *args, **kwargs):
        """A tensor of the input's shape whose values do not depend on it: a constant with
        a batch dim of 1 that broadcasts over the batch."""
        node = lw.value(x)
        value = fill(node, args, kwargs)
        out = lw.graph.add("constant", [], name=lw.fx_node.name, shape=tuple(value.shape),
                           dtype=value.dtype, value=value, source=source_of(lw.fx_node))
        lw.row_constants.add(id(out))
        return out
    return convert


_CONVERTERS: dict[str, Callable] = {
    "ones_like.default": _filled_like(lambda n, a, k: torch.ones((1, *n.shape), dtype=n.dtype)),
    "zeros_like.default": _filled_like(lambda n, a, k: torch.zeros((1, *n.shape), dtype=n.dtype)),
    "full_like.default": _filled_like(lambda n, a, k: torch.full((1, *n.shape), float(a[0]), dtype=n.dtype)),
    "linear.default": _linear,
    "addmm.default": _addmm,
    "matmul.default": _matmul,
    "mm.default": _matmul,
    "conv1d.default": _conv,
    "conv2d.default": _conv,
    "conv3d.default": _conv,
    "convolution.default": _convolution,
    "batch_norm.default": _batch_norm,
    "_native_batch_norm_legit_no_training.default": _bn_no_training,
    "view.default": _reshape,
    "reshape.default": _reshape,
    "_unsafe_view.default": _reshape,
    "flatten.using_ints": _flatten,
    "squeeze.dim": _reshape,
    "squeeze.dims": _reshape,
    "squeeze.default": _reshape,
    "unsqueeze.default": _reshape,
    "permute.default": _permute,
    "transpose.int": _transpose,
    "add.Tensor": _binary("add"),
    "sub.Tensor": _binary("sub"),
    "mul.Tensor": _binary("mul"),
    "div.Tensor": _binary("div"),
    "rsub.Scalar": _rsub,
    "slice.Tensor": _slice,
    "select.int": _select,
    "cat.default": _cat,
    "constant_pad_nd.default": _pad,
    "pad.default": _pad_mode,
    "avg_pool1d.default": _avg_pool,
    "avg_pool2d.default": _avg_pool,
    "avg_pool3d.default": _avg_pool,
    "adaptive_avg_pool1d.default": _adaptive_avg_pool,
    "adaptive_avg_pool2d.default": _adaptive_avg_pool,
    "mean.dim": _reduce("mean"),
    "mean.default": _reduce("mean"),
    "sum.dim_IntList": _reduce("sum"),
    "sum.default": _reduce("sum"),
    "neg.default": lambda lw, x: lw.add("neg", [lw.value(x)]),
}

# ops that return their (first) input unchanged in eval mode
_ALIASES = {"dropout.default", "clone.default", "contiguous.default", "alias.default",
            "detach.default", "lift_fresh_copy.default", "feature_dropout.default",
            "alpha_dropout.default", "_to_copy.default", "to.dtype", "to.dtype_layout",
            "to.device", "identity.default"}


def _rounding_cast(n) -> str | None:
    """The dtype an alias-like ATen call (``x.long()``, ``x.half()``: ``_to_copy``) casts a
    float tensor to when that rounds it (an integer, bool or half-precision dtype), else None.
    Such a cast is no alias: its value is computed (constants) or bounded as the rounding it
    is (perturbed tensors, ``rounding_cast``)."""
    out, src = n.meta.get("val"), getattr(n.args[0], "meta", {}).get("val") if n.args else None
    if (not isinstance(out, torch.Tensor) or not isinstance(src, torch.Tensor)
            or out.dtype == src.dtype or not src.dtype.is_floating_point):
        return None     # (token ids cast from one integer type to another keep their values)
    if not out.dtype.is_floating_point or out.dtype in (torch.float16, torch.bfloat16):
        return str(out.dtype)
    return None


def _generic_table() -> dict[str, str]:
    get_op("input")
    return {aten: op.name for op in REGISTRY.values() for aten in op.aten}


_GENERIC: dict[str, str] = {}


def supported_aten_ops() -> list[str]:
    """Every ATen op (overload) the torch frontend lowers."""
    return sorted(set(_CONVERTERS) | _ALIASES | set(_generic_table()) | set(ATEN_LOWERINGS))


def _example_batch(example: torch.Tensor) -> torch.Tensor:
    if example.dim() == 0:
        raise InputError("the example input must have a batch dimension (dim 0)")
    if example.shape[0] >= 2:
        return example
    return torch.cat([example, example], 0)


_HALF_TYPES = (torch.float16, torch.bfloat16)


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _check_tensors(module: torch.nn.Module, example: torch.Tensor) -> None:
    """The model and the example must hold values, agree on one float dtype, and not be in half
    precision: a float16/bfloat16 forward pass rounds every op (about 1e-3 on a small MLP,
    a hundred half-precision ulps near 0), which no bound computed without that rounding can
    promise to contain."""
    tensors = [*module.parameters(), *module.buffers()]
    if example.device.type == "meta" or any(t.device.type == "meta" for t in tensors):
        where = "example_input is" if example.device.type == "meta" else "the model's parameters are"
        raise InputError(f"lirpac.compile: {where} on the meta device, which holds shapes but no "
                         "values; load the weights (or give an example) on the cpu or a gpu")
    tokens = example.dtype in (torch.int64, torch.int32)   # (read by an embedding: Graph.set_leaf)
    if not tokens and not example.is_floating_point():
        raise InputError(f"example_input must be a floating-point tensor, or integer token ids, "
                         f"got {_name(example.dtype)}")
    half = sorted({_name(t.dtype) for t in [*tensors, example] if t.dtype in _HALF_TYPES})
    if half:
        raise InputError(f"lirpac.compile: the model or example_input is in {' and '.join(half)}; "
                         "lirpac bounds float32 and float64 models only, since a half-precision "
                         "forward pass rounds each op and its outputs can lie outside bounds computed "
                         "without that rounding. Convert both first: model.float(), example.float()")
    params = sorted({_name(p.dtype) for p in module.parameters() if p.is_floating_point()})
    if params and params != [_name(example.dtype)] and not tokens:
        raise InputError(f"lirpac.compile: the dtypes differ: the model's parameters are "
                         f"{' and '.join(params)} but example_input is {_name(example.dtype)}; convert "
                         f"one to match (model.to(torch.{_name(example.dtype)}) or "
                         f"example.to(torch.{params[0]}))")


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module):
    """``module`` in eval mode inside the block; afterwards every submodule's own training
    flag is as it was (compiling or running the model must not change the user's module)."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in flags:
            m.training = training


def lower_module(module: torch.nn.Module, example: torch.Tensor) -> Graph:
    """Export ``module`` at the example's per-sample shape with a free batch and lower it
    (a tuple of examples: the model's inputs, joined into one, ir/joint_inputs.py)."""
    if isinstance(example, (tuple, list)) and len(example) > 1:
        from lirpac.ir.joint_inputs import JoinedInputs, join
        flat = join(example, "example_input")
        module = JoinedInputs(module, [tuple(t.shape[1:]) for t in example]).train(module.training)
        example = flat
    elif isinstance(example, (tuple, list)) and len(example) == 1:
        example = example[0]
    if not isinstance(example, torch.Tensor):
        raise InputError(f"example_input must be a torch.Tensor, got {type(example).__name__}")
    _check_tensors(module, example)
    _GENERIC.update(_generic_table())
    # BatchNorm follows the module's mode at each bound call (lirpac/batch_stats.py); dropout
    # cannot (a random mask is no function of x), so a training model with it is warned about
    if any(m.training and isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0
           for m in module.modules()):
        warnings.warn("lirpac.compile: the model is in training mode; its dropout is bounded as "
                      "in eval mode (identity); call model.eval() to silence this", stacklevel=3)
    with eval_mode(module):
        graph = _lower_in_eval_mode(module, example)
        _check_against_module(graph, module, example)
        return graph


CHECK_TOLERANCE = 1e-4      # as the ONNX frontend's check against onnxruntime


def _check_against_module(graph: Graph, module: torch.nn.Module, example: torch.Tensor) -> None:
    """The lowered IR computes the module's output on the example (relative to max(1, |out|)):
    an op lowered with the wrong semantics is refused here, not found as unsound bounds."""
    from lirpac.ir.interpret import evaluate
    with torch.no_grad():
        try:
            ref = module(example.clone())   # (a model may write into its input)
        except Exception:       # noqa: BLE001 - export traced it; nothing to compare with
            return
        if not isinstance(ref, torch.Tensor):
            return
        ours = evaluate(graph, example.clone())
    ref, ours = ref.reshape(ref.shape[0], -1).double(), ours.reshape(ours.shape[0], -1).double()
    if ref.shape != ours.shape:
        raise UnsupportedOperationError(
            f"lirpac's IR of this model gives outputs of per-sample size {ours.shape[1]}, the "
            f"model {ref.shape[1]}; this is a frontend bug: please report it with the model")
    finite = torch.isfinite(ref)
    if not torch.equal(finite, torch.isfinite(ours)):
        error = math.inf
    elif finite.any():
        error = float((ours - ref)[finite].abs().max()) / max(1.0, float(ref[finite].abs().max()))
    else:
        error = 0.0
    if not error <= CHECK_TOLERANCE:
        raise UnsupportedOperationError(
            f"lirpac's IR of this model disagrees with the model on the example input (max "
            f"relative error {error:.3g} > {CHECK_TOLERANCE:g}): an op was lowered with other "
            "semantics than torch's. This is a frontend bug: please report it with the model")


def _lower_in_eval_mode(module: torch.nn.Module, example: torch.Tensor) -> Graph:
    module = rewrite_attention(unroll_recurrent(module))
    given, example = example, _example_batch(example)
    try:
        exported = export(module, (example,), dynamic_shapes=({0: Dim("batch")},), strict=False)
    except Exception as err:  # torch.export raises many types; report them as one
        _refuse_unbatched(module, given, err)
        if "DataDependent" in type(err).__name__:
            raise UnsupportedOperationError(
                f"torch.export could not trace the model: its control flow or a shape depends on "
                f"the input's values ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}). lirpac bounds one fixed "
                "computation: replace `if` on tensor values and boolean-mask indexing with ops "
                "such as torch.maximum, torch.clamp or torch.relu") from err
        raise UnsupportedOperationError(
            f"torch.export could not trace the model with a free batch dimension: "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}. Models must be "
            "traceable by torch.export and treat dim 0 as the batch.") from err
    exported = functionalize(exported)
    exported.graph.eliminate_dead_code()   # unused outputs (an RNN's final state) need no rule
    names = [s.arg.name for s in exported.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    graph = _Lowering(exported, module, {names[0]}).run()
    remove_dead_nodes(graph)
    return graph


def _refuse_unbatched(module: torch.nn.Module, example: torch.Tensor, err: Exception) -> None:
    """An example without its batch dim (one image (C, H, W) for a model of (B, C, H, W)) fails
    to trace; say so when the model fails on a batch of it (as traced) but runs on it once a
    batch dim is added."""
    with torch.no_grad():
        if example.dim() > 1:           # a vector example is one sample whatever the model
            try:
                module(_example_batch(example))
                return                  # the model runs: export failed for another reason
            except Exception:
                pass
        try:
            module(example.unsqueeze(0))
        except Exception:
            return
    raise InputError(
        f"lirpac.compile: example_input of shape {tuple(example.shape)} looks unbatched: the "
        f"model fails on it as a batch of {tuple(example.shape[1:])} samples but runs on it with "
        f"a batch dim added; lirpac treats dim 0 as the batch, so pass example.unsqueeze(0) "
        f"(shape {tuple(example.unsqueeze(0).shape)})") from err


def _mutates(node) -> bool:
    schema = getattr(node.target, "_schema", None)
    return node.op == "call_function" and schema is not None and schema.is_mutable


# RNN cells (nn.LSTMCell, nn.GRUCell, nn.RNNCell) decompose batch first into linear, add,
# split, sigmoid, tanh and mul, which lirpac bounds
_CELLS = ("lstm_cell.default", "gru_cell.default", "rnn_tanh_cell.default", "rnn_relu_cell.default")


def functionalize(exported):
    """In-place code (``out += shortcut``, ``x.mul_(2)``, ``y[:, 0] = 0``) exports as mutating
    ops (``add_``, ``fill_`` on a view); ``run_decompositions`` rewrites them as pure ops
    (``add``, ``slice_scatter``) and decomposes nothing else but the RNN cells. Graphs with
    neither are left as exported."""
    cells = {n.target for n in exported.graph.nodes
             if n.op == "call_function" and str(n.target).removeprefix("aten.") in _CELLS}
    if not cells and not any(_mutates(n) for n in exported.graph.nodes):
        return exported
    try:
        from torch.export import default_decompositions
        defaults = default_decompositions()
        with warnings.catch_warnings():     # torch's own deprecation, on every ResNet's `+=`
            warnings.filterwarnings("ignore", message=".*LeafSpec", category=FutureWarning)
            return exported.run_decompositions({op: defaults[op] for op in cells})
    except Exception as err:  # torch raises many types; report them as one
        raise UnsupportedOperationError(
            f"torch.export could not rewrite the model's in-place operations as pure ones: "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from err


def remove_dead_nodes(graph: Graph) -> None:
    """Drop nodes the output does not depend on (unused buffers, shape reads)."""
    live = graph.ancestors(graph.output) | {graph.output} | set(graph.inputs)
    graph.nodes = [n for n in graph.nodes if n in live]
    graph._names = {n.name for n in graph.nodes}
