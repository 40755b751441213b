"""Fingerprints of the compiler's output: what a restructuring must leave byte for byte alone.

For every zoo model at 32 and 64 px on the default HwConfig, three plans:
``none`` (every layer alone on one core), ``max`` (max fusion on all cores) and
``dlfusion`` (the joint strategy with the fixed rule and cost model below, so the
plan depends only on the static features and the search). Per plan: the SHA-256
of the compiled binary and the static features of every group.

    python tests/fingerprints.py --write tests/fingerprints.json   # record
    python tests/fingerprints.py --check tests/fingerprints.json   # compare (exit 1 on a change)

``tests/compiler/test_fingerprints.py`` checks the 32 px models in the test suite.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from dlfusion.compiler.compile import compile_graph
from dlfusion.compiler.frontend.zoo import MODELS
from dlfusion.compiler.plan import make_plan
from dlfusion.compiler.tune.costmodel import TERMS, CostModel
from dlfusion.compiler.tune.features import Workload
from dlfusion.compiler.tune.rule import FALLBACK_KIND, Rule
from dlfusion.compiler.tune.strategies import plan_dlfusion
from dlfusion.compiler.tune.tune import load_model
from dlfusion.hw.config import HwConfig

SIZES = (32, 64)

#: A fixed rule: layers with more weight than activation bytes are split by channels on every
#: core, others by rows on half the cores (one core below 2**14 MACs).
_TREE = {"feature": "log2_macs", "threshold": 14.0, "below": {"choice": [1, "rows"]},
         "above": {"feature": "log2_weights_per_activation", "threshold": 0.0,
                   "below": {"choice": [2, "rows"]}, "above": {"choice": [4, "channels"]}}}
#: Fixed cost-model coefficients (the order of magnitude of fitted ones).
_COEFFICIENTS = dict(zip(TERMS, (1.0, 0.25, 0.1, 1.0, 1.0, 2.0, 150.0), strict=True))


def fixed_rule(hw: HwConfig) -> Rule:
    return Rule(hw.hash, {FALLBACK_KIND: _TREE})


def fixed_cost_model(hw: HwConfig) -> CostModel:
    return CostModel(hw.hash, dict(_COEFFICIENTS))


def plans(graph, hw: HwConfig) -> dict:
    workload = Workload(graph, hw)
    dlfusion, _ = plan_dlfusion(workload, fixed_rule(hw), fixed_cost_model(hw))
    return {"none": make_plan(graph, hw, fusion="none", cores=1),
            "max": make_plan(graph, hw, fusion="max", cores=hw.cores),
            "dlfusion": dlfusion}


def fingerprint(graph, hw: HwConfig) -> dict:
    result = {}
    workload = Workload(graph, hw)
    for name, plan in plans(graph, hw).items():
        binary = compile_graph(graph, hw, plan)
        result[name] = {
            "sha256": hashlib.sha256(binary.to_bytes()).hexdigest(),
            "groups": [[list(group.nodes), group.cores, str(group.split),
                        workload.features(tuple(group.nodes), group.cores, str(group.split)).to_json()]
                       for group in plan.groups]}
    return result


def fingerprints(models=None, sizes=SIZES, hw: HwConfig | None = None) -> dict:
    hw = hw or HwConfig().baseline()   # recorded before lookup tables and sparsity: the headers read as then
    result = {}
    for model in models or list(MODELS):
        for size in sizes:
            if size < MODELS[model].min_size:
                continue
            graph, source = load_model(model, size)
            result[source] = fingerprint(graph, hw)
            print(f"fingerprinted {source}", file=sys.stderr, flush=True)
    return result


def compare(expected: dict, actual: dict) -> list[str]:
    """What differs, one line per plan."""
    problems = []
    for source, entry in expected.items():
        if source not in actual:
            continue
        for plan, value in entry.items():
            got = actual[source][plan]
            if got["sha256"] != value["sha256"]:
                problems.append(f"{source} {plan}: binary {got['sha256'][:12]} != {value['sha256'][:12]}")
            if got["groups"] != value["groups"]:
                problems.append(f"{source} {plan}: groups or features differ")
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", metavar="FILE")
    action.add_argument("--check", metavar="FILE")
    parser.add_argument("--models", nargs="*")
    args = parser.parse_args(argv)
    models = args.models
    if args.check and models is None:   # the models the record has (newer zoo models are not in it)
        models = sorted({key.split("@")[0] for key in json.loads(Path(args.check).read_text())}, key=list(MODELS).index)
    actual = fingerprints(models)
    if args.write:
        Path(args.write).write_text(json.dumps(actual, indent=1, sort_keys=True) + "\n")
        return 0
    problems = compare(json.loads(Path(args.check).read_text()), actual)
    for line in problems:
        print(line)
    print(f"{len(actual)} model sizes, {3 * len(actual)} plans: {len(problems)} differ")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
