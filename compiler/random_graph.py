"""Random quantized graphs in the compiler's IR, for property tests of fusion and plans.

:func:`random_graph` draws a network of convolutions (1x1 to 5x5, stride 1 or
2), depthwise convolutions, max and average pools, residual blocks (two convs
and an add, optionally with a strided 1x1 shortcut), channel concats and a
global-pool + fully connected head, with odd channel counts and image sizes,
int8 or uint8 activations, random scales and zero points. With ``new_ops`` it also
draws grouped convolutions (any group count dividing the channels), channel slices
and shuffles (0/1 selection convolutions), concats of any channel counts (legalized
by ``align_concat_inputs``) and nearest upsampling by integer factors; without it the
graphs of a seed are those recorded in ``tests/compiler/random_fingerprints.json``.
With ``tables`` random lookup tables follow some layers: folded into a convolution,
fully connected layer, average pool or add (as the ``fold_lookups`` pass leaves
them), or a LOOKUP node of its own (after a pool, a concat, an upsampling, or a
tensor read twice), with a new quantization for its output.
Its reference output is :func:`dlfusion.compiler.reference.run_graph`.
"""

from __future__ import annotations

import numpy as np

from .ir import TABLE_OPS, Graph, Node, Op, Tensor, check, out_size
from .passes.annotate import annotate_macs
from .passes.legalize import align_concat_inputs

__all__ = ["random_graph"]


