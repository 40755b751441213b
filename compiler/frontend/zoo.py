"""Built-in model zoo: published CNN architectures with seeded random weights.

Everything is defined here in PyTorch (no download, no torchvision): a tiny
residual CNN, ResNet-18/50, MobileNetV2, VGG-16, SqueezeNet 1.1, RegNetX-400MF,
ShuffleNetV2 1.0x and MnasNet 1.0 with the layer shapes of the papers / the torchvision reference implementations.
The models are exported to ONNX (float, BatchNorm folded into the convs) and
quantized by :mod:`.quantize` (onnxruntime ``quantize_static``, QOperator,
per-channel int8 weights) into the quantized ONNX the compiler consumes.

Weights are a function of ``(name, seed)`` only, never of the input size
(except VGG-16's first fully connected layer, whose fan-in is the flattened
``512 x (S/32)^2`` feature map).  BatchNorm statistics are not random numbers
that would let activations drift through 50 layers: after seeded init of the
convs (Kaiming normal) and of the BN affine parameters, the running
statistics are measured on one seeded batch of N(0, 1) images at a fixed
resolution (:data:`BN_STATS_SIZE`), so every BN really normalizes its input;
the BN that ends a residual branch starts small (:data:`RESIDUAL_GAMMA`).

API: :data:`MODELS`, :func:`build_float_model`, :func:`fuse_batchnorm`,
:func:`export_float_onnx`, :func:`export_quantized`, :func:`list_ops`.
"""

from __future__ import annotations

import copy
import io
import operator
import os
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from torch import nn

from ...hw.errors import InputError
from .quantize import atomic_write_bytes, calibration_reader, list_ops, quantize_model, quantized_op

__all__ = ["ZooError", "ModelSpec", "MODELS", "OPSET", "IR_VERSION", "INPUT_NAME", "OUTPUT_NAME", "BN_STATS_SIZE",
           "RESIDUAL_GAMMA",
           "build_float_model", "fuse_batchnorm", "float_onnx_bytes", "export_float_onnx", "export_quantized",
           "list_ops", "count_params", "count_layers"]

OPSET = 13
"""ONNX opset of the exported models (QOperator quantization is mature at 13)."""
IR_VERSION = 8
"""IR version written into the exported float models (onnxruntime 1.31 rejects IR > 13)."""
INPUT_NAME = "input"
OUTPUT_NAME = "output"
BN_STATS_SIZE = 64
"""Side of the seeded images on which BatchNorm running statistics are measured (tiny_cnn: 32)."""
BN_STATS_BATCH = 4
RESIDUAL_GAMMA = 0.25
"""Scale of the BN gamma that ends a residual branch (a softened zero-init-residual, Goyal et al. 2017).
Random BN-ReLU stacks amplify perturbations; with full-size branches int8 rounding noise grows to a
logit correlation of ~0.88 with the float model in ResNet-50 / MobileNetV2, with 0.25 it stays > 0.96."""


class ZooError(InputError):
    """An unknown model, or an input size it cannot take."""


