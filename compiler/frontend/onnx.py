"""ONNX frontend: onnxruntime QOperator models to the quantized graph IR.

Accepted: a float input quantized by QuantizeLinear, then QLinearConv
(groups 1 or depthwise), QGemm / QLinearMatMul, QLinearAdd,
QLinearGlobalAveragePool, QLinearAveragePool, MaxPool on quantized tensors,
Flatten/Reshape before a fully connected layer, Concat/QLinearConcat on
channels with a shared quantization, Relu/Clip on quantized tensors (folded
into the producer's clamp), and a DequantizeLinear of the output. Anything
else is an :class:`~.ir.IRError` naming the node, its op and what is
supported. Requantization multipliers are computed as onnxruntime computes
them: ``float32(float32(x_scale * w_scale[c]) / y_scale)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..ir import Graph, IRError, Node, Op, Tensor, check, out_size

__all__ = ["load_onnx", "SUPPORTED_OPS"]

SUPPORTED_OPS = ("QuantizeLinear", "DequantizeLinear", "QLinearConv", "QGemm", "QLinearMatMul", "QLinearAdd",
                 "QLinearGlobalAveragePool", "QLinearAveragePool", "MaxPool", "Flatten", "Reshape", "Concat",
                 "QLinearConcat", "Relu", "Clip")


def _f32(value) -> np.float32:
    return np.float32(np.asarray(value, dtype=np.float32).reshape(-1)[0])


def _table_multiplier(part: Tensor, y_scale: np.float32, y_zero: int, dtype, where: str) -> np.float32:
    """A float32 multiplier ``m`` with ``clamp(rne((x - zx) * m) + zy) == table[x]`` for every
    8-bit ``x``, where ``table`` is onnxruntime's QLinearConcat lookup table
    (dequantize with the input's parameters, quantize with the output's)."""
    info = np.iinfo(dtype)
    x = np.arange(info.min, info.max + 1)
    real = (x - part.zero_point).astype(np.float32) * np.float32(part.scale)
    table = np.clip(np.rint(real / y_scale) + y_zero, info.min, info.max)
    guess = np.float32(np.float32(part.scale) / y_scale)
    bits = int(guess.view(np.int32))
    for step in range(64):      # the nearest float32 values around the scale ratio
        for candidate in {bits + step, bits - step}:
            m = np.array(candidate, np.int32).view(np.float32)
            ours = np.clip(np.rint((x - part.zero_point).astype(np.float32) * m) + y_zero, info.min, info.max)
            if np.array_equal(ours, table):
                return np.float32(m)
    raise IRError(f"{where}: cannot reproduce the requantization table of input {part.name!r} "
                  "with a multiplier")


def load_onnx(path: str | Path, name: str | None = None) -> Graph:
    """Read a quantized (QOperator) ONNX model into a checked :class:`Graph`."""
    import onnx
    from onnx import helper, numpy_helper, shape_inference
    path = Path(path)
    try:
        model = onnx.load(str(path))
    except FileNotFoundError:
        raise IRError(f"ONNX model {str(path)!r} does not exist") from None
    except Exception as error:  # onnx raises DecodeError and friends
        raise IRError(f"{path}: not a readable ONNX model ({type(error).__name__}: {error})") from None
    try:
        model = shape_inference.infer_shapes(model)
    except Exception:  # shapes are only a cross-check; the model itself is what counts
        pass
    graph = model.graph
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    if len(graph.input) - sum(1 for i in graph.input if i.name in constants) != 1 or len(graph.output) != 1:
        raise IRError(f"{path}: the model must have exactly one input and one output")
    model_input = next(i for i in graph.input if i.name not in constants)
    dims = [d.dim_value for d in model_input.type.tensor_type.shape.dim]
    if len(dims) != 4 or dims[0] not in (0, 1) or not all(dims[1:]):
        raise IRError(f"{path}: input {model_input.name!r} must be NCHW with batch 1 and static sizes, not {dims}")

    ir = Graph(name or path.stem, {}, [], input="", output="")
    alias: dict[str, str] = {}           # Flatten/Reshape/Relu outputs -> the tensor they stand for

    def resolve(name: str) -> str:
        while name in alias:
            name = alias[name]
        return name

    def const(name: str, node) -> np.ndarray:
        if name not in constants:
            raise IRError(f"node {node.name!r} ({node.op_type}): input {name!r} must be a constant initializer")
        return constants[name]

    def attrs(node) -> dict:
        return {a.name: helper.get_attribute_value(a) for a in node.attribute}

    def tensor(name: str, node) -> Tensor:
        name = resolve(name)
        if name not in ir.tensors:
            raise IRError(f"node {node.name!r} ({node.op_type}): input {name!r} is not a quantized activation "
                          "produced by a supported op")
        return ir.tensors[name]

    def add_tensor(name, shape, scale, zero_point):
        zero = np.asarray(zero_point)
        dtype = "int8" if zero.dtype == np.int8 else "uint8"
        if zero.dtype not in (np.int8, np.uint8):
            raise IRError(f"tensor {name!r}: zero point type {zero.dtype} is not int8 or uint8")
        ir.tensors[name] = Tensor(name, tuple(int(v) for v in shape), dtype, float(_f32(scale)),
                                  int(zero.reshape(-1)[0]))
        return ir.tensors[name]

    def window(node, a, kernel_default=None):
        kernel = a.get("kernel_shape", kernel_default)
        strides = a.get("strides", [1, 1])
        pads = a.get("pads", [0, 0, 0, 0])
        dilations = a.get("dilations", [1, 1])
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise IRError(f"node {node.name!r} ({node.op_type}): auto_pad is not supported; use explicit pads")
        if kernel is None or len(set(kernel)) != 1 or len(set(strides)) != 1 or len(set(pads)) != 1:
            raise IRError(f"node {node.name!r} ({node.op_type}): only square kernels, equal strides and "
                          f"symmetric padding are supported (kernel {kernel}, strides {strides}, pads {pads})")
        if set(dilations) != {1}:
            raise IRError(f"node {node.name!r} ({node.op_type}): dilation {dilations} is not supported (only 1)")
        if a.get("ceil_mode", 0) and node.op_type != "MaxPool":
            raise IRError(f"node {node.name!r} ({node.op_type}): ceil_mode=1 is only supported for MaxPool")
        return int(kernel[0]), int(strides[0]), int(pads[0])

    def out_hw(h, w, k, s, p, ceil_mode=False):
        return out_size(h, k, s, p, ceil_mode), out_size(w, k, s, p, ceil_mode)

    def emit(node: Node, shape, scale, zero_point):
        out = add_tensor(node.output, shape, scale, zero_point)
        lo, hi = out.qrange
        node.attrs.setdefault("clamp", (lo, hi))
        ir.nodes.append(node)
        return out

    def requant_multiplier(x_scale, w_scale, y_scale, channels):
        w_scale = np.broadcast_to(np.asarray(w_scale, np.float32).reshape(-1), (channels,))
        return (np.float32(x_scale) * w_scale).astype(np.float32) / np.float32(y_scale)

    for node in graph.node:
        op = node.op_type
        a = attrs(node)
        where = f"node {node.name!r} ({op})"
        if node.domain not in ("", "ai.onnx", "com.microsoft"):
            raise IRError(f"{where}: domain {node.domain!r} is not supported")
        if op == "Constant":
            continue
        if op == "QuantizeLinear":
            if node.input[0] != model_input.name or ir.input:
                raise IRError(f"{where}: only the model input may be quantized (QuantizeLinear); "
                              "this model quantizes an intermediate tensor")
            scale, zero = const(node.input[1], node), const(node.input[2], node)
            add_tensor(node.output[0], dims[1:], scale, zero)
            ir.input = node.output[0]
            ir.input_quant = {"name": model_input.name, "scale": float(_f32(scale)), "zero_point": int(zero),
                              "dtype": str(np.asarray(zero).dtype), "shape": [1, *dims[1:]]}
        elif op == "DequantizeLinear":
            source = tensor(node.input[0], node)
            if node.output[0] != graph.output[0].name:
                raise IRError(f"{where}: only the model output may be dequantized; this model dequantizes "
                              f"{source.name!r} in the middle (a float op follows it)")
            ir.output = source.name
            ir.output_dequant = {"name": node.output[0], "scale": float(_f32(const(node.input[1], node))),
                                 "zero_point": int(const(node.input[2], node))}
        elif op == "QLinearConv":
            x = tensor(node.input[0], node)
            w = const(node.input[3], node)
            if np.any(const(node.input[5], node) != 0):
                raise IRError(f"{where}: weight zero points must be 0 (symmetric int8 weights)")
            if w.dtype != np.int8:
                raise IRError(f"{where}: weights must be int8, not {w.dtype}")
            k, s, p = window(node, a, list(w.shape[2:]))
            group = int(a.get("group", 1))
            c, h, wd = x.shape
            out_channels = w.shape[0]
            bias = const(node.input[8], node).astype(np.int32) if len(node.input) > 8 and node.input[8] \
                else np.zeros(out_channels, np.int32)
            multiplier = requant_multiplier(_f32(const(node.input[1], node)), const(node.input[4], node),
                                            _f32(const(node.input[6], node)), out_channels)
            if group == 1:
                kind = Op.CONV
            elif group == c == out_channels and w.shape[1] == 1:
                kind = Op.DEPTHWISE
            else:
                raise IRError(f"{where}: grouped convolution with group={group} is not supported "
                              f"(only 1 and depthwise, group = channels = {c})")
            oh, ow = out_hw(h, wd, k, s, p)
            macs = out_channels * oh * ow * k * k * (c if kind is Op.CONV else 1)
            emit(Node(node.name or node.output[0], kind, [x.name], node.output[0],
                      dict(kernel=k, stride=s, pad=p, weight=w.astype(np.int8), bias=bias, multiplier=multiplier,
                           macs=macs)),
                 (out_channels, oh, ow), const(node.input[6], node), const(node.input[7], node))
        elif op in ("QGemm", "QLinearMatMul"):
            x = tensor(node.input[0], node)
            if op == "QGemm":
                if a.get("transA", 0):
                    raise IRError(f"{where}: transA=1 is not supported")
                if len(node.input) < 9 or not node.input[7]:
                    raise IRError(f"{where}: QGemm with a float output is not supported (needs y_scale)")
                b = const(node.input[3], node)
                b_zero = const(node.input[5], node)
                weight = b if a.get("transB", 0) else b.T
                bias = const(node.input[6], node).astype(np.int32) if node.input[6] else \
                    np.zeros(weight.shape[0], np.int32)
                if float(a.get("alpha", 1.0)) != 1.0:
                    raise IRError(f"{where}: alpha != 1 is not supported")
                b_scale, y_scale, y_zero = const(node.input[4], node), const(node.input[7], node), \
                    const(node.input[8], node)
            else:
                b = const(node.input[3], node)
                b_zero = const(node.input[5], node)
                weight = b.T
                bias = np.zeros(weight.shape[0], np.int32)
                b_scale, y_scale, y_zero = const(node.input[4], node), const(node.input[6], node), \
                    const(node.input[7], node)
            if np.any(b_zero != 0) or weight.dtype != np.int8:
                raise IRError(f"{where}: weights must be int8 with zero points 0")
            c, h, wd = x.shape
            if weight.shape[1] != c * h * wd or h != wd:
                raise IRError(f"{where}: a {weight.shape} weight does not match the flattened {x.shape} input")
            out_channels = weight.shape[0]
            multiplier = requant_multiplier(_f32(const(node.input[1], node)), b_scale, _f32(y_scale), out_channels)
            emit(Node(node.name or node.output[0], Op.FC, [x.name], node.output[0],
                      dict(kernel=h, stride=1, pad=0, bias=bias, multiplier=multiplier,
                           weight=weight.reshape(out_channels, c, h, wd).astype(np.int8),
                           macs=out_channels * c * h * wd)),
                 (out_channels, 1, 1), y_scale, y_zero)
        elif op == "QLinearAdd":
            x, y = tensor(node.input[0], node), tensor(node.input[3], node)
            if x.shape != y.shape:
                raise IRError(f"{where}: broadcasting add ({x.shape} + {y.shape}) is not supported")
            emit(Node(node.name or node.output[0], Op.ADD, [x.name, y.name], node.output[0],
                      dict(a_scale=x.scale, a_zp=x.zero_point, b_scale=y.scale, b_zp=y.zero_point)),
                 x.shape, const(node.input[6], node), const(node.input[7], node))
        elif op == "QLinearGlobalAveragePool":
            x = tensor(node.input[0], node)
            if a.get("channels_last", 0):
                raise IRError(f"{where}: channels_last=1 is not supported")
            c, h, wd = x.shape
            if h != wd:
                raise IRError(f"{where}: global pooling of a non-square {h}x{wd} map is not supported")
            x_scale, y_scale = _f32(const(node.input[1], node)), _f32(const(node.input[3], node))
            multiplier = np.float32(x_scale / (y_scale * np.float32(h * wd)))
            emit(Node(node.name or node.output[0], Op.AVGPOOL, [x.name], node.output[0],
                      dict(kernel=h, stride=1, pad=0, multiplier=multiplier)),
                 (c, 1, 1), y_scale, const(node.input[4], node))
        elif op == "QLinearAveragePool":
            x = tensor(node.input[0], node)
            k, s, p = window(node, a)
            if p and not a.get("count_include_pad", 0):
                raise IRError(f"{where}: padded average pooling needs count_include_pad=1")
            c, h, wd = x.shape
            x_scale, y_scale = _f32(const(node.input[1], node)), _f32(const(node.input[3], node))
            multiplier = np.float32(x_scale / (y_scale * np.float32(k * k)))
            emit(Node(node.name or node.output[0], Op.AVGPOOL, [x.name], node.output[0],
                      dict(kernel=k, stride=s, pad=p, multiplier=multiplier)),
                 (c, *out_hw(h, wd, k, s, p)), y_scale, const(node.input[4], node))
        elif op == "MaxPool":
            x = tensor(node.input[0], node)
            if len(node.output) > 1 and node.output[1]:
                raise IRError(f"{where}: MaxPool indices are not supported")
            k, s, p = window(node, a)
            c, h, wd = x.shape
            ceil = bool(a.get("ceil_mode", 0))
            emit(Node(node.name or node.output[0], Op.MAXPOOL, [x.name], node.output[0],
                      dict(kernel=k, stride=s, pad=p, ceil_mode=ceil)),
                 (c, *out_hw(h, wd, k, s, p, ceil)), np.float32(x.scale),
                 np.asarray(x.zero_point, np.int8 if x.signed else np.uint8))
        elif op in ("Flatten", "Reshape"):
            x = tensor(node.input[0], node)
            consumers = [n.op_type for n in graph.node if node.output[0] in n.input]
            feeds_fc = all(t in ("QGemm", "QLinearMatMul", "DequantizeLinear") for t in consumers)
            if not feeds_fc and x.shape[1:] != (1, 1):
                raise IRError(f"{where}: a reshape is only supported before a fully connected layer "
                              f"(here it feeds {consumers})")
            alias[node.output[0]] = x.name
        elif op in ("Concat", "QLinearConcat"):
            if int(a.get("axis", 1)) != 1:
                raise IRError(f"{where}: only channel concatenation (axis=1) is supported")
            if op == "Concat":
                parts = [tensor(i, node) for i in node.input]
                scale, zero = np.float32(parts[0].scale), np.asarray(parts[0].zero_point,
                                                                   np.int8 if parts[0].signed else np.uint8)
            else:
                scale, zero = const(node.input[0], node), const(node.input[1], node)
                parts = [tensor(node.input[i], node) for i in range(2, len(node.input), 3)]
                for index, part in enumerate(parts):
                    if _f32(part.scale) == _f32(scale) and part.zero_point == int(zero):
                        continue
                    # onnxruntime requantizes this input through a 256-entry lookup table; an
                    # identity 1x1 depthwise layer reproduces it with a multiplier found below.
                    multiplier = _table_multiplier(part, _f32(scale), int(zero), np.asarray(zero).dtype, where)
                    rescaled = Node(f"{node.name or node.output[0]}:rescale{index}", Op.DEPTHWISE, [part.name],
                                    f"{part.name}:rescaled",
                                    dict(kernel=1, stride=1, pad=0, weight=np.ones((part.shape[0], 1, 1, 1), np.int8),
                                         bias=np.zeros(part.shape[0], np.int32),
                                         multiplier=np.full(part.shape[0], multiplier, np.float32),
                                         macs=part.shape[0] * part.shape[1] * part.shape[2]))
                    parts[index] = emit(rescaled, part.shape, scale, zero)
            shape = (sum(t.shape[0] for t in parts), *parts[0].shape[1:])
            emit(Node(node.name or node.output[0], Op.CONCAT, [t.name for t in parts], node.output[0], {}),
                 shape, scale, zero)
        elif op in ("Relu", "Clip"):
            x = tensor(node.input[0], node)
            producer = ir.producer(x.name)
            if producer is None or len([n for n in graph.node if x.name in n.input]) != 1:
                raise IRError(f"{where}: a {op} must directly follow the op producing {x.name!r} "
                              "and be its only consumer")
            lo, hi = producer.attrs["clamp"]
            if op == "Relu":
                lo = max(lo, x.zero_point)
            else:
                low = a.get("min", None)
                high = a.get("max", None)
                if len(node.input) > 1 and node.input[1]:
                    low = float(const(node.input[1], node))
                if len(node.input) > 2 and node.input[2]:
                    high = float(const(node.input[2], node))
                if low is not None:
                    lo = max(lo, int(np.clip(np.rint(np.float32(low) / np.float32(x.scale)) + x.zero_point,
                                             *x.qrange)))
                if high is not None:
                    hi = min(hi, int(np.clip(np.rint(np.float32(high) / np.float32(x.scale)) + x.zero_point,
                                             *x.qrange)))
            producer.attrs["clamp"] = (lo, hi)
            alias[node.output[0]] = x.name
        else:
            raise IRError(f"{where}: unsupported op; supported: {', '.join(SUPPORTED_OPS)}")
    if not ir.input:
        raise IRError(f"{path}: the model input is not quantized by a QuantizeLinear (is it a QOperator model?)")
    if not ir.output:
        raise IRError(f"{path}: the model output is not produced by a DequantizeLinear of a quantized tensor")
    check(ir)
    return ir
