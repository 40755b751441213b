"""The compiler's output, byte for byte, on seeded random graphs: what a restructuring must not change.

``random_fingerprints.json`` holds the SHA-256 of the binaries of random graphs
(:func:`~dlfusion.compiler.random_graph.random_graph`, no onnxruntime involved) under
the ``none``, ``max`` and a random plan on two HwConfigs, recorded before the
compiler was reorganized into frontend/passes/plan/lower/emit; ``tests/fingerprints.py``
does the same for the zoo models. A change of the compiler's output is either a bug or
a deliberate change that records the new values (``python tests/compiler/test_fingerprints.py``).
"""

import hashlib
import json
import sys
from pathlib import Path

import pytest

from dlfusion.compiler.random_graph import random_graph
from dlfusion.hw.config import HwConfig

try:
    from dlfusion.compiler.compile import compile_graph
    from dlfusion.compiler.plan import make_plan, random_plan
except ImportError:     # the layout before the reorganization (to record the reference)
    from dlfusion.compiler.compile import compile_graph, make_plan, random_plan

RECORD = Path(__file__).with_name("random_fingerprints.json")
# Without lookup tables (lut_tables = 0), the configurations hash, and their binaries' headers read, as
# before tables existed: the random graphs have none, so nothing else in their binaries depends on them.
CONFIGS = {
    "quad": HwConfig(cores=4, pe_rows=4, pe_cols=4, act_lines=2048, weight_blocks=1024, acc_entries=256,
                     param_entries=64, dram_bytes=1 << 22, dram_bytes_per_cycle=4, dram_latency=12).baseline(),
    "default": HwConfig().baseline(),
}
SEEDS = range(24)


def fingerprint(config: str, seed: int) -> dict:
    hw = CONFIGS[config]
    graph = random_graph(seed, lanes=hw.lanes, max_layers=7, max_size=16)
    plans = {"none": make_plan(graph, hw, fusion="none", cores=1),
             "max": make_plan(graph, hw, fusion="max", cores=hw.cores),
             "random": random_plan(graph, hw, seed)}
    return {name: hashlib.sha256(compile_graph(graph, hw, plan).to_bytes()).hexdigest()
            for name, plan in plans.items()}


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_binaries_of_random_graphs_are_unchanged(config):
    expected = json.loads(RECORD.read_text())[config]
    changed = [(seed, plan) for seed in SEEDS for plan, digest in fingerprint(config, seed).items()
               if expected[str(seed)][plan] != digest]
    assert not changed, f"binaries changed (seed, plan): {changed}"


if __name__ == "__main__":
    record = {config: {str(seed): fingerprint(config, seed) for seed in SEEDS} for config in sorted(CONFIGS)}
    RECORD.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    print(f"wrote {RECORD}", file=sys.stderr)


@pytest.mark.parametrize("seed", [0, 5, 11])
def test_lookup_hardware_changes_only_the_header_of_a_graph_without_tables(seed):
    bare = CONFIGS["default"]
    graph = random_graph(seed, lanes=bare.lanes, max_layers=7, max_size=16)
    plan = make_plan(graph, bare, fusion="max", cores=bare.cores)
    without, with_tables = (compile_graph(graph, hw, plan) for hw in (bare, HwConfig()))
    assert with_tables.hw.lut_tables == 4 and with_tables.hw.hash != without.hw.hash
    assert [(s.name, s.dram_line, s.data) for s in with_tables.segments] == \
        [(s.name, s.dram_line, s.data) for s in without.segments]
    assert with_tables.streams == without.streams
