"""The cost model: non-negative least squares, recovering known coefficients, reported errors equal to a
recomputation, storage per HwConfig, holding a source out."""

import itertools
import json

import numpy as np
import pytest

from dlfusion.compiler.random_graph import random_graph
from dlfusion.compiler.tune import TuneError
from dlfusion.compiler.tune.costmodel import (
    TERMS,
    CostModel,
    Sample,
    calibrate,
    cost_model_path,
    fit_cost_model,
    load_cost_model,
    load_samples,
    nnls,
    prediction_errors,
    save_samples,
    terms,
)
from dlfusion.compiler.tune.features import Workload
from dlfusion.hw.config import HwConfig

QUAD = HwConfig(cores=4, pe_rows=4, pe_cols=4, act_lines=2048, weight_blocks=1024, acc_entries=256,
                param_entries=64, dram_bytes=1 << 20, dram_bytes_per_cycle=4, dram_latency=12,
                watchdog_cycles=4000)
TRUE = {"bound": 1.1, "overlap": 0.2, "ppu": 0.0, "prologue": 1.0, "latency": 0.5, "issue": 2.0, "constant": 150.0}


def _nnls_brute_force(a, b):
    """The best least-squares solution over every support set, negative solutions excluded."""
    best, best_x = float("inf"), None
    n = a.shape[1]
    for size in range(n + 1):
        for support in itertools.combinations(range(n), size):
            x = np.zeros(n)
            if support:
                x[list(support)] = np.linalg.lstsq(a[:, list(support)], b, rcond=None)[0]
            if (x >= -1e-12).all():
                residual = float(np.sum((a @ x - b) ** 2))
                if residual < best - 1e-9:
                    best, best_x = residual, x
    return best, best_x


@pytest.mark.parametrize("seed", range(8))
def test_nnls_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(20, 5))
    b = rng.normal(size=20) + (a @ rng.uniform(-1, 1, size=5))
    x = nnls(a, b)
    assert (x >= 0).all()
    best, _ = _nnls_brute_force(a, b)
    assert float(np.sum((a @ x - b) ** 2)) == pytest.approx(best, rel=1e-7, abs=1e-9)


def _samples(source, seeds, noise=0.0, rng=None):
    """Groups of random graphs with cycles from known coefficients (plus relative noise)."""
    vector = np.array([TRUE[name] for name in TERMS])
    samples = []
    for seed in seeds:
        graph = random_graph(seed, lanes=QUAD.lanes, max_layers=6, max_size=12)
        workload = Workload(graph, QUAD)
        for start in range(len(workload.names)):
            for length in (1, 2):
                nodes = workload.run(start, length)
                for cores in workload.core_counts():
                    if len(nodes) < length or workload.fits(nodes, cores) is not None:
                        continue
                    features = workload.features(nodes, cores)
                    cycles = float(vector @ terms(features, QUAD))
                    if noise:
                        cycles *= 1 + rng.uniform(-noise, noise)
                    samples.append(Sample(source, f"{seed}-{start % 3}", list(nodes), cores, "rows", features,
                                          cycles if not noise else round(cycles)))
    return samples


def test_fit_recovers_known_coefficients():
    samples = _samples("synthetic@1", range(6))
    model = fit_cost_model(samples, QUAD)
    predicted = model.predict_many(samples, QUAD)
    assert max(abs(p - s.cycles) / s.cycles for p, s in zip(predicted, samples, strict=True)) < 1e-6
    assert model.error["fit"]["group_worst"] < 1e-6
    assert all(value >= 0 for value in model.coefficients.values())


