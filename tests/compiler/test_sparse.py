"""N:M sparse layers in the compiler, on the golden simulator: bit-exact with the numpy reference and with
onnxruntime, fewer cycles and weight bytes than the dense datapath on the same weights.

Random pruned layers (conv and fully connected, every lowering path: tiled, chunked, both multicore
splits), random graphs with pruned layers on random fused plans, pruned zoo models against onnxruntime;
pattern detection, magnitude pruning and the errors of ``--prune`` and ``--sparse-exec``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dlfusion.cli import main
from dlfusion.cli.run import model_outputs, quantize_input
from dlfusion.compiler.compile import compile_graph
from dlfusion.compiler.errors import CompileError
from dlfusion.compiler.frontend import load_onnx, zoo
from dlfusion.compiler.ir import Op
from dlfusion.compiler.layers import build_conv, build_fc
from dlfusion.compiler.lower.common import detect_sparsity
from dlfusion.compiler.passes.sparsity import choose_sparsity, sparse_candidates
from dlfusion.compiler.plan import make_plan, random_plan
from dlfusion.compiler.prune import parse_pattern, prune_weight
from dlfusion.compiler.random_graph import random_graph
from dlfusion.compiler.reference import run_graph
from dlfusion.hw.config import HwConfig
from dlfusion.hw.isa import Sparsity
from dlfusion.hw.sparse import satisfies
from dlfusion.sim.golden import GoldenSimulator

HW = HwConfig()
#: 4 lanes: small random graphs have whole sparse windows (8 or 16 input channels); a small weight
#: scratchpad makes wide layers chunked.
QUAD = HwConfig(cores=4, pe_rows=4, pe_cols=4, act_lines=2048, weight_blocks=256, acc_entries=256, param_entries=64,
                dram_bytes=1 << 22, dram_bytes_per_cycle=4, dram_latency=12)
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _run(case, hw):
    result = GoldenSimulator(hw).run(case.binary, case.inputs)
    assert result.error is None, str(result.error)
    return result


@SETTINGS
@given(hw=st.sampled_from([HW, QUAD]), pattern=st.sampled_from(["2:4", "1:4"]), seed=st.integers(0, 2**31 - 1),
       blocks=st.integers(1, 9), cout=st.integers(1, 40), size=st.integers(1, 9), k=st.sampled_from([1, 3]),
       stride=st.sampled_from([1, 2]), cores=st.integers(1, 4), split=st.sampled_from(["rows", "channels"]),
       fc=st.booleans(), in_signed=st.booleans())
def test_pruned_layer_sparse_equals_dense_and_reference(hw, pattern, seed, blocks, cout, size, k, stride, cores,
                                                        split, fc, in_signed):
    """Sparse and dense runs of the same pruned weights give the reference's output; the sparse one
    in fewer PE cycles, and with the weight bytes of the pattern."""
    cin = blocks * hw.lanes - seed % 3 * (seed % 2)          # whole blocks, sometimes a partial last one
    assume(cin % 4 == 0 or cin > 2 * hw.lanes)
    common = dict(seed=seed, cores=min(cores, hw.cores), split=split, prune=pattern, in_signed=in_signed)
    if fc:
        build = lambda mode: build_fc(hw, cin=cin, cout=cout, sparse_exec=mode, **common)   # noqa: E731
    else:
        assume(size >= k)
        build = lambda mode: build_conv(hw, h=size, w=size + 1, cin=cin, cout=cout, k=k, stride=stride,   # noqa: E731
                                        sparse_exec=mode, **common)
    try:
        sparse, dense = build("auto"), build("off")
    except CompileError:
        assume(False)
    window = Sparsity.from_label(pattern).window
    expected_sparsity = pattern if blocks >= window else ("2:4" if blocks >= 2 else "dense")
    assert sparse.description["sparsity"] == expected_sparsity
    assert dense.description["sparsity"] == "dense"
    results = [_run(case, hw) for case in (sparse, dense)]
    for case, result in zip((sparse, dense), results, strict=True):
        np.testing.assert_array_equal(result.outputs["y"], case.expected["y"])
    if expected_sparsity != "dense":
        # (not always fewer: on one pixel each instruction's 2-cycle pipeline can eat the saved iterations)
        pe = [sum(c["pe_busy"] for c in r.counters) for r in results]
        assert pe[0] <= pe[1]
        assert sparse.description["weight_bytes"] < dense.description["weight_bytes"]
    if expected_sparsity == pattern and blocks % window == 0 and cin == blocks * hw.lanes:
        # values N/M of the dense bytes, 2-bit indices N/M * 1/4 of them: 62.5 % (2:4), 31.25 % (1:4)
        n, m = Sparsity.from_label(pattern).pattern
        assert sparse.description["weight_bytes"] * m * 4 == dense.description["weight_bytes"] * n * 5


def test_sparse_speedup_of_a_compute_bound_layer():
    """A 3x3 conv of 128 channels at 14x14: the PE-busy cycles fall by about M/N (golden)."""
    busy = {}
    for pattern in ("2:4", "1:4"):
        for mode in ("auto", "off"):
            case = build_conv(HW, h=14, w=14, cin=128, cout=128, prune=pattern, sparse_exec=mode)
            result = _run(case, HW)
            np.testing.assert_array_equal(result.outputs["y"], case.expected["y"])
            busy[pattern, mode] = result.counters[0]["pe_busy"]
    assert busy["2:4", "off"] == busy["1:4", "off"]
    # Half and a quarter of the iterations, plus the unchanged 2-cycle pipeline of every MATMUL (never more
    # than M/N, and at 14x14 close to it: more than 1.95x and 3.8x)
    assert 1.95 < busy["2:4", "off"] / busy["2:4", "auto"] <= 2.0
    assert 3.8 < busy["1:4", "off"] / busy["1:4", "auto"] <= 4.0


def _pruned_graph(seed, hw):
    """A random graph whose eligible convolutions are pruned, each to a random pattern or left dense."""
    graph = random_graph(seed, lanes=hw.lanes, max_layers=7, max_size=16)
    rng = np.random.default_rng(seed)
    for node in graph.nodes:
        if node.op in (Op.CONV, Op.FC) and node.attrs.groups == 1 and not node.attrs.selection:
            choice = rng.integers(0, 3)
            if choice < 2:
                node.attrs.weight = prune_weight(node.attrs.weight, [Sparsity.S2_4, Sparsity.S1_4][choice])
    return graph


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1))
def test_random_graphs_with_pruned_layers_equal_reference_on_every_plan(seed):
    hw = QUAD
    graph = _pruned_graph(seed, hw)
    assume(sparse_candidates(graph, hw) and any(s is not Sparsity.DENSE for s in sparse_candidates(graph, hw).values()))
    t = graph.tensors[graph.input]
    x = np.random.default_rng(seed).integers(t.qrange[0], t.qrange[1] + 1, size=t.shape).astype(
        np.int8 if t.signed else np.uint8)
    expected = run_graph(graph, x)
    try:
        plans = [make_plan(graph, hw), make_plan(graph, hw, fusion="max", cores=1 + seed % hw.cores),
                 random_plan(graph, hw, seed)]
    except CompileError:
        assume(False)
    for plan in plans:
        for mode in ("auto", "off"):
            try:
                binary = compile_graph(graph, hw, plan, sparse_exec=mode)
            except CompileError as error:      # a group fused for the sparse weights may not fit dense
                assert mode == "off" and "does not fit" in str(error)
                continue
            result = GoldenSimulator(hw).run(binary, {"input": x})
            assert result.error is None, str(result.error)
            assert np.array_equal(result.outputs["output"], expected), ([g.nodes for g in plan.groups], mode)


@pytest.fixture(scope="module", params=[("resnet18", "2:4"), ("resnet18", "1:4"), ("mobilenet_v2", "2:4")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def pruned_model(request, tmp_path_factory):
    name, pattern = request.param
    path, report = zoo.export_pruned(name, pattern, 32, tmp_path_factory.mktemp(name) / "pruned.onnx")
    model = onnx.load(str(path))
    model.ir_version = min(model.ir_version, 9)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return name, pattern, report, load_onnx(path), session


def test_pruned_zoo_model_matches_onnxruntime(pruned_model):
    name, pattern, report, graph, session = pruned_model
    assert "3 input channels are not a multiple of 4" in report["dense_layers"].values()     # the first conv
    assert report["nonzero_weights_after"] <= report["nonzero_weights_before"] * parse_pattern(pattern).pattern[0] / 4
    quant = graph.input_quant
    x = np.random.default_rng(3).standard_normal(quant["shape"]).astype(np.float32)
    reference = dict(zip([o.name for o in session.get_outputs()], session.run(None, {quant["name"]: x}), strict=True))
    cycles = {}
    for fusion, cores in (("none", 1), ("max", HW.cores)):
        for mode in ("auto", "off"):
            plan = make_plan(graph, HW, fusion=fusion, cores=cores, sparse_exec=mode)
            binary = compile_graph(graph, HW, plan, sparse_exec=mode)
            x_q = quantize_input(x, quant).reshape(binary.inputs[0].shape)
            result = GoldenSimulator(HW).run(binary, {"input": x_q})
            assert result.error is None, str(result.error)
            ours = model_outputs(binary, result.outputs)
            for output, value in reference.items():
                assert int(np.count_nonzero(ours[output] != value)) == 0, (name, pattern, fusion, mode)
            cycles[fusion, mode] = result.cycles
    sparse = choose_sparsity(graph, HW, "auto")
    assert set(sparse.values()) == {parse_pattern(pattern)}
    assert cycles["none", "auto"] < cycles["none", "off"]


def test_detect_sparsity_picks_the_sparsest_pattern_with_a_whole_window():
    rng = np.random.default_rng(0)
    weight = rng.integers(-127, 128, (8, 64, 3, 3)).astype(np.int8)
    one_of_four = prune_weight(weight, Sparsity.S1_4)
    two_of_four = prune_weight(weight, Sparsity.S2_4)
    patterns = HW.sparse_patterns
    assert detect_sparsity(weight, 64, 16, patterns) is Sparsity.DENSE
    assert detect_sparsity(two_of_four, 64, 16, patterns) is Sparsity.S2_4
    assert detect_sparsity(one_of_four, 64, 16, patterns) is Sparsity.S1_4
    assert detect_sparsity(one_of_four, 64, 16, ("2:4",)) is Sparsity.S2_4       # what the PE array supports
    assert detect_sparsity(one_of_four, 64, 16, ()) is Sparsity.DENSE
    # 32 channels: 2 blocks of 16, no whole 1:4 window (4 blocks): 2:4
    assert detect_sparsity(one_of_four[:, :32], 32, 16, patterns) is Sparsity.S2_4
    assert detect_sparsity(one_of_four[:, :16], 16, 16, patterns) is Sparsity.DENSE
    broken = one_of_four.copy()
    broken[0, 0:4, 1, 1] = 1                   # four nonzeros in one group
    assert detect_sparsity(broken, 64, 16, patterns) is Sparsity.DENSE


@given(seed=st.integers(0, 2**31 - 1), pattern=st.sampled_from([Sparsity.S2_4, Sparsity.S1_4]),
       channels=st.integers(1, 23), dtype=st.sampled_from([np.int8, np.float32]))
def test_magnitude_pruning_keeps_the_largest_of_each_group(seed, pattern, channels, dtype):
    rng = np.random.default_rng(seed)
    weight = (rng.standard_normal((3, channels, 2, 2)) * 50).astype(dtype)
    pruned = prune_weight(weight, pattern)
    n, m = pattern.pattern
    assert pruned.shape == weight.shape and pruned.dtype == weight.dtype
    padded = np.concatenate([np.moveaxis(pruned, 1, -1), np.zeros((3, 2, 2, -channels % m), dtype)], axis=-1)
    assert satisfies(padded, pattern)
    kept = pruned != 0
    assert np.all(pruned[kept] == weight[kept])
    # every dropped weight is no larger than every kept one of its group
    for group in range(0, channels, m):
        w, p = np.abs(weight[:, group:group + m].astype(np.float64)), pruned[:, group:group + m] != 0
        dropped_max = np.where(p, -1, w).max(axis=1)
        kept_min = np.where(p, w, np.inf).min(axis=1)
        assert np.all((dropped_max <= kept_min) | ~p.any(axis=1))


def test_choose_sparsity_modes_and_errors():
    graph = _pruned_graph(next(s for s in range(200) if any(
        v is not Sparsity.DENSE for v in sparse_candidates(_pruned_graph(s, QUAD), QUAD).values())), QUAD)
    auto = choose_sparsity(graph, QUAD, "auto")
    assert auto and all(node.attrs.sparsity is auto.get(node.name, Sparsity.DENSE)
                        for node in graph.nodes if node.op in (Op.CONV, Op.FC))
    assert choose_sparsity(graph, QUAD, "off") == {}
    assert all(node.attrs.sparsity is Sparsity.DENSE for node in graph.nodes)
    assert choose_sparsity(graph, dataclasses.replace(QUAD, sparse_patterns=()), "auto") == {}
    with pytest.raises(CompileError, match="cannot run sparse"):
        choose_sparsity(graph, QUAD, "on")
    with pytest.raises(CompileError, match="no sparse PE array"):
        choose_sparsity(graph, dataclasses.replace(QUAD, sparse_patterns=()), "on")
    with pytest.raises(CompileError, match="must be one of auto, on, off"):
        choose_sparsity(graph, QUAD, "sometimes")


@pytest.mark.parametrize("argv, message", [
    (["layer", "conv", "--prune", "3:4"], "pruning pattern '3:4' is not supported; accepted: 2:4, 1:4"),
    (["layer", "dwconv", "--prune", "2:4", "--sparse-exec", "on"], "the depthwise layer cannot run sparse"),
    (["layer", "conv", "--sparse-exec", "on"], "the conv layer cannot run sparse"),
    (["layer", "pool", "--prune", "2:4"], "--prune and --sparse-exec on are for conv, fc and dwconv"),
    (["prune", "resnet18", "--pattern", "2:8", "-o", "{tmp}/x.onnx"], "pruning pattern '2:8' is not supported"),
    (["prune", "nosuchnet", "--pattern", "2:4", "-o", "{tmp}/x.onnx"], "give a zoo model"),
])
def test_bad_sparse_input_is_a_one_line_error(argv, message, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_prune_command_reports_and_writes_a_model_that_compiles_sparse(tmp_path, capsys):
    out = tmp_path / "pruned.onnx"
    assert main(["prune", "resnet18", "--pattern", "1:4", "--input-size", "32", "-o", str(out), "--json"]) == 0
    import json
    report = json.loads(capsys.readouterr().out)
    assert report["pattern"] == "1:4" and len(report["pruned_layers"]) == 20
    assert report["dense_layers"] == {"/stem/conv/Conv": "3 input channels are not a multiple of 4"}
    assert main(["prune", str(out), "--pattern", "2:4", "-o", str(tmp_path / "again.onnx")]) == 2
    assert "already quantized" in capsys.readouterr().err
    binary = tmp_path / "r.dlfb"
    assert main(["compile", str(out), "--fusion", "none", "--cores", "1", "-o", str(binary), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert len(summary["sparse_layers"]) == 20 and set(summary["sparse_layers"].values()) == {"1:4"}


@pytest.mark.parametrize("pattern", ["2:4", "1:4"])
@pytest.mark.parametrize("cores, split", [(1, "rows"), (2, "rows"), (2, "channels")])
def test_sparse_layer_in_input_channel_chunks(pattern, cores, split):
    """Weights of one output block beyond half the weight scratchpad: the chunked lowering, sparse."""
    hw = dataclasses.replace(HW, weight_blocks=64)
    cases = {mode: build_conv(hw, h=5, w=6, cin=256, cout=40, prune=pattern, sparse_exec=mode, cores=cores,
                              split=split, seed=9) for mode in ("auto", "off")}
    assert cases["auto"].description.get("input_chunks", 1) > 1 and cases["auto"].description["sparsity"] == pattern
    for case in cases.values():
        np.testing.assert_array_equal(_run(case, hw).outputs["y"], case.expected["y"])


def test_the_tuner_counts_sparse_layers_smaller(tmp_path):
    """The tuner's features of a pruned layer: fewer PE cycles and weight lines under auto than off."""
    from dlfusion.compiler.tune.features import Workload
    graph = load_onnx(zoo.export_pruned("resnet18", "1:4", 32, tmp_path / "r18.onnx")[0])
    name = next(n.name for n in graph.nodes if n.op is Op.CONV and n.name.startswith("/layer3"))
    auto, off = (Workload(graph, HW, mode).features((name,), 1) for mode in ("auto", "off"))
    assert auto.pe_cycles * 3 < off.pe_cycles
    assert auto.load_lines < off.load_lines
