"""The IR node of each op family, built from its operands: what both formats' converters emit.

The QOperator converters (:mod:`.converters`) read the operands from the inputs of
one quantized op (QLinearConv's ``x_scale``, ``w``, ``y_zero_point`` ...), the QDQ
converters (:mod:`.qdq`) from the DequantizeLinear nodes before a float op and the
QuantizeLinear after it; both call the builders here, so that a model and its twin
in the other format give the same graph IR, and each piece of arithmetic is written
once. Requantization multipliers are computed as onnxruntime's QLinear kernels
compute them (the QDQ models run as those kernels too: onnxruntime fuses
``DQ -> op -> Q`` into them):

- convolution, fully connected: ``float32(float32(x_scale * w_scale[c]) / y_scale)``;
- average pooling: ``float32(x_scale / (y_scale * float32(count)))``.
"""

from __future__ import annotations

import numpy as np

from .. import tables
from ..ir import IRError, Node, Op, Tensor
from ..passes.legalize import table_multiplier
from .registry import Context, f32

__all__ = ["requant_multiplier", "conv", "grouped_to_dense", "fully_connected", "add", "global_average_pool",
           "reduce_mean", "average_pool", "channel_selection", "upsample", "slice_channels", "split_channels",
           "shuffle_permutation", "shuffle", "max_pool", "concat", "clamp", "clip_bounds", "quantization_of",
           "lookup", "multiply", "channel_scale"]


def requant_multiplier(x_scale, w_scale, y_scale, channels: int) -> np.ndarray:
    """``float32(x_scale * w_scale[c]) / y_scale`` for each of ``channels`` (a per-tensor scale broadcast)."""
    w_scale = np.broadcast_to(np.asarray(w_scale, np.float32).reshape(-1), (channels,))
    return (np.float32(x_scale) * w_scale).astype(np.float32) / np.float32(y_scale)


def quantization_of(x: Tensor) -> tuple[np.float32, np.ndarray]:
    """``(scale, zero_point)`` of ``x`` as ONNX would hold them (float32, int8/uint8)."""
    return np.float32(x.scale), np.asarray(x.zero_point, np.int8 if x.signed else np.uint8)


def conv(ctx: Context, node, name: str, output: str, x: Tensor, x_scale, w: np.ndarray, w_scale, w_zero,
         bias: np.ndarray | None, y_scale, y_zero) -> Tensor:
    """A CONV (group 1) or DEPTHWISE node of the ONNX convolution ``node`` (its attributes)."""
    where, a = ctx.where(node), ctx.attrs(node)
    if np.any(w_zero != 0):
        raise IRError(f"{where}: weight zero points must be 0 (symmetric int8 weights)")
    if w.dtype != np.int8:
        raise IRError(f"{where}: weights must be int8, not {w.dtype}")
    k, s, p = ctx.window(node, a, list(w.shape[2:]))
    group = int(a.get("group", 1))
    c, h, wd = x.shape
    out_channels = w.shape[0]
    bias = bias.astype(np.int32) if bias is not None else np.zeros(out_channels, np.int32)
    multiplier = requant_multiplier(f32(x_scale), w_scale, f32(y_scale), out_channels)
    attrs = dict(kernel=k, stride=s, pad=p, bias=bias, multiplier=multiplier)
    if group == 1:
        op, weight = Op.CONV, w.astype(np.int8)
    elif group == c == out_channels and w.shape[1] == 1:
        op, weight = Op.DEPTHWISE, w.astype(np.int8)
    elif group > 1 and c % group == 0 and out_channels % group == 0 and w.shape[1] == c // group:
        # held dense, zero outside the diagonal blocks; the lowering skips the all-zero weight blocks
        op, weight = Op.CONV, grouped_to_dense(w.astype(np.int8), group)
        attrs["groups"] = group
    else:
        raise IRError(f"{where}: convolution with group={group} on {c} input and {out_channels} output channels "
                      f"and a {tuple(w.shape)} weight is not supported (group must divide both)")
    return ctx.emit(Node(name, op, [x.name], output, dict(attrs, weight=weight)),
                    (out_channels, *ctx.out_hw(h, wd, k, s, p)), y_scale, y_zero)


