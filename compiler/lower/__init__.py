"""Lowering: a plan's groups to per-core instruction streams, through :class:`~dlfusion.hw.asm.StreamBuilder`.

``common``
    semaphore roles, layer views (:class:`~.common.LayerKind`), packing, ISA limits, core partitions.
``tiling``
    bands, weight groups and input-channel chunks of a windowed layer.
``windowed``, ``chunked``, ``elementwise``
    one layer (split by rows or channels over several cores).
``fused``
    a depth-first fusion group of several layers, intermediates on chip.
``group``
    one plan group on its cores: the one entry point of the compiler's emit step and of the
    tuner's static features (the same lowering, emitting or counting).
"""
