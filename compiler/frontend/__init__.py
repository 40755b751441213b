"""The frontend: quantized ONNX models (and the built-in zoo) into the graph IR.

``onnx``
    :func:`load_onnx` (QOperator and QDQ models), the converters of the supported operators
    (``converters``: QOperator, ``qdq``: QDQ; both build their IR nodes with ``nodes``).
``quantize``
    onnxruntime's ``quantize_static`` on float models (random or ``.npy`` calibration).
``zoo``
    the built-in models, defined in PyTorch with seeded weights, exported and quantized.
"""

from .onnx import SUPPORTED_OPS, SUPPORTED_QDQ_OPS, load_onnx

__all__ = ["load_onnx", "SUPPORTED_OPS", "SUPPORTED_QDQ_OPS"]