class _Builder:
    def __init__(self, rng: np.random.Generator, signed: bool):
        self.rng = rng
        self.signed = signed
        self.tensors: dict[str, Tensor] = {}
        self.nodes: list[Node] = []

    def tensor(self, shape, like: Tensor | None = None) -> str:
        name = f"t{len(self.tensors)}"
        if like is not None:
            self.tensors[name] = Tensor(name, tuple(shape), like.dtype, like.scale, like.zero_point)
        else:
            zp = int(self.rng.integers(-20, 21)) if self.signed else int(self.rng.integers(90, 166))
            self.tensors[name] = Tensor(name, tuple(shape), "int8" if self.signed else "uint8",
                                        float(self.rng.uniform(0.01, 0.1)), zp)
        return name

    def lookup(self, x: str) -> str:
        """A random table after ``x``: folded into its producer where the lowering can, else a LOOKUP."""
        table = self.rng.integers(0, 256, size=256).astype(np.uint8)
        producer = next((n for n in self.nodes if n.output == x), None)
        if producer is not None and producer.op in TABLE_OPS and producer.attrs.table is None \
                and not any(x in n.inputs for n in self.nodes) and self.rng.random() < 0.7:
            producer.attrs.table, producer.attrs.table_input = table, self.tensors[x]
            new = self.tensors.pop(self.tensor(self.tensors[x].shape))
            self.tensors[x] = Tensor(x, new.shape, new.dtype, new.scale, new.zero_point)
            return x
        y = self.tensor(self.tensors[x].shape)
        t = self.tensors[x]
        self.nodes.append(Node(f"n{len(self.nodes)}_lookup", Op.LOOKUP, [x], y,
                               dict(table=table, clamp=t.qrange)))
        return y

    def clamp(self, name: str, relu: bool) -> tuple[int, int]:
        t = self.tensors[name]
        lo, hi = t.qrange
        return (max(lo, t.zero_point), hi) if relu else (lo, hi)

    def _multiplier(self, channels: int, fan_in: int) -> np.ndarray:
        base = 48.0 / (max(1.0, np.sqrt(fan_in)) * 74.0 * 74.0)
        return (base * self.rng.uniform(0.5, 2.0, size=channels)).astype(np.float32)

    def conv(self, x: str, out_channels: int, kernel: int, stride: int, pad: int, depthwise=False) -> str:
        c, h, w = self.tensors[x].shape
        oh, ow = out_size(h, kernel, stride, pad), out_size(w, kernel, stride, pad)
        k = c if depthwise else out_channels
        y = self.tensor((k, oh, ow))
        shape = (c, 1, kernel, kernel) if depthwise else (k, c, kernel, kernel)
        fan_in = kernel * kernel * (1 if depthwise else c)
        attrs = dict(kernel=kernel, stride=stride, pad=pad,
                     weight=self.rng.integers(-127, 128, size=shape).astype(np.int8),
                     bias=self.rng.integers(-3000, 3000, size=k).astype(np.int32),
                     multiplier=self._multiplier(k, fan_in), clamp=self.clamp(y, bool(self.rng.random() < 0.5)),
                     macs=k * oh * ow * fan_in)
        op = Op.DEPTHWISE if depthwise else (Op.FC if (h, w, kernel) == (1, 1, 1) else Op.CONV)
        self.nodes.append(Node(f"n{len(self.nodes)}_{op.value}", op, [x], y, attrs))
        return y

    def grouped(self, x: str, groups: int, out_channels: int, kernel: int, stride: int) -> str:
        """A grouped convolution (dense weight, zero outside the diagonal blocks)."""
        c, h, w = self.tensors[x].shape
        pad = kernel // 2
        oh, ow = out_size(h, kernel, stride, pad), out_size(w, kernel, stride, pad)
        y = self.tensor((out_channels, oh, ow))
        weight = self.rng.integers(-127, 128, size=(out_channels, c, kernel, kernel)).astype(np.int8)
        outside = (np.arange(out_channels)[:, None] // (out_channels // groups)) != \
            (np.arange(c)[None, :] // (c // groups))
        weight[outside] = 0
        fan_in = kernel * kernel * c // groups
        attrs = dict(kernel=kernel, stride=stride, pad=pad, weight=weight, groups=groups,
                     bias=self.rng.integers(-3000, 3000, size=out_channels).astype(np.int32),
                     multiplier=self._multiplier(out_channels, fan_in),
                     clamp=self.clamp(y, bool(self.rng.random() < 0.5)), macs=out_channels * oh * ow * fan_in)
        self.nodes.append(Node(f"n{len(self.nodes)}_grouped", Op.CONV, [x], y, attrs))
        return y

    def select(self, x: str, channels: list[int]) -> str:
        """A channel selection (a slice or a permutation) keeping the quantization: exact."""
        source = self.tensors[x]
        y = self.tensor((len(channels), *source.shape[1:]), like=source)
        weight = np.zeros((len(channels), source.shape[0], 1, 1), np.int8)
        weight[np.arange(len(channels)), channels] = 1
        attrs = dict(kernel=1, stride=1, pad=0, weight=weight, bias=np.zeros(len(channels), np.int32),
                     multiplier=np.ones(len(channels), np.float32), clamp=source.qrange, selection=True)
        self.nodes.append(Node(f"n{len(self.nodes)}_select", Op.CONV, [x], y, attrs))
        return y

    def upsample(self, x: str, factors: tuple[int, int]) -> str:
        c, h, w = self.tensors[x].shape
        y = self.tensor((c, h * factors[0], w * factors[1]), like=self.tensors[x])
        self.nodes.append(Node(f"n{len(self.nodes)}_upsample", Op.UPSAMPLE, [x], y,
                               dict(factors=factors, clamp=self.tensors[y].qrange)))
        return y

    def pool(self, x: str, kind: str, kernel: int, stride: int, pad: int) -> str:
        c, h, w = self.tensors[x].shape
        oh, ow = out_size(h, kernel, stride, pad), out_size(w, kernel, stride, pad)
        if kind == "max":
            y = self.tensor((c, oh, ow), like=self.tensors[x])
            attrs = dict(kernel=kernel, stride=stride, pad=pad, clamp=self.tensors[y].qrange, ceil_mode=False)
            op = Op.MAXPOOL
        else:
            y = self.tensor((c, oh, ow))
            ratio = float(self.rng.uniform(0.7, 1.4))
            attrs = dict(kernel=kernel, stride=stride, pad=pad, clamp=self.tensors[y].qrange,
                         multiplier=np.float32(ratio / (kernel * kernel)), macs=c * oh * ow * kernel * kernel)
            op = Op.AVGPOOL
        self.nodes.append(Node(f"n{len(self.nodes)}_{op.value}", op, [x], y, attrs))
        return y

    def add(self, a: str, b: str) -> str:
        y = self.tensor(self.tensors[a].shape)
        ta, tb = self.tensors[a], self.tensors[b]
        attrs = dict(a_scale=ta.scale, a_zp=ta.zero_point, b_scale=tb.scale, b_zp=tb.zero_point,
                     clamp=self.clamp(y, bool(self.rng.random() < 0.5)))
        self.nodes.append(Node(f"n{len(self.nodes)}_add", Op.ADD, [a, b], y, attrs))
        return y

    def concat(self, parts: list[str]) -> str:
        first = self.tensors[parts[0]]
        channels = sum(self.tensors[p].shape[0] for p in parts)
        y = self.tensor((channels, *first.shape[1:]), like=first)
        for p in parts:   # concat inputs share the output's quantization
            t = self.tensors[p]
            self.tensors[p] = Tensor(p, t.shape, first.dtype, first.scale, first.zero_point)
            producer = next(n for n in self.nodes if n.output == p)
            if producer.op in (Op.CONV, Op.DEPTHWISE, Op.FC):
                producer.attrs.clamp = self.tensors[p].qrange
        self.nodes.append(Node(f"n{len(self.nodes)}_concat", Op.CONCAT, parts, y, {}))
        return y


def random_graph(seed: int, *, lanes: int = 16, max_layers: int = 6, max_size: int = 20,
                 new_ops: bool = False, tables: bool = False) -> Graph:
    """A random network with its own seeded weights (see the module docstring)."""
    rng = np.random.default_rng(seed)
    b = _Builder(rng, signed=bool(rng.random() < 0.5))
    size = int(rng.integers(5, max_size + 1))
    x = b.tensor((int(rng.integers(3, 40)), size, size + int(rng.integers(-2, 3)) if size > 6 else size))
    name = x
    for _ in range(int(rng.integers(2, max_layers + 1))):
        c, h, w = b.tensors[name].shape
        small = min(h, w) < 5
        kinds = ["conv", "conv", "dw", "maxpool", "avgpool", "residual", "concat"]
        if new_ops:
            kinds += ["grouped", "grouped", "slice", "shuffle", "concat_any", "upsample"]
        kind = rng.choice(kinds)
        if tables and b.nodes and rng.random() < 0.4:
            name = b.lookup(name)
        if kind == "conv":
            kernel = int(rng.choice([1, 3, 3, 5] if not small else [1, 3]))
            stride = int(rng.choice([1, 2])) if not small else 1
            name = b.conv(name, int(rng.integers(4, 48)), kernel, stride, kernel // 2)
        elif kind == "dw":
            name = b.conv(name, c, 3, int(rng.choice([1, 2])) if not small else 1, 1, depthwise=True)
        elif kind in ("maxpool", "avgpool"):
            if small:
                continue
            kernel = int(rng.choice([2, 3]))
            name = b.pool(name, kind[:3], kernel, 2, int(rng.integers(0, kernel // 2 + 1)) if kernel == 3 else 0)
        elif kind == "residual":
            channels = int(rng.integers(4, 40))
            stride = int(rng.choice([1, 2])) if not small else 1
            first = b.conv(name, channels, 3, stride, 1)
            second = b.conv(first, channels, 3, 1, 1)
            shortcut = name if (stride, channels) == (1, c) else b.conv(name, channels, 1, stride, 0)
            name = b.add(second, shortcut) if rng.random() < 0.5 else b.add(shortcut, second)
        elif kind == "grouped":
            divisors = [g for g in range(2, c + 1) if c % g == 0]
            if not divisors:
                continue
            groups = int(rng.choice(divisors))
            stride = int(rng.choice([1, 2])) if not small else 1
            name = b.grouped(name, groups, groups * int(rng.integers(1, 5)), int(rng.choice([1, 3])), stride)
        elif kind == "slice":
            first = int(rng.integers(0, c))
            name = b.select(name, list(range(first, int(rng.integers(first + 1, c + 1)))))
        elif kind == "shuffle":
            divisors = [g for g in range(2, c) if c % g == 0]
            if not divisors:
                continue
            groups = int(rng.choice(divisors))
            per = c // groups
            name = b.select(name, [g * per + i for i in range(per) for g in range(groups)])
        elif kind == "concat_any":
            parts = [b.conv(name, int(rng.integers(1, 40)), int(k), 1, int(k) // 2) for k in (1, 3)]
            name = b.concat(parts)
        elif kind == "upsample":
            if h * w > 100:
                continue
            name = b.upsample(name, (int(rng.integers(1, 4)), int(rng.integers(1, 4))))
        else:
            parts = [b.conv(name, lanes * int(rng.integers(1, 3)), int(k), 1, int(k) // 2) for k in (1, 3)]
            name = b.concat(parts)
    if new_ops and not b.nodes:     # every draw skipped (shapes the new kinds do not fit)
        name = b.conv(name, int(rng.integers(4, 48)), 3, 1, 1)
    if rng.random() < 0.5:
        c, h, w = b.tensors[name].shape
        if h == w:
            name = b.pool(name, "avg", h, 1, 0)
            name = b.conv(name, int(rng.integers(2, 30)), 1, 1, 0)
    graph = Graph(f"random{seed}", b.tensors, b.nodes, x, name)
    if new_ops:
        align_concat_inputs(graph)
        annotate_macs(graph)
    check(graph)
    return graph