@dataclass(frozen=True)
class ModelSpec:
    """One zoo entry. ``min_size``: smallest input side accepted by :func:`build_float_model` (the
    network runs and its last feature map is at least 1x1 at its full total stride)."""

    name: str
    description: str
    default_size: int
    min_size: int
    num_classes: int
    reference: str


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("tiny_cnn", "conv3x3-relu, conv3x3/2-relu, conv3x3-relu + residual add, maxpool 2, conv1x1-relu, "
                  "global avgpool, fc 10", 32, 4, 10, "dlfusion smoke-test network"),
        ModelSpec("resnet18", "ResNet-18: 7x7/2 stem, maxpool, 4 stages of 2 basic blocks (64-512 ch), GAP, fc 1000",
                  224, 32, 1000, "He et al., Deep Residual Learning for Image Recognition, CVPR 2016"),
        ModelSpec("resnet50", "ResNet-50 (v1.5, stride on the 3x3): 7x7/2 stem, maxpool, bottleneck stages "
                  "[3, 4, 6, 3] (256-2048 ch), GAP, fc 1000",
                  224, 32, 1000, "He et al., Deep Residual Learning for Image Recognition, CVPR 2016"),
        ModelSpec("mobilenet_v2", "MobileNetV2 1.0: 3x3/2 stem, 17 inverted residuals (expansion 6, ReLU6, "
                  "depthwise 3x3, linear bottleneck), 1x1 to 1280, GAP, fc 1000",
                  224, 32, 1000, "Sandler et al., MobileNetV2: Inverted Residuals and Linear Bottlenecks, CVPR 2018"),
        ModelSpec("vgg16", "VGG-16 (configuration D): 13 conv3x3-relu in 5 blocks with 2x2 maxpool, "
                  "fc 4096-4096-1000 on the flattened 512 x S/32 x S/32 map",
                  224, 32, 1000, "Simonyan & Zisserman, Very Deep Convolutional Networks, ICLR 2015"),
        ModelSpec("squeezenet1_1", "SqueezeNet 1.1: 3x3/2 conv, 3 ceil-mode 3x3/2 maxpools, 8 fire modules, "
                  "conv1x1 to 1000, GAP",
                  224, 25, 1000, "Iandola et al., SqueezeNet, 2016; v1.1 from the SqueezeNet repository"),
        ModelSpec("regnet_x_400mf", "RegNetX-400MF: 3x3/2 stem (32 ch), 4 stages [1, 2, 7, 12] of residual "
                  "bottlenecks with 3x3 grouped convs (group width 16; 32-400 ch), GAP, fc 1000",
                  224, 32, 1000, "Radosavovic et al., Designing Network Design Spaces, CVPR 2020; torchvision's "
                  "regnet_x_400mf"),
        ModelSpec("shufflenet_v2_x1_0", "ShuffleNetV2 1.0x: 3x3/2 stem, maxpool, 3 stages [4, 8, 4] (116-464 ch) "
                  "of channel split, depthwise 3x3 branch, concat and channel shuffle, 1x1 to 1024, mean, fc 1000",
                  224, 32, 1000, "Ma et al., ShuffleNet V2, ECCV 2018; torchvision's shufflenet_v2_x1_0"),
        ModelSpec("mnasnet1_0", "MnasNet 1.0 (B1): 3x3/2 stem, separable 3x3, 6 stacks of inverted residuals "
                  "(3x3/5x5 depthwise, expansion 3/6; 24-320 ch), 1x1 to 1280, mean over H, W, fc 1000",
                  224, 32, 1000, "Tan et al., MnasNet, CVPR 2019; torchvision's mnasnet1_0"),
        ModelSpec("efficientnet_b0", "EfficientNet-B0: 3x3/2 stem (32 ch), 16 MBConv blocks in 7 stages (3x3/5x5 "
                  "depthwise, expansion 1/6, squeeze-and-excitation with sigmoid gates, SiLU; 16-320 ch), 1x1 to "
                  "1280, GAP, fc 1000", 224, 32, 1000,
                  "Tan & Le, EfficientNet, ICML 2019; torchvision's efficientnet_b0"),
        ModelSpec("mobilenet_v3_small", "MobileNetV3-Small: 3x3/2 stem (16 ch, hard-swish), 11 inverted residuals "
                  "(3x3/5x5 depthwise, ReLU or hard-swish, squeeze-and-excitation with hard-sigmoid gates; "
                  "16-96 ch), 1x1 to 576, GAP, fc 1024 hard-swish, fc 1000", 224, 32, 1000,
                  "Howard et al., Searching for MobileNetV3, ICCV 2019; torchvision's mobilenet_v3_small"),
        ModelSpec("mobilenet_v3_large", "MobileNetV3-Large: 3x3/2 stem (16 ch, hard-swish), 15 inverted residuals "
                  "(3x3/5x5 depthwise, ReLU or hard-swish, squeeze-and-excitation with hard-sigmoid gates; "
                  "16-160 ch), 1x1 to 960, GAP, fc 1280 hard-swish, fc 1000", 224, 32, 1000,
                  "Howard et al., Searching for MobileNetV3, ICCV 2019; torchvision's mobilenet_v3_large"),
        ModelSpec("yolo_tiny", "a small YOLOv8n-style detector: SiLU convs, C2f blocks (channel Split, bottlenecks, "
                  "Concat; 16-256 ch), SPPF (three 5x5 max pools), PAN neck (nearest x2 upsampling, Concat), three "
                  "heads at strides 8/16/32 (3x3 conv, 1x1 conv to 4 box + 1 objectness + 80 class maps): three "
                  "outputs", 128, 32, 80,
                  "after Jocher et al., Ultralytics YOLOv8 (n scale: widths 16-256, depths 1-2-2-1), with a "
                  "coupled head"),
    )
}


# ---------------------------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------------------------

