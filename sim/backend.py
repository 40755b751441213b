"""Backends behind one interface: the golden simulator and the RTL run a binary through the same call.

A backend is an object built for one :class:`~dlfusion.hw.config.HwConfig` whose
``run(binary, inputs)`` returns a :class:`~.result.RunResult` (:class:`Backend`).
The backends are named in :data:`REGISTRY` and resolved by name with
:func:`open_backend`; a backend's module is imported only when it is first asked
for, so choosing ``golden`` never loads the Verilator/cocotb harness.

Imports point one way: this module names the backend modules, the backends import
only :mod:`.result` and :mod:`.image` below them, and :mod:`.runtime` chooses
through this module.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from ..hw.binary import Binary
from ..hw.config import HwConfig
from ..hw.errors import InputError
from .result import RunResult

__all__ = ["Backend", "BackendSpec", "REGISTRY", "BACKENDS", "backend_class", "open_backend"]


@runtime_checkable
class Backend(Protocol):
    """What every backend provides.

    Attributes
    ----------
    backend : str
        The backend's name in :data:`REGISTRY` (also ``RunResult.backend``).
    hw : HwConfig
        The configuration it simulates; binaries built for another one are rejected.
    """

    backend: str
    hw: HwConfig

    def run(self, binary: Binary, inputs: dict[str, np.ndarray] | None = None) -> RunResult:
        """Run ``binary`` with every one of its inputs, as logical arrays.

        Raises
        ------
        BinaryError
            The binary was built for another HwConfig, or the inputs are wrong.
        """
        ...


@dataclass(frozen=True)
class BackendSpec:
    """Where a named backend lives: ``dlfusion.sim.<module>.<attribute>``, a class taking the HwConfig."""
    name: str
    module: str
    attribute: str
    summary: str

    def load(self) -> type[Backend]:
        """The backend class (imports its module on first use)."""
        return getattr(importlib.import_module(f".{self.module}", __package__), self.attribute)


#: The named backends, in the order they are listed to the user.
REGISTRY: dict[str, BackendSpec] = {spec.name: spec for spec in (
    BackendSpec("golden", "golden", "GoldenSimulator",
                "the golden ISA simulator (bit-exact outputs, estimated cycles)"),
    BackendSpec("rtl", "rtl", "RtlSimulator",
                "the Verilated RTL through cocotb (exact cycles and counters)"),
)}

#: Accepted backend names (``run(..., backend=...)``, ``--backend``).
BACKENDS = tuple(REGISTRY)


def backend_class(name: str) -> type[Backend]:
    """The class of the backend called ``name``.

    Raises
    ------
    InputError
        No backend has that name.
    """
    spec = REGISTRY.get(name)
    if spec is None:
        raise InputError(f"unknown backend {name!r}; accepted: {', '.join(REGISTRY)}")
    return spec.load()


def open_backend(name: str, hw: HwConfig, **options) -> Backend:
    """The backend called ``name``, built for ``hw`` with its own keyword ``options``.

    Parameters
    ----------
    name : str
        A key of :data:`REGISTRY`.
    hw : HwConfig
    **options
        Keyword arguments of the backend's class (the RTL's ``waves``, ``max_cycles``,
        ``build_dir``, ...; the golden simulator takes none).

    Raises
    ------
    InputError
        Unknown name, or an option the backend does not take.
    """
    cls = backend_class(name)
    accepted = [parameter.name for parameter in list(inspect.signature(cls).parameters.values())[1:]
                if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        takes = f"it takes {', '.join(accepted)}" if accepted else "it takes no options"
        raise InputError(f"the {name} backend does not take the option(s) {', '.join(unknown)}; {takes}")
    return cls(hw, **options)