def grouped_to_dense(weight: np.ndarray, groups: int) -> np.ndarray:
    """The ``(K, C, k, k)`` weight of a grouped convolution's ``(K, C / groups, k, k)``: zero between groups."""
    out_channels, group_in, kh, kw = weight.shape
    group_out = out_channels // groups
    dense = np.zeros((out_channels, group_in * groups, kh, kw), weight.dtype)
    for g in range(groups):
        dense[g * group_out:(g + 1) * group_out, g * group_in:(g + 1) * group_in] = \
            weight[g * group_out:(g + 1) * group_out]
    return dense


def fully_connected(ctx: Context, node, name: str, output: str, x: Tensor, x_scale, weight: np.ndarray, w_scale,
                    w_zero, bias: np.ndarray | None, y_scale, y_zero) -> Tensor:
    """An FC node: ``weight`` is ``(out_features, in_features)`` int8 over the flattened ``x``."""
    where = ctx.where(node)
    if np.any(w_zero != 0) or weight.dtype != np.int8:
        raise IRError(f"{where}: weights must be int8 with zero points 0")
    c, h, wd = x.shape
    if weight.shape[1] != c * h * wd or h != wd:
        raise IRError(f"{where}: a {weight.shape} weight does not match the flattened {x.shape} input")
    out_channels = weight.shape[0]
    bias = bias.astype(np.int32) if bias is not None else np.zeros(out_channels, np.int32)
    multiplier = requant_multiplier(f32(x_scale), w_scale, f32(y_scale), out_channels)
    return ctx.emit(Node(name, Op.FC, [x.name], output,
                         dict(kernel=h, stride=1, pad=0, bias=bias, multiplier=multiplier,
                              weight=weight.reshape(out_channels, c, h, wd).astype(np.int8))),
                    (out_channels, 1, 1), y_scale, y_zero)


def add(ctx: Context, node, name: str, output: str, x: Tensor, y: Tensor, y_scale, y_zero) -> Tensor:
    """An ADD node (QLinearAdd: both inputs dequantized with their own parameters)."""
    if x.shape != y.shape:
        raise IRError(f"{ctx.where(node)}: broadcasting add ({x.shape} + {y.shape}) is not supported")
    return ctx.emit(Node(name, Op.ADD, [x.name, y.name], output,
                         dict(a_scale=x.scale, a_zp=x.zero_point, b_scale=y.scale, b_zp=y.zero_point)),
                    x.shape, y_scale, y_zero)


def global_average_pool(ctx: Context, node, name: str, output: str, x: Tensor, x_scale, y_scale, y_zero) -> Tensor:
    """An AVGPOOL node over the whole (square) map."""
    c, h, wd = x.shape
    if h != wd:
        raise IRError(f"{ctx.where(node)}: global pooling of a non-square {h}x{wd} map is not supported")
    x_scale, y_scale = f32(x_scale), f32(y_scale)
    multiplier = np.float32(x_scale / (y_scale * np.float32(h * wd)))
    return ctx.emit(Node(name, Op.AVGPOOL, [x.name], output, dict(kernel=h, stride=1, pad=0, multiplier=multiplier)),
                    (c, 1, 1), y_scale, y_zero)


#: Float ops that may stand between a ReduceMean and the QuantizeLinear of its result (they keep the values).
_SHAPE_OPS = ("Flatten", "Reshape")