class ConvBN(nn.Module):
    """Conv2d (no bias) + BatchNorm2d + optional activation; :func:`fuse_batchnorm` folds the BN."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, pad: int | None = None, groups: int = 1,
                 act: str | None = "relu"):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, (k - 1) // 2 if pad is None else pad, groups=groups, bias=False)
        self.bn: nn.Module = nn.BatchNorm2d(cout)
        self.act = {"relu": nn.ReLU(), "relu6": nn.ReLU6(), "silu": nn.SiLU(), "hswish": nn.Hardswish(),
                    None: nn.Identity()}[act]

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class TinyCNN(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = ConvBN(3, 16, 3)
        self.conv2 = ConvBN(16, 32, 3, stride=2)
        self.conv3 = ConvBN(32, 32, 3)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv4 = ConvBN(32, 64, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.conv2(self.conv1(x))
        x = x + self.conv3(x)
        x = self.conv4(self.pool(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = ConvBN(cin, planes, 3, stride)
        self.conv2 = ConvBN(planes, planes, 3, act=None)
        self.downsample = ConvBN(cin, planes, 1, stride, act=None) if stride != 1 or cin != planes else None
        self.relu = nn.ReLU()

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv2(self.conv1(x)) + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = ConvBN(cin, planes, 1)
        self.conv2 = ConvBN(planes, planes, 3, stride)
        self.conv3 = ConvBN(planes, out, 1, act=None)
        self.downsample = ConvBN(cin, out, 1, stride, act=None) if stride != 1 or cin != out else None
        self.relu = nn.ReLU()

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv3(self.conv2(self.conv1(x))) + identity)


class ResNet(nn.Module):
    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: list[int], num_classes: int = 1000):
        super().__init__()
        self.stem = ConvBN(3, 64, 7, 2, 3)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, cin = [], 64
        for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
            stage = []
            for b in range(blocks):
                stage.append(block(cin, planes, 2 if (i > 0 and b == 0) else 1))
                cin = planes * block.expansion
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.maxpool(self.stem(x))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = [] if expand == 1 else [ConvBN(cin, hidden, 1, act="relu6")]
        layers += [ConvBN(hidden, hidden, 3, stride, groups=hidden, act="relu6"),  # depthwise
                   ConvBN(hidden, cout, 1, act=None)]  # linear bottleneck
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    # (expansion t, output channels c, repeats n, first stride s), Table 2 of the paper
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1))

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        layers: list[nn.Module] = [ConvBN(3, 32, 3, 2, act="relu6")]
        cin = 32
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(ConvBN(cin, 1280, 1, act="relu6"))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.2)
        self.classifier = nn.Linear(1280, num_classes)

    def forward(self, x):
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(self.dropout(x))


class VGG16(nn.Module):
    CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")

    def __init__(self, input_size: int, num_classes: int = 1000):
        super().__init__()
        layers: list[nn.Module] = []
        cin, side = 3, input_size
        for v in self.CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                side //= 2
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU()]
                cin = v
        self.features = nn.Sequential(*layers)
        # torchvision pools adaptively to 7x7 (the identity at 224); here the classifier takes the flattened
        # S/32 x S/32 map as it is, which is the published network at 224 and stays exportable at any size.
        self.classifier = nn.Sequential(
            nn.Linear(512 * side * side, 4096), nn.ReLU(), nn.Dropout(),
            nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(),
            nn.Linear(4096, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class Fire(nn.Module):
    def __init__(self, cin: int, squeeze: int, expand1x1: int, expand3x3: int):
        super().__init__()
        self.squeeze = nn.Conv2d(cin, squeeze, 1)
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, 1)
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x):
        x = self.relu(self.squeeze(x))
        return torch.cat([self.relu(self.expand1x1(x)), self.relu(self.expand3x3(x))], 1)


class SqueezeNet11(nn.Module):
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 3, stride=2), nn.ReLU(),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(64, 16, 64, 64), Fire(128, 16, 64, 64),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(128, 32, 128, 128), Fire(256, 32, 128, 128),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(256, 48, 192, 192), Fire(384, 48, 192, 192), Fire(384, 64, 256, 256), Fire(512, 64, 256, 256))
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(512, num_classes, 1), nn.ReLU(),
                                        nn.AdaptiveAvgPool2d(1))

    def forward(self, x):
        return torch.flatten(self.classifier(self.features(x)), 1)


class RegNetBlock(nn.Module):
    """RegNet's residual bottleneck (X block, bottleneck ratio 1): 1x1, 3x3 grouped (stride), 1x1, plus the
    input (a 1x1 projection where the shape changes), then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int, group_width: int):
        super().__init__()
        self.a = ConvBN(cin, cout, 1)
        self.b = ConvBN(cout, cout, 3, stride, groups=cout // group_width)
        self.c = ConvBN(cout, cout, 1, act=None)
        self.proj = ConvBN(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else None
        self.relu = nn.ReLU()

    def forward(self, x):
        shortcut = x if self.proj is None else self.proj(x)
        return self.relu(shortcut + self.c(self.b(self.a(x))))


class RegNetX400MF(nn.Module):
    # torchvision's regnet_x_400mf: depth 22, w_0 24, w_a 24.48, w_m 2.54, group width 16 quantize to
    WIDTHS, DEPTHS, GROUP_WIDTH = (32, 64, 160, 400), (1, 2, 7, 12), 16

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.stem = ConvBN(3, 32, 3, 2)
        blocks, cin = [], 32
        for width, depth in zip(self.WIDTHS, self.DEPTHS, strict=True):
            for index in range(depth):
                blocks.append(RegNetBlock(cin, width, 2 if index == 0 else 1, self.GROUP_WIDTH))
                cin = width
        self.trunk = nn.Sequential(*blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.avgpool(self.trunk(self.stem(x))), 1))


class ShuffleBlock(nn.Module):
    """ShuffleNetV2's unit: stride 1 splits the channels in halves and transforms the second; stride 2
    transforms the input in two branches; the halves are concatenated and shuffled (2 groups)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride, self.half = stride, cout // 2
        if stride > 1:
            self.branch1 = nn.Sequential(ConvBN(cin, cin, 3, stride, groups=cin, act=None),
                                         ConvBN(cin, self.half, 1))
        self.branch2 = nn.Sequential(ConvBN(cin if stride > 1 else self.half, self.half, 1),
                                     ConvBN(self.half, self.half, 3, stride, groups=self.half, act=None),
                                     ConvBN(self.half, self.half, 1))

    def forward(self, x):
        if self.stride == 1:     # slices with constant bounds (torch's chunk would export Shape arithmetic)
            out = torch.cat([x[:, :self.half], self.branch2(x[:, self.half:])], 1)
        else:
            out = torch.cat([self.branch1(x), self.branch2(x)], 1)
        n, c, h, w = out.shape
        return out.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)


class ShuffleNetV2(nn.Module):
    REPEATS, CHANNELS = (4, 8, 4), (24, 116, 232, 464, 1024)

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1 = ConvBN(3, self.CHANNELS[0], 3, 2)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        blocks, cin = [], self.CHANNELS[0]
        for repeats, cout in zip(self.REPEATS, self.CHANNELS[1:4], strict=True):
            for index in range(repeats):
                blocks.append(ShuffleBlock(cin, cout, 2 if index == 0 else 1))
                cin = cout
        self.stages = nn.Sequential(*blocks)
        self.conv5 = ConvBN(cin, self.CHANNELS[4], 1)
        self.fc = nn.Linear(self.CHANNELS[4], num_classes)

    def forward(self, x):
        x = self.conv5(self.stages(self.maxpool(self.conv1(x))))
        return self.fc(x.mean([2, 3]))


class MnasBlock(nn.Module):
    """MnasNet's inverted residual: 1x1 expansion, k x k depthwise (stride), linear 1x1, residual where the
    shape allows."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.layers = nn.Sequential(ConvBN(cin, mid, 1), ConvBN(mid, mid, kernel, stride, groups=mid),
                                    ConvBN(mid, cout, 1, act=None))
        self.use_residual = cin == cout and stride == 1

    def forward(self, x):
        return x + self.layers(x) if self.use_residual else self.layers(x)


