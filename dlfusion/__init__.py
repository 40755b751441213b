"""dlfusion: hardware/compiler co-design for multicore int8 DNN accelerators."""

__version__ = "0.1.0"