def reduce_mean(ctx: Context, node, name: str, x: Tensor) -> Tensor:
    """An AVGPOOL node of a ReduceMean over the spatial axes (H and W, ``keepdims`` either way).

    onnxruntime's quantizers leave ReduceMean in float in both formats (``DequantizeLinear ->
    ReduceMean -> [Flatten] -> QuantizeLinear``, not fused by its QDQ transformer): it dequantizes
    every value, sums and divides in float32 and quantizes the mean with the QuantizeLinear found
    after it (through shape-only float ops). That is a global average pool, computed here as the
    IR's (an exact int32 sum, one float32 multiplier ``x_scale / (y_scale * H*W)``): the two agree
    but where the real mean lies within float32 rounding of a rounding tie. With the input's scale (as
    onnxruntime calibrates a mean of a 1x1 map) the mean ``sum / count`` of an odd count is never
    within ``1 / (2 count)`` of a tie, far beyond either's rounding error; of an even count it often is
    a tie, which onnxruntime's float sum decides by its rounding errors: refused."""
    where = ctx.where(node)
    a = ctx.attrs(node)
    axes = a.get("axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = [int(v) for v in np.asarray(ctx.const(node.input[1], node)).reshape(-1)]
    if axes is None or sorted(int(v) % 4 for v in axes) != [2, 3]:
        raise IRError(f"{where}: only a mean over the spatial axes [2, 3] is supported, not axes {axes}")
    # the QuantizeLinear of the mean, through shape-only float ops
    tensor, chain = node.output[0], []
    while True:
        readers = ctx.consumers(tensor)
        if len(readers) == 1 and readers[0].op_type in _SHAPE_OPS:
            chain.append(readers[0])
            tensor = readers[0].output[0]
            continue
        break
    if len(readers) != 1 or readers[0].op_type != "QuantizeLinear":
        feeds = [f"{r.name or r.output[0]} ({r.op_type})" for r in readers] or ["the model output"]
        raise IRError(f"{where}: the mean must be quantized by one QuantizeLinear (dlfusion runs quantized ops "
                      f"only); it feeds {', '.join(feeds)}")
    quantize = readers[0]
    y_scale = ctx.const(quantize.input[1], quantize)
    y_zero = ctx.const(quantize.input[2], quantize) if len(quantize.input) > 2 and quantize.input[2] \
        else np.uint8(0)
    count = x.shape[1] * x.shape[2]
    if f32(y_scale) == np.float32(x.scale) and count % 2 == 0:
        # then sum / count is often an exact half, which onnxruntime's float sum (in its vectorized order,
        # each value rounded on dequantization) decides one way or the other; with an odd count it never is
        raise IRError(f"{where}: a mean of an even number of pixels ({x.shape[1]}x{x.shape[2]}) quantized with its "
                      "input's scale is not supported: its rounding at exact halves depends on onnxruntime's float "
                      "summation order")
    out = global_average_pool(ctx, node, name, quantize.output[0], x, np.float32(x.scale), y_scale, y_zero)
    ctx.alias[node.output[0]] = out.name        # the shape-only float ops read the pooled tensor
    return out


def average_pool(ctx: Context, node, name: str, output: str, x: Tensor, x_scale, y_scale, y_zero) -> Tensor:
    """An AVGPOOL node of the ONNX average pool ``node`` (its window attributes)."""
    a = ctx.attrs(node)
    k, s, p = ctx.window(node, a)
    if p and not a.get("count_include_pad", 0):
        raise IRError(f"{ctx.where(node)}: padded average pooling needs count_include_pad=1")
    c, h, wd = x.shape
    x_scale, y_scale = f32(x_scale), f32(y_scale)
    multiplier = np.float32(x_scale / (y_scale * np.float32(k * k)))
    return ctx.emit(Node(name, Op.AVGPOOL, [x.name], output, dict(kernel=k, stride=s, pad=p, multiplier=multiplier)),
                    (c, *ctx.out_hw(h, wd, k, s, p)), y_scale, y_zero)


def max_pool(ctx: Context, node, name: str, output: str, x: Tensor) -> Tensor:
    """A MAXPOOL node (the input's quantization kept)."""
    a = ctx.attrs(node)
    if len(node.output) > 1 and node.output[1]:
        raise IRError(f"{ctx.where(node)}: MaxPool indices are not supported")
    k, s, p = ctx.window(node, a)
    c, h, wd = x.shape
    ceil = bool(a.get("ceil_mode", 0))
    return ctx.emit(Node(name, Op.MAXPOOL, [x.name], output, dict(kernel=k, stride=s, pad=p, ceil_mode=ceil)),
                    (c, *ctx.out_hw(h, wd, k, s, p, ceil)), *quantization_of(x))


def concat(ctx: Context, node, name: str, output: str, parts: list[Tensor], scale, zero, requantize: bool) -> Tensor:
    """A channel CONCAT; ``requantize`` (QLinearConcat) lets the ``rescale_concat_inputs`` pass rescale
    the inputs of another quantization."""
    if int(ctx.attrs(node).get("axis", 1)) != 1:
        raise IRError(f"{ctx.where(node)}: only channel concatenation (axis=1) is supported")
    shape = (sum(t.shape[0] for t in parts), *parts[0].shape[1:])
    attrs = {"requantize": True} if requantize else {}
    return ctx.emit(Node(name, Op.CONCAT, [t.name for t in parts], output, attrs), shape, scale, zero)


def clamp(ctx: Context, node, name: str, output: str, x: Tensor, low, high) -> Tensor:
    """A CLAMP node of Relu (``low`` = the zero point, no ``high``) or Clip (``low``/``high`` in real
    values, either ``None``): the ``fold_clamps`` pass folds it into its producer."""
    lo, hi = x.qrange
    if node.op_type == "Relu":
        lo = max(lo, x.zero_point)
    else:
        if low is not None:
            lo = max(lo, int(np.clip(np.rint(np.float32(low) / np.float32(x.scale)) + x.zero_point, *x.qrange)))
        if high is not None:
            hi = min(hi, int(np.clip(np.rint(np.float32(high) / np.float32(x.scale)) + x.zero_point, *x.qrange)))
    return ctx.emit(Node(name, Op.CLAMP, [x.name], output, dict(clamp=(lo, hi), source=node.op_type)),
                    x.shape, *quantization_of(x))


def clip_bounds(ctx: Context, node) -> tuple[float | None, float | None]:
    """The real ``(min, max)`` of a Clip (attributes before opset 11, inputs since), ``None`` where absent."""
    a = ctx.attrs(node)
    low, high = a.get("min", None), a.get("max", None)
    if len(node.input) > 1 and node.input[1]:
        low = float(ctx.const(node.input[1], node))
    if len(node.input) > 2 and node.input[2]:
        high = float(ctx.const(node.input[2], node))
    return low, high


def channel_selection(ctx: Context, node, name: str, output: str, x: Tensor, channels: list[int], y_scale,
                      y_zero) -> Tensor:
    """A CONV node with ``selection``: output channel ``o`` is input channel ``channels[o]``, requantized
    from ``x``'s quantization to ``(y_scale, y_zero)`` exactly as a DequantizeLinear -> QuantizeLinear
    pair (multiplier 1.0 when they are the same: the integers pass unchanged)."""
    y_dtype = np.int8 if np.asarray(y_zero).dtype == np.int8 else np.uint8
    if (y_dtype == np.int8) != x.signed:
        raise IRError(f"{ctx.where(node)}: moving channels of {x.name!r} from {x.dtype} to "
                      f"{np.dtype(y_dtype).name} is not supported")
    if f32(y_scale) == np.float32(x.scale) and int(np.asarray(y_zero).reshape(-1)[0]) == x.zero_point:
        multiplier = np.float32(1.0)
    else:
        multiplier = table_multiplier(x, f32(y_scale), int(np.asarray(y_zero).reshape(-1)[0]), y_dtype,
                                      ctx.where(node))
    count = len(channels)
    weight = np.zeros((count, x.shape[0], 1, 1), np.int8)
    weight[np.arange(count), np.asarray(channels, int)] = 1
    return ctx.emit(Node(name, Op.CONV, [x.name], output,
                         dict(kernel=1, stride=1, pad=0, weight=weight, bias=np.zeros(count, np.int32),
                              multiplier=np.full(count, multiplier, np.float32), selection=True)),
                    (count, *x.shape[1:]), y_scale, y_zero)


def _int_list(ctx: Context, node, index: int) -> list[int] | None:
    if len(node.input) <= index or not node.input[index]:
        return None
    return [int(v) for v in np.asarray(ctx.const(node.input[index], node)).reshape(-1)]


def slice_channels(ctx: Context, node, x: Tensor) -> range:
    """The channels a Slice (opset >= 10: starts, ends, axes, steps inputs) keeps: on axis 1 only, step 1."""
    where = ctx.where(node)
    starts, ends = _int_list(ctx, node, 1), _int_list(ctx, node, 2)
    axes = _int_list(ctx, node, 3) or list(range(len(starts)))
    steps = _int_list(ctx, node, 4) or [1] * len(starts)
    if [a % 4 for a in axes] != [1] or steps != [1]:
        raise IRError(f"{where}: only a slice of the channel axis 1 with step 1 is supported, not axes {axes}, "
                      f"steps {steps}")
    channels = x.shape[0]
    first, last = (max(0, min(channels, v + channels if v < 0 else v)) for v in (starts[0], ends[0]))
    if last <= first:
        raise IRError(f"{where}: the slice {starts[0]}:{ends[0]} of {channels} channels is empty")
    return range(first, last)


def split_channels(ctx: Context, node, x: Tensor) -> list[range]:
    """The channels of each output of a Split on axis 1 (sizes from the ``split`` input or attribute,
    or equal parts)."""
    where, a = ctx.where(node), ctx.attrs(node)
    if int(a.get("axis", 0)) % 4 != 1:
        raise IRError(f"{where}: only a split of the channel axis 1 is supported, not axis {a.get('axis', 0)}")
    sizes = _int_list(ctx, node, 1) or [int(v) for v in a.get("split", [])]
    channels = x.shape[0]
    if not sizes:
        parts = len(node.output)
        if channels % parts:
            raise IRError(f"{where}: {channels} channels do not split into {parts} equal parts")
        sizes = [channels // parts] * parts
    if sum(sizes) != channels or min(sizes) < 1:
        raise IRError(f"{where}: split sizes {sizes} do not add up to the {channels} channels")
    starts = np.cumsum([0, *sizes])
    return [range(int(a0), int(a1)) for a0, a1 in zip(starts, starts[1:], strict=False)]


def shuffle_permutation(ctx: Context, node, x: Tensor, shape: list[int], perm: list[int],
                        final: list[int]) -> list[int]:
    """The channel permutation of ``Reshape(shape) -> Transpose(perm) -> Reshape(final)`` on ``x``: a
    ShuffleNet channel shuffle (``shape = (1, g, C/g, H, W)``, ``perm = (0, 2, 1, 3, 4)``)."""
    c, h, w = x.shape
    if len(shape) != 5 or shape[0] not in (1, -1) or list(shape[3:]) != [h, w] or perm != [0, 2, 1, 3, 4] \
            or [v if v != -1 else c for v in final[1:2]] + list(final[2:]) != [c, h, w] or len(final) != 4:
        raise IRError(f"{ctx.where(node)}: only the channel shuffle Reshape(1, g, C/g, H, W) -> Transpose(0, 2, 1, "
                      f"3, 4) -> Reshape(1, C, H, W) is supported, not Reshape({shape}) -> Transpose({perm}) -> "
                      f"Reshape({final})")
    groups, per = shape[1], shape[2]
    if groups == -1:
        groups = c // per
    if per == -1:
        per = c // groups
    if groups * per != c:
        raise IRError(f"{ctx.where(node)}: {groups} groups of {per} channels do not make {c}")
    # output channel i * groups + g is input channel g * per + i
    return [g * per + i for i in range(per) for g in range(groups)]


def shuffle(ctx: Context, node, x: Tensor) -> tuple[object, list[int]]:
    """A channel shuffle from its first Reshape (5-D): one channel permutation; its Transpose and last
    Reshape (and, in a QDQ model, the Q/DQ pairs between them) are marked handled. Returns the last
    Reshape and the permutation (output channel ``o`` is input channel ``channels[o]``)."""
    transpose = ctx.next_op(node.output[0], node)
    final = ctx.next_op(transpose.output[0], transpose) if transpose.op_type == "Transpose" else transpose
    if transpose.op_type != "Transpose" or final.op_type != "Reshape":
        raise IRError(f"{ctx.where(node)}: a 5-D Reshape is only supported as the start of a channel shuffle "
                      "(Reshape -> Transpose -> Reshape)")
    shape = [int(v) for v in np.asarray(ctx.const(node.input[1], node)).reshape(-1)]
    final_shape = [int(v) for v in np.asarray(ctx.const(final.input[1], final)).reshape(-1)]
    perm = [int(v) for v in ctx.attrs(transpose).get("perm", [])]
    channels = shuffle_permutation(ctx, node, x, shape, perm, final_shape)
    ctx.handled.update((transpose.output[0], final.output[0]))
    return final, channels


def _nearest_source(out: int, factor: int, length: int, transform: str, rounding: str) -> int:
    """ONNX Resize's nearest input index of output index ``out`` (factor ``factor``, input ``length``)."""
    scale = float(factor)
    if transform == "asymmetric":
        x = out / scale
    elif transform == "align_corners":
        x = out * (length - 1) / (length * factor - 1) if length * factor > 1 else 0.0
    elif transform in ("half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn"):
        x = (out + 0.5) / scale - (0.5 if transform != "tf_half_pixel_for_nn" else 0.0)
    else:
        return -1
    if rounding == "floor":
        index = np.floor(x)
    elif rounding == "ceil":
        index = np.ceil(x)
    elif rounding == "round_prefer_ceil":
        index = np.floor(x + 0.5)
    else:   # round_prefer_floor (the default)
        index = np.ceil(x - 0.5)
    return int(min(max(index, 0), length - 1))


def upsample(ctx: Context, node, name: str, output: str, x: Tensor) -> Tensor:
    """An UPSAMPLE node of a nearest Resize (or Upsample) by integer factors on H and W, whose coordinate
    transformation and rounding pick input pixel ``(y // fh, x // fw)`` (as torch's ``interpolate(mode=
    "nearest")`` exports it, and half_pixel with any rounding); the output keeps ``x``'s quantization."""
    where, a = ctx.where(node), ctx.attrs(node)
    mode = a.get("mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode != "nearest":
        raise IRError(f"{where}: only mode 'nearest' is supported, not {mode!r}")
    c, h, w = x.shape
    scales = sizes = None
    if node.op_type == "Upsample":
        scales = [float(v) for v in np.asarray(ctx.const(node.input[1], node) if len(node.input) > 1
                                                else a.get("scales")).reshape(-1)]
    else:
        if len(node.input) > 2 and node.input[2] and np.asarray(ctx.const(node.input[2], node)).size:
            scales = [float(v) for v in np.asarray(ctx.const(node.input[2], node)).reshape(-1)]
        elif len(node.input) > 3 and node.input[3]:
            sizes = [int(v) for v in np.asarray(ctx.const(node.input[3], node)).reshape(-1)]
    if sizes is not None:
        factors = [sizes[2] / h, sizes[3] / w] if len(sizes) == 4 and sizes[:2] == [1, c] else None
    else:
        factors = scales[2:] if scales is not None and len(scales) == 4 and scales[:2] == [1.0, 1.0] else None
    if factors is None or any(f != int(f) or f < 1 for f in factors):
        raise IRError(f"{where}: only integer upsampling of H and W is supported (scales {scales}, sizes {sizes})")
    fh, fw = (int(f) for f in factors)
    transform = a.get("coordinate_transformation_mode", b"half_pixel")
    transform = transform.decode() if isinstance(transform, bytes) else transform
    rounding = a.get("nearest_mode", b"round_prefer_floor")
    rounding = rounding.decode() if isinstance(rounding, bytes) else rounding
    if node.op_type == "Upsample":
        transform, rounding = "asymmetric", "floor"
    for factor, length in ((fh, h), (fw, w)):
        if any(_nearest_source(o, factor, length, transform, rounding) != o // factor for o in range(length * factor)):
            raise IRError(f"{where}: nearest upsampling with coordinate_transformation_mode {transform!r} and "
                          f"nearest_mode {rounding!r} does not repeat each pixel {factor} times; supported: "
                          "asymmetric with floor, half_pixel (any rounding)")
    return ctx.emit(Node(name, Op.UPSAMPLE, [x.name], output, dict(factors=(fh, fw))), (c, h * fh, w * fw),
                    *quantization_of(x))


#: Float attributes of the elementwise functions and their ONNX defaults.
_FUNCTION_ATTRS = {"LeakyRelu": {"alpha": 0.01}, "HardSigmoid": {"alpha": 0.2, "beta": 0.5}}


def _signed_zero(zero) -> bool:
    return np.asarray(zero).dtype == np.int8


def lookup(ctx: Context, node, name: str, output: str, x: Tensor, function: str, y_scale, y_zero) -> Tensor:
    """A LOOKUP node of the elementwise ``function`` (an ONNX op name: Sigmoid, Tanh, HardSigmoid,
    HardSwish, LeakyRelu) from ``x``'s quantization to ``(y_scale, y_zero)``, its table computed as
    onnxruntime computes it (:mod:`..tables`)."""
    given = ctx.attrs(node)
    attrs = {key: float(given.get(key, default)) for key, default in _FUNCTION_ATTRS.get(function, {}).items()}
    table = tables.unary_table(function, x.scale, x.zero_point, x.signed, f32(y_scale),
                               int(np.asarray(y_zero).reshape(-1)[0]), _signed_zero(y_zero), **attrs)
    return ctx.emit(Node(name, Op.LOOKUP, [x.name], output, dict(table=table, source=function)), x.shape,
                    y_scale, y_zero)


def multiply(ctx: Context, node, name: str, output: str, a: Tensor, b: Tensor, y_scale, y_zero, *,
             in_float: bool) -> Tensor:
    """An elementwise Mul of a tensor and a lookup of the same tensor (SiLU: ``x * sigmoid(x)``) as one
    LOOKUP: its value depends on ``x``'s byte only. ``in_float``: onnxruntime runs the Mul in float32
    between DequantizeLinear and QuantizeLinear nodes (:func:`~..tables.float_mul`) instead of as
    QLinearMul (:func:`~..tables.qlinear_mul`). A ``(C, H, W)`` tensor times a ``(C, 1, 1)`` one is a
    :func:`channel_scale`."""
    if a.shape != b.shape:
        return channel_scale(ctx, node, name, output, a, b, y_scale, y_zero, in_float=in_float)
    for x, f in ((a, b), (b, a)):
        producer = ctx.ir.producer(f.name)
        if producer is not None and producer.op is Op.LOOKUP and producer.inputs == [x.name]:
            break
    else:
        if a.shape[1:] == (1, 1):       # per-channel values on a 1x1 map: a channel scale as well
            return channel_scale(ctx, node, name, output, a, b, y_scale, y_zero, in_float=in_float)
        raise IRError(f"{ctx.where(node)}: only the product of a tensor and a function of the same tensor "
                      f"(SiLU: x * sigmoid(x)) is supported; {a.name!r} * {b.name!r} multiplies two different "
                      "tensors (a squeeze-and-excitation scale), which is not supported yet")
    values = tables.all_inputs(x.signed)
    f_values = tables.apply_table(producer.attrs.table, values, f.signed)
    operands = [(values, x), (f_values, f)] if x is a else [(f_values, f), (values, x)]
    multiply_fn = tables.float_mul if in_float else tables.qlinear_mul
    y_zero_point = int(np.asarray(y_zero).reshape(-1)[0])
    product = multiply_fn(operands[0][0], operands[0][1].scale, operands[0][1].zero_point,
                          operands[1][0], operands[1][1].scale, operands[1][1].zero_point,
                          f32(y_scale), y_zero_point, _signed_zero(y_zero))
    function = f"{producer.attrs.source or 'f'}*x"
    return ctx.emit(Node(name, Op.LOOKUP, [x.name], output, dict(table=product.view(np.uint8), source=function)),
                    x.shape, y_scale, y_zero)


def channel_scale(ctx: Context, node, name: str, output: str, a: Tensor, b: Tensor, y_scale, y_zero, *,
                  in_float: bool) -> Tensor:
    """QLinearMul of a ``(C, H, W)`` tensor by a ``(C, 1, 1)`` one (either order) as a SCALE node; the scale
    ``s`` becomes int8 tensors that add up to ``s - zs`` (LOOKUP nodes), the PE's weights: two, or three
    when ``s - zs`` reaches 255 (a uint8 sigmoid with zero point 0)."""
    x, s = (a, b) if b.shape[1:] == (1, 1) else (b, a)
    if s.shape != (x.shape[0], 1, 1):
        raise IRError(f"{ctx.where(node)}: broadcasting {a.shape} * {b.shape} is not supported (only a "
                      "(C, H, W) tensor times a per-channel (C, 1, 1) one)")
    if in_float:
        raise IRError(f"{ctx.where(node)}: onnxruntime (x86-64) runs this Mul in float32, not as QLinearMul (its "
                      "int8 inputs and output are of different types); a per-channel scale is exact only as "
                      "QLinearMul: quantize with uint8 activations or in QOperator format")
    rest = tables.all_inputs(s.signed).astype(np.int32) - s.zero_point      # -255 ... 255
    pieces = []
    while np.any(rest != 0) or not pieces:
        pieces.append(np.clip(rest, -128, 127))
        rest = rest - pieces[-1]
    parts = []
    for index, values in enumerate(pieces):
        part = ctx.emit(Node(f"{name}:scale{index}", Op.LOOKUP, [s.name], f"{name}:scale{index}",
                             dict(table=values.astype(np.int8).view(np.uint8), source="scale part")),
                        s.shape, np.float32(1.0), np.int8(0))
        parts.append(part.name)
    ratio = np.float32(np.float32(np.float32(x.scale) * np.float32(s.scale)) / f32(y_scale))
    _check_scale_rounding(ctx, node, _reachable(ctx, x), _reachable(ctx, s), x.zero_point, s.zero_point, ratio,
                          int(np.asarray(y_zero).reshape(-1)[0]), _signed_zero(y_zero))
    return ctx.emit(Node(name, Op.SCALE, [x.name, *parts], output, dict(multiplier=ratio)), x.shape, y_scale,
                    y_zero)


def _reachable(ctx: Context, t: Tensor) -> np.ndarray:
    """The values ``t`` can hold: the outputs of the lookup table producing it (a sigmoid gate, a SiLU), else
    every value of its type."""
    producer = ctx.ir.producer(t.name)
    values = tables.all_inputs(t.signed)
    if producer is not None and producer.attrs.table is not None:
        values = np.unique(tables.apply_table(producer.attrs.table, values, t.signed))
    return values


def _check_scale_rounding(ctx: Context, node, x_values, s_values, x_zero: int, s_zero: int, ratio, y_zero: int,
                          y_signed: bool) -> None:
    """Refuse a channel scale whose REQUANT would round differently from onnxruntime's QLinearMul on some input.

    REQUANT rounds ``f = float32(product * ratio)`` half to even and then adds the output zero point;
    QLinearMul adds the zero point in float32 first. The two differ only where ``f`` is exactly half-way
    between integers and the zero point is odd, which needs scales in a small-denominator ratio; every
    product of the values the two inputs can hold (:func:`_reachable`) is checked."""
    products = ((np.asarray(x_values).astype(np.int32) - x_zero)[:, None]
                * (np.asarray(s_values).astype(np.int32) - s_zero)[None, :])
    f = (products.astype(np.float32) * np.float32(ratio)).astype(np.float32)
    lo, hi = (-128, 127) if y_signed else (0, 255)
    ours = np.clip(np.rint(f).astype(np.int64) + y_zero, lo, hi)
    theirs = np.clip(np.rint((f + np.float32(y_zero)).astype(np.float32)).astype(np.int64), lo, hi)
    differ = int(np.count_nonzero(ours != theirs))
    if differ:
        raise IRError(f"{ctx.where(node)}: this per-channel Mul rounds {differ} of its {products.size} possible "
                      "products exactly half-way with an odd output zero point, where onnxruntime's QLinearMul (zero "
                      "point added before rounding) and the accelerator's requantization (after) differ; not supported")