class MnasNet10(nn.Module):
    # (output channels, kernel, first stride, expansion, repeats) of the six stacks (torchvision, alpha 1.0)
    STACKS = ((24, 3, 2, 3, 3), (40, 5, 2, 3, 3), (80, 5, 2, 6, 3), (96, 3, 1, 6, 2), (192, 5, 2, 6, 4),
              (320, 3, 1, 6, 1))

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        layers: list[nn.Module] = [ConvBN(3, 32, 3, 2), ConvBN(32, 32, 3, groups=32), ConvBN(32, 16, 1, act=None)]
        cin = 16
        for cout, kernel, stride, expand, repeats in self.STACKS:
            for index in range(repeats):
                layers.append(MnasBlock(cin, cout, kernel, stride if index == 0 else 1, expand))
                cin = cout
        layers.append(ConvBN(cin, 1280, 1))
        self.layers = nn.Sequential(*layers)
        self.dropout = nn.Dropout(0.2)
        self.classifier = nn.Linear(1280, num_classes)

    def forward(self, x):
        return self.classifier(self.dropout(self.layers(x).mean([2, 3])))


def _make_divisible(value: float, divisor: int = 8) -> int:
    """torchvision's channel rounding: the nearest multiple of ``divisor``, never 10 % below ``value``."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class SqueezeExcitation(nn.Module):
    """Global average pool, 1x1 reduce + ``act``, 1x1 expand + ``gate``, times the input per channel."""

    def __init__(self, channels: int, squeezed: int, act: str, gate: str):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, squeezed, 1)
        self.expand = nn.Conv2d(squeezed, channels, 1)
        self.act = {"relu": nn.ReLU(), "silu": nn.SiLU()}[act]
        self.gate = {"sigmoid": nn.Sigmoid(), "hsigmoid": nn.Hardsigmoid()}[gate]

    def forward(self, x):
        return x * self.gate(self.expand(self.act(self.reduce(self.pool(x)))))


class MBConv(nn.Module):
    """EfficientNet's block: 1x1 expansion (SiLU), k x k depthwise (stride, SiLU), squeeze-and-excitation
    (a quarter of the block's input channels, sigmoid gate), linear 1x1, residual where the shape allows."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        layers: list[nn.Module] = [] if expand == 1 else [ConvBN(cin, mid, 1, act="silu")]
        layers += [ConvBN(mid, mid, kernel, stride, groups=mid, act="silu"),
                   SqueezeExcitation(mid, max(1, cin // 4), "silu", "sigmoid"), ConvBN(mid, cout, 1, act=None)]
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.block(x) if self.use_residual else self.block(x)


class EfficientNetB0(nn.Module):
    # (expansion, kernel, first stride, output channels, repeats) of the seven stages (torchvision, B0)
    STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
              (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        layers: list[nn.Module] = [ConvBN(3, 32, 3, 2, act="silu")]
        cin = 32
        for expand, kernel, stride, cout, repeats in self.STAGES:
            for index in range(repeats):
                layers.append(MBConv(cin, cout, kernel, stride if index == 0 else 1, expand))
                cin = cout
        layers.append(ConvBN(cin, 1280, 1, act="silu"))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.2)
        self.classifier = nn.Linear(1280, num_classes)

    def forward(self, x):
        return self.classifier(self.dropout(torch.flatten(self.avgpool(self.features(x)), 1)))


class MobileNetV3Block(nn.Module):
    """MobileNetV3's inverted residual: 1x1 expansion (if wider), k x k depthwise (stride), optional
    squeeze-and-excitation (ReLU, hard-sigmoid gate), linear 1x1, residual where the shape allows."""

    def __init__(self, cin: int, kernel: int, mid: int, cout: int, se: bool, act: str, stride: int):
        super().__init__()
        layers: list[nn.Module] = [] if mid == cin else [ConvBN(cin, mid, 1, act=act)]
        layers.append(ConvBN(mid, mid, kernel, stride, groups=mid, act=act))
        if se:
            layers.append(SqueezeExcitation(mid, _make_divisible(mid // 4), "relu", "hsigmoid"))
        layers.append(ConvBN(mid, cout, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.block(x) if self.use_residual else self.block(x)


class MobileNetV3(nn.Module):
    # (input, kernel, expanded, output, squeeze-and-excitation, activation, stride): Tables 1 and 2 of the paper
    SMALL = ((16, 3, 16, 16, True, "relu", 2), (16, 3, 72, 24, False, "relu", 2), (24, 3, 88, 24, False, "relu", 1),
             (24, 5, 96, 40, True, "hswish", 2), (40, 5, 240, 40, True, "hswish", 1),
             (40, 5, 240, 40, True, "hswish", 1), (40, 5, 120, 48, True, "hswish", 1),
             (48, 5, 144, 48, True, "hswish", 1), (48, 5, 288, 96, True, "hswish", 2),
             (96, 5, 576, 96, True, "hswish", 1), (96, 5, 576, 96, True, "hswish", 1))
    LARGE = ((16, 3, 16, 16, False, "relu", 1), (16, 3, 64, 24, False, "relu", 2), (24, 3, 72, 24, False, "relu", 1),
             (24, 5, 72, 40, True, "relu", 2), (40, 5, 120, 40, True, "relu", 1), (40, 5, 120, 40, True, "relu", 1),
             (40, 3, 240, 80, False, "hswish", 2), (80, 3, 200, 80, False, "hswish", 1),
             (80, 3, 184, 80, False, "hswish", 1), (80, 3, 184, 80, False, "hswish", 1),
             (80, 3, 480, 112, True, "hswish", 1), (112, 3, 672, 112, True, "hswish", 1),
             (112, 5, 672, 160, True, "hswish", 2), (160, 5, 960, 160, True, "hswish", 1),
             (160, 5, 960, 160, True, "hswish", 1))

    def __init__(self, blocks, last: int, hidden: int, num_classes: int = 1000):
        super().__init__()
        layers: list[nn.Module] = [ConvBN(3, 16, 3, 2, act="hswish")]
        layers += [MobileNetV3Block(*block) for block in blocks]
        layers.append(ConvBN(blocks[-1][3], last, 1, act="hswish"))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(last, hidden), nn.Hardswish(), nn.Dropout(0.2),
                                        nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class C2f(nn.Module):
    """YOLOv8's block: a 1x1 conv, its channels split in halves, ``n`` residual bottlenecks (two 3x3 convs)
    on the second half, each result kept, all concatenated into a 1x1 conv."""

    def __init__(self, cin: int, cout: int, n: int, shortcut: bool = True):
        super().__init__()
        self.half = cout // 2
        self.cv1 = ConvBN(cin, 2 * self.half, 1, act="silu")
        self.blocks = nn.ModuleList(nn.Sequential(ConvBN(self.half, self.half, 3, act="silu"),
                                                  ConvBN(self.half, self.half, 3, act="silu")) for _ in range(n))
        self.shortcut = shortcut
        self.cv2 = ConvBN((2 + n) * self.half, cout, 1, act="silu")

    def forward(self, x):
        parts = list(self.cv1(x).chunk(2, 1))
        for block in self.blocks:
            parts.append(parts[-1] + block(parts[-1]) if self.shortcut else block(parts[-1]))
        return self.cv2(torch.cat(parts, 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: a 1x1 conv, three chained 5x5 stride-1 max pools, all four
    concatenated into a 1x1 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.cv1 = ConvBN(channels, channels // 2, 1, act="silu")
        self.pool = nn.MaxPool2d(5, 1, 2)
        self.cv2 = ConvBN(2 * channels, channels, 1, act="silu")

    def forward(self, x):
        parts = [self.cv1(x)]
        for _ in range(3):
            parts.append(self.pool(parts[-1]))
        return self.cv2(torch.cat(parts, 1))


class YoloTiny(nn.Module):
    """Backbone (strides 2-32), PAN neck and three heads; ``forward`` returns the stride-8, 16 and 32 maps."""

    WIDTHS = (16, 32, 64, 128, 256)
    output_names = ("output", "output1", "output2")

    def __init__(self, num_classes: int = 80):
        super().__init__()
        w = self.WIDTHS
        self.stem = nn.Sequential(ConvBN(3, w[0], 3, 2, act="silu"), ConvBN(w[0], w[1], 3, 2, act="silu"),
                                  C2f(w[1], w[1], 1))
        self.stage3 = nn.Sequential(ConvBN(w[1], w[2], 3, 2, act="silu"), C2f(w[2], w[2], 2))
        self.stage4 = nn.Sequential(ConvBN(w[2], w[3], 3, 2, act="silu"), C2f(w[3], w[3], 2))
        self.stage5 = nn.Sequential(ConvBN(w[3], w[4], 3, 2, act="silu"), C2f(w[4], w[4], 1), SPPF(w[4]))
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.top4 = C2f(w[4] + w[3], w[3], 1, shortcut=False)
        self.top3 = C2f(w[3] + w[2], w[2], 1, shortcut=False)
        self.down3 = ConvBN(w[2], w[2], 3, 2, act="silu")
        self.bottom4 = C2f(w[2] + w[3], w[3], 1, shortcut=False)
        self.down4 = ConvBN(w[3], w[3], 3, 2, act="silu")
        self.bottom5 = C2f(w[3] + w[4], w[4], 1, shortcut=False)
        self.heads = nn.ModuleList(nn.Sequential(ConvBN(c, c, 3, act="silu"), nn.Conv2d(c, 5 + num_classes, 1))
                                   for c in (w[2], w[3], w[4]))

    def forward(self, x):
        p3 = self.stage3(self.stem(x))
        p4 = self.stage4(p3)
        p5 = self.stage5(p4)
        t4 = self.top4(torch.cat([self.up(p5), p4], 1))
        n3 = self.top3(torch.cat([self.up(t4), p3], 1))
        n4 = self.bottom4(torch.cat([self.down3(n3), t4], 1))
        n5 = self.bottom5(torch.cat([self.down4(n4), p5], 1))
        return tuple(head(feature) for head, feature in zip(self.heads, (n3, n4, n5), strict=True))


_BUILDERS: dict[str, Callable[[int, int], nn.Module]] = {
    "tiny_cnn": lambda size, classes: TinyCNN(classes),
    "resnet18": lambda size, classes: ResNet(BasicBlock, [2, 2, 2, 2], classes),
    "resnet50": lambda size, classes: ResNet(Bottleneck, [3, 4, 6, 3], classes),
    "mobilenet_v2": lambda size, classes: MobileNetV2(classes),
    "vgg16": lambda size, classes: VGG16(size, classes),
    "squeezenet1_1": lambda size, classes: SqueezeNet11(classes),
    "regnet_x_400mf": lambda size, classes: RegNetX400MF(classes),
    "shufflenet_v2_x1_0": lambda size, classes: ShuffleNetV2(classes),
    "mnasnet1_0": lambda size, classes: MnasNet10(classes),
    "efficientnet_b0": lambda size, classes: EfficientNetB0(classes),
    "mobilenet_v3_small": lambda size, classes: MobileNetV3(MobileNetV3.SMALL, 576, 1024, classes),
    "mobilenet_v3_large": lambda size, classes: MobileNetV3(MobileNetV3.LARGE, 960, 1280, classes),
    "yolo_tiny": lambda size, classes: YoloTiny(classes),
}
assert _BUILDERS.keys() == MODELS.keys()


# ---------------------------------------------------------------------------------------------------------------
# Seeded initialization
# ---------------------------------------------------------------------------------------------------------------

def _spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ZooError(f"unknown model {name!r}; the zoo has {', '.join(MODELS)}") from None


def split_name(name: str) -> tuple[str, str | None]:
    """A zoo name and its pruning pattern: ``"resnet50:2of4"`` is ``("resnet50", "2:4")``, ``"resnet50"``
    is ``("resnet50", None)`` (the pattern is checked by :func:`~..prune.parse_pattern`)."""
    base, _, pattern = str(name).partition(":")
    return base, (pattern.replace("of", ":") if pattern else None)


def is_zoo_name(name: str) -> bool:
    """Whether ``name`` is a zoo model, pruned (``resnet50:2of4``) or not."""
    return split_name(name)[0] in MODELS


def _check_size(spec: ModelSpec, input_size: int) -> int:
    if isinstance(input_size, bool):
        raise ZooError(f"{spec.name}: input_size must be an int, got {input_size!r}")
    try:
        input_size = operator.index(input_size)
    except TypeError:
        raise ZooError(f"{spec.name}: input_size must be an int, got {input_size!r}") from None
    if input_size < spec.min_size:
        raise ZooError(f"{spec.name}: input_size {input_size} is below the minimum {spec.min_size}")
    return input_size


@torch.no_grad()
def _init_weights(model: nn.Module, gen: torch.Generator) -> None:
    """Give every parameter and buffer a seeded value (the model was built on the meta device)."""
    for mod in model.modules():
        if isinstance(mod, nn.Conv2d):
            nn.init.kaiming_normal_(mod.weight, mode="fan_in", nonlinearity="relu", generator=gen)
            if mod.bias is not None:
                nn.init.uniform_(mod.bias, -0.1, 0.1, generator=gen)
        elif isinstance(mod, nn.Linear):
            bound = mod.in_features ** -0.5
            nn.init.uniform_(mod.weight, -bound, bound, generator=gen)
            nn.init.uniform_(mod.bias, -bound, bound, generator=gen)
        elif isinstance(mod, nn.BatchNorm2d):
            nn.init.uniform_(mod.weight, 0.5, 1.5, generator=gen)
            nn.init.normal_(mod.bias, 0.0, 0.2, generator=gen)
            mod.reset_running_stats()
        elif any(True for _ in mod.parameters(recurse=False)) or any(True for _ in mod.buffers(recurse=False)):
            raise TypeError(f"no seeded init for {type(mod).__name__}")
    for mod in model.modules():
        last = _residual_branch_end(mod)
        if last is not None:
            last.bn.weight.mul_(RESIDUAL_GAMMA)


def _residual_branch_end(mod: nn.Module) -> ConvBN | None:
    if isinstance(mod, Bottleneck):
        return mod.conv3
    if isinstance(mod, BasicBlock):
        return mod.conv2
    if isinstance(mod, InvertedResidual) and mod.use_residual:
        return mod.conv[-1]
    if isinstance(mod, RegNetBlock):
        return mod.c
    if isinstance(mod, MnasBlock) and mod.use_residual:
        return mod.layers[-1]
    if isinstance(mod, (MBConv, MobileNetV3Block)) and mod.use_residual:
        return mod.block[-1]
    return None


@torch.no_grad()
def _measure_bn_stats(model: nn.Module, size: int, gen: torch.Generator) -> None:
    """Running statistics of every BN = the batch statistics on seeded N(0, 1) images."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    if not bns:
        return
    for bn in bns:
        bn.momentum = None  # cumulative average: after one batch, exactly that batch's statistics
    model.eval()  # only the BNs train (dropout stays off and leaves the global RNG alone)
    for bn in bns:
        bn.train()
    images = torch.randn(BN_STATS_BATCH, 3, size, size, generator=gen)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the reduction order, hence the statistics' last bits, depend on the thread count
    try:
        model(images)
    finally:
        torch.set_num_threads(threads)
    for bn in bns:
        bn.momentum = 0.1
        bn.num_batches_tracked.zero_()


def build_float_model(name: str, input_size: int | None = None, seed: int = 0) -> nn.Module:
    """The float PyTorch model ``name`` for ``input_size`` x ``input_size`` RGB inputs, in eval mode.

    Seeded: the weights depend only on ``(name, seed)`` (VGG-16's first fc also on the size, its fan-in).
    BatchNorm layers are kept (the published parameter counts include them); :func:`fuse_batchnorm` folds
    them into the convs.  The global RNG state of torch is left untouched.
    """
    spec = _spec(name)
    size = _check_size(spec, spec.default_size if input_size is None else input_size)
    with torch.device("meta"):
        model = _BUILDERS[name](size, spec.num_classes)
    model = model.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(int(seed))
    _init_weights(model, gen)
    _measure_bn_stats(model, min(BN_STATS_SIZE, spec.default_size), gen)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def fuse_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval mode) with every :class:`ConvBN`'s BatchNorm folded into its conv."""
    fused = copy.deepcopy(model).eval()
    for mod in fused.modules():
        if isinstance(mod, ConvBN) and isinstance(mod.bn, nn.BatchNorm2d):
            mod.conv = torch.nn.utils.fusion.fuse_conv_bn_eval(mod.conv, mod.bn)
            mod.bn = nn.Identity()
    leftover = [n for n, m in fused.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if leftover:
        raise ValueError(f"BatchNorm not preceded by a conv, cannot fold: {leftover}")
    return fused


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_layers(model: nn.Module) -> dict[str, int]:
    """Numbers of convs, depthwise convs (groups == channels > 1) and fully connected layers."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return {"conv": len(convs),
            "depthwise": sum(1 for m in convs if m.groups > 1 and m.groups == m.in_channels == m.out_channels),
            "fc": sum(1 for m in model.modules() if isinstance(m, nn.Linear))}


# ---------------------------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------------------------

def float_onnx_bytes(name: str, input_size: int | None = None, seed: int = 0) -> bytes:
    """The serialized float ONNX model (BN folded, opset :data:`OPSET`, static shape (1, 3, S, S))."""
    spec = _spec(name)
    size = spec.default_size if input_size is None else input_size
    model = fuse_batchnorm(build_float_model(name, size, seed))
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of dynamo=True, which needs onnxscript (not a
        # dependency); the legacy one is deterministic and produces exactly the plain opset-13 graph wanted here.
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 3, size, size),), buf, dynamo=False, opset_version=OPSET,
                          input_names=[INPUT_NAME], output_names=list(getattr(model, "output_names", [OUTPUT_NAME])),
                          do_constant_folding=True,
                          export_params=True)
    proto = onnx.load_from_string(buf.getvalue())
    proto.ir_version = IR_VERSION
    proto.producer_name, proto.producer_version = "dlfusion.zoo", ""
    proto.graph.name = f"{name}_{size}"
    proto.doc_string = f"{spec.description}; input {size}x{size}, seed {seed}"
    if any(n.op_type == "BatchNormalization" for n in proto.graph.node):
        raise AssertionError(f"{name}: BatchNormalization left in the exported graph")
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()


def export_float_onnx(name: str, input_size: int | None, path: str | os.PathLike, seed: int = 0) -> Path:
    """Export the float model to ``path`` (written atomically). Input ``input`` float32 (1, 3, S, S),
    output ``output`` float32 (1, classes)."""
    path = Path(path)
    atomic_write_bytes(path, float_onnx_bytes(name, input_size, seed))
    return path


def export_quantized(name: str, input_size: int | None, path: str | os.PathLike, seed: int = 0,
                     calibration: str | os.PathLike = "random", num_calibration: int = 8,
                     activation_type: str = "uint8", quant_format: str = "qoperator", lanes: int = 16) -> Path:
    """Float export + :func:`.quantize.quantize_model` into ``path`` (atomic; nothing is cached).

    ``quant_format``: ``"qoperator"`` (default) or ``"qdq"``, see :data:`.quantize.QUANT_FORMATS`.
    ``seed`` seeds both the weights and the random calibration images. A pruned name
    (``resnet50:2of4``) is pruned before quantization (:func:`export_pruned`, for PE arrays of ``lanes``).
    """
    base, pattern = split_name(name)
    if pattern is not None:
        return export_pruned(base, pattern, input_size, path, seed=seed, calibration=calibration,
                             num_calibration=num_calibration, activation_type=activation_type,
                             quant_format=quant_format, lanes=lanes)[0]
    path = Path(path)
    spec = _spec(name)
    size = _check_size(spec, spec.default_size if input_size is None else input_size)
    calibration_reader(calibration, INPUT_NAME, (1, 3, size, size), num_calibration, seed)  # fail early
    with tempfile.TemporaryDirectory(prefix="dlfusion-zoo-") as tmp:
        float_path = export_float_onnx(name, size, Path(tmp) / f"{name}_float.onnx", seed)
        quantize_model(float_path, path, calibration=calibration, num_calibration=num_calibration, seed=seed,
                       activation_type=activation_type, quant_format=quant_format)
    return path


def export_pruned(model: str | os.PathLike, pattern: str, input_size: int | None, path: str | os.PathLike,
                  seed: int = 0, calibration: str | os.PathLike = "random", num_calibration: int = 8,
                  activation_type: str = "uint8", quant_format: str = "qoperator",
                  lanes: int = 16) -> tuple[Path, dict]:
    """A zoo model (exported at ``input_size``) or a float ``.onnx`` file, N:M pruned
    (:func:`.prune.prune_model`), quantized as :func:`export_quantized` does, into ``path`` (atomic);
    and the report (pruned and dense layers), after checking the quantized weights keep the pattern."""
    from ..prune import parse_pattern
    from .prune import check_quantized, prune_model
    sparsity = parse_pattern(pattern)
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="dlfusion-prune-") as tmp:
        if Path(model).suffix == ".onnx":
            if input_size is not None:
                raise ZooError(f"--input-size is for zoo models; {model} has its own input size")
            try:
                proto = onnx.load(os.fspath(model))
            except FileNotFoundError:
                raise ZooError(f"model file {str(model)!r} does not exist") from None
            except Exception as error:
                raise ZooError(f"{model}: not a readable ONNX model ({type(error).__name__})") from None
            quantized = quantized_op(node.op_type for node in proto.graph.node)
            if quantized is not None:
                raise ZooError(f"{model} is already quantized ({quantized}): prune its float model, then "
                               "quantize (dlfusion prune quantizes it)")
        else:
            spec = _spec(str(model))
            size = _check_size(spec, spec.default_size if input_size is None else input_size)
            proto = onnx.load_from_string(float_onnx_bytes(str(model), size, seed))
        report = prune_model(proto, sparsity, lanes)
        float_path = Path(tmp) / "pruned_float.onnx"
        onnx.save(proto, os.fspath(float_path))
        quantized_path = Path(tmp) / "pruned.onnx"
        quantize_model(float_path, quantized_path, calibration=calibration, num_calibration=num_calibration,
                       seed=seed, activation_type=activation_type, quant_format=quant_format)
        broken = check_quantized(onnx.load(os.fspath(quantized_path)), report)
        if broken:
            layer, why = next(iter(broken.items()))
            raise ZooError(f"after quantization {len(broken)} pruned layer(s) break {sparsity.label}: {layer}: {why}")
        atomic_write_bytes(path, quantized_path.read_bytes())
    return path, report.to_json()