def test_reported_errors_equal_a_recomputation(tmp_path):
    rng = np.random.default_rng(1)
    samples = _samples("a@8", [1, 2], 0.2, rng) + _samples("b@8", [3, 4], 0.2, rng)
    model = fit_cost_model(samples, QUAD)
    predicted = np.array([model.predict(s.features, QUAD) for s in samples])
    measured = np.array([s.cycles for s in samples], float)
    relative = np.abs(predicted - measured) / measured
    fit = model.error["fit"]
    assert fit["groups"] == len(samples)
    assert fit["group_median"] == pytest.approx(float(np.median(relative)))
    assert fit["group_worst"] == pytest.approx(float(relative.max()))
    plans = {}
    for p, s in zip(predicted, samples, strict=True):
        entry = plans.setdefault((s.source, s.run), [0.0, 0.0])
        entry[0] += p
        entry[1] += s.cycles
    plan_errors = [abs(p - m) / m for p, m in plans.values()]
    assert fit["plans"] == len(plans)
    assert fit["plan_median"] == pytest.approx(float(np.median(plan_errors)))
    assert fit["plan_worst"] == pytest.approx(max(plan_errors))
    assert 0 < fit["group_worst"] < 0.5
    # Held out: each source predicted by a model fitted to the other one.
    other = fit_cost_model([s for s in samples if s.source == "b@8"], QUAD, held_out=False)
    outside = [s for s in samples if s.source == "a@8"]
    assert model.error["by_source"]["a@8"] == pytest.approx(prediction_errors(other.predict_many(outside, QUAD),
                                                                              outside))


def test_storage_and_holdout(tmp_path):
    rng = np.random.default_rng(2)
    with pytest.raises(TuneError, match="dlfusion tune MODEL --strategy oracle"):
        load_cost_model(QUAD, tmp_path)
    save_samples(QUAD, "a@8", _samples("a@8", [1, 2], 0.1, rng), tmp_path)
    only = calibrate(QUAD, tmp_path)
    assert only.sources == ["a@8"] and cost_model_path(QUAD, tmp_path).exists()
    # Fitted to the held-out source alone: returned as it is (its sources say so).
    assert load_cost_model(QUAD, tmp_path, holdout="a@8").sources == ["a@8"]
    save_samples(QUAD, "b@8", _samples("b@8", [3, 4], 0.1, rng), tmp_path)
    both = calibrate(QUAD, tmp_path)
    assert both.sources == ["a@8", "b@8"] and "held_out" in both.error
    stored = json.loads(cost_model_path(QUAD, tmp_path).read_text())
    assert stored["coefficients"] == pytest.approx(both.coefficients)
    held = load_cost_model(QUAD, tmp_path, holdout="a@8")
    assert held.sources == ["b@8"] and held.error["held_out_source"] == "a@8"
    # The stored held-out coefficients are those of a fit to the other source alone.
    refit = fit_cost_model([s for s in load_samples(QUAD, tmp_path) if s.source == "b@8"], QUAD, held_out=False)
    assert held.coefficients == pytest.approx(refit.coefficients)
    assert held.error["on_held_out_source"] == both.error["by_source"]["a@8"]
    assert held.samples == both.samples - both.error["by_source"]["a@8"]["groups"]
    assert load_cost_model(QUAD, tmp_path).sources == ["a@8", "b@8"]
    other = HwConfig(cores=2, pe_rows=4, pe_cols=4, act_lines=2048, weight_blocks=1024, acc_entries=256,
                     param_entries=64, dram_bytes=1 << 20, dram_bytes_per_cycle=4)
    path = cost_model_path(other, tmp_path)
    path.write_text(cost_model_path(QUAD, tmp_path).read_text())
    with pytest.raises(TuneError, match="calibrated for HwConfig"):
        load_cost_model(other, tmp_path)
    path.write_text("{}")
    with pytest.raises(TuneError, match="not a dlfusion-costmodel/1 cost model"):
        load_cost_model(other, tmp_path)
    with pytest.raises(TuneError, match="no measured groups"):
        fit_cost_model([], QUAD)


def test_round_trip():
    model = CostModel(QUAD.hash, dict(TRUE), ["x@1"], {"fit": {}}, 3)
    again = CostModel.from_json(json.loads(json.dumps(model.to_json())))
    assert again == model
