"""Synthesized area per block (hw/synth.py) and ``dlfusion synth``: the SRAM bits are exactly the
configuration's memories, the area grows with cores, PE array and buffers, the blocks compose to
the whole design's synthesis, the cache answers the second time, and errors are one line."""

import json
import sys

import pytest

from dlfusion.cli import main
from dlfusion.hw import synth
from dlfusion.hw.config import HwConfig
from dlfusion.hw.dma import DmaUnit
from dlfusion.hw.pe_array import PeArray
from dlfusion.hw.ppu import Ppu
from dlfusion.hw.unit import queue_slot

#: Small enough that every block takes seconds in the WebAssembly Yosys.
SMALL = dict(pe_rows=4, pe_cols=4, act_lines=64, weight_blocks=4, acc_entries=16, param_entries=8, dram_bytes=4096,
             dram_bytes_per_cycle=4, dram_latency=4, fetch_lines=16, queue_depth=2, lut_tables=0)
TWO_CORES = HwConfig(cores=2, **SMALL)
PER_CORE = [spec.name for spec in synth.BLOCKS if spec.per_core]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("synth-cache")


@pytest.fixture(scope="module")
def two_cores(cache):
    return synth.synthesize(TWO_CORES, cache_dir=cache)


def scratchpad_bits(hw: HwConfig) -> int:
    line = 8 * hw.lanes
    return (hw.act_lines * line + hw.weight_blocks * line * hw.lanes + hw.acc_entries * 32 * hw.lanes
            + hw.param_entries * 32 * hw.lanes + hw.lanes * hw.lut_lines * line + hw.meta_lines * line)


def scratchpad_memories(hw: HwConfig) -> set[str]:
    """The memories' names: the activation banks of a sparse array, the metadata store, the table copies."""
    banks = {f"act_bank{i}" for i in range(hw.sparse_window)} if hw.sparse_patterns else {"act"}
    return {*banks, "weight", "acc", "param", *(["meta"] if hw.sparse_patterns else []),
            *(f"lut{i}" for i in range(hw.lanes if hw.lut_tables else 0))}


def payload(unit):
    # Built for its PAYLOAD only: silence Amaranth's warning about an elaboratable never elaborated.
    unit._MustUse__silence = True
    return unit.PAYLOAD


def fifo_bits(hw: HwConfig) -> int:
    """The instruction line FIFO and the three unit queues."""
    queues = sum(queue_slot(payload(unit)).size for unit in (DmaUnit(hw), PeArray(hw), Ppu(hw)))
    return hw.fetch_lines * 8 * hw.line_bytes + hw.queue_depth * queues


def test_every_module_is_in_one_block():
    design = synth.Design(TWO_CORES)
    covered = []
    for spec in synth.BLOCKS:
        if spec.part is not synth.Part.OWN_MEMORIES:
            boxes = set(spec.black_boxes(design))
            covered += [path for path in design.subtree(spec.root, boxes) if path not in boxes or path == spec.root]
    assert len(covered) == len(set(covered))
    # Core 1 is counted as a second instance of core 0's blocks.
    core1 = {path for path in design.subtree("core1")}
    assert set(covered) | core1 == {name.removeprefix("\\top").lstrip(".") for name in design.modules}
    assert len(core1) == len(design.subtree("core0")) > 10


@pytest.mark.parametrize("buffers", [dict(), dict(sparse_patterns=()),
                                     dict(act_lines=256, weight_blocks=16, acc_entries=64, param_entries=32,
                                          lut_tables=2, fetch_lines=32, queue_depth=4)])
def test_sram_bits_are_the_configurations_memories(cache, buffers):
    hw = HwConfig(cores=1, **{**SMALL, **buffers})
    report = synth.synthesize(hw, blocks=["core_control", "scratchpads"], cache_dir=cache)
    scratchpads, control = report.blocks["scratchpads"], report.blocks["core_control"]
    assert scratchpads.sram_bits == scratchpad_bits(hw)
    assert {m.name for m in scratchpads.memories} == scratchpad_memories(hw)
    assert control.sram_bits == fifo_bits(hw)
    assert scratchpads.cells == {} and scratchpads.transistors == 0
    assert scratchpads.area == pytest.approx(scratchpad_bits(hw) * synth.SRAM_GE_PER_BIT)
    assert report.total()["sram_bits"] == scratchpad_bits(hw) + fifo_bits(hw)


def test_bigger_buffers_cost_their_bits(cache):
    small = synth.synthesize(HwConfig(cores=1, **SMALL), blocks=["scratchpads"], cache_dir=cache)
    big = synth.synthesize(HwConfig(cores=1, **{**SMALL, "act_lines": 1024}), blocks=["scratchpads"], cache_dir=cache)
    grown = big.blocks["scratchpads"].area - small.blocks["scratchpads"].area
    assert grown == pytest.approx((1024 - 64) * 32 * synth.SRAM_GE_PER_BIT)


def test_four_cores_double_the_per_core_part(cache, two_cores):
    four = synth.synthesize(HwConfig(cores=4, **SMALL), cache_dir=cache)

    def per_core(report):
        return sum(report.blocks[name].area * report.blocks[name].instances for name in PER_CORE)
    assert all(four.blocks[name].instances == 4 and two_cores.blocks[name].instances == 2 for name in PER_CORE)
    # The units do not see the core count (their RTLIL is the same: one Yosys run, its seconds
    # included); the control only through the barrier mask's width.
    for name in ("pe_array", "ppu", "dma"):
        assert four.blocks[name].to_dict() | {"instances": 0} == two_cores.blocks[name].to_dict() | {"instances": 0}
    assert four.blocks["scratchpads"].memories == two_cores.blocks["scratchpads"].memories
    control_growth = four.blocks["core_control"].transistors / two_cores.blocks["core_control"].transistors
    assert 1.0 < control_growth < 1.05
    assert 2.0 < per_core(four) / per_core(two_cores) < 2.05
    # Twice the requesters on the DRAM port, a barrier over twice the cores.
    assert four.blocks["memsys"].transistors > 1.2 * two_cores.blocks["memsys"].transistors
    assert four.blocks["top"].transistors > two_cores.blocks["top"].transistors
    assert 1.9 < four.total()["area"] / two_cores.total()["area"] < 2.05


def test_the_pe_array_grows_with_rows_times_columns(cache, two_cores):
    wide = HwConfig(cores=2, **{**SMALL, "pe_rows": 8, "pe_cols": 8, "dram_bytes_per_cycle": 8, "fetch_lines": 16})
    eight = synth.synthesize(wide, blocks=["pe_array"], cache_dir=cache).blocks["pe_array"]
    four = two_cores.blocks["pe_array"]
    # 64 multipliers and 8 reduction trees of 7 adders against 16 and 4 of 3; the loops, the
    # pipeline registers and the accumulate stage grow less (measured: 2.8x the transistors).
    assert 2.5 < eight.transistors / four.transistors < 4.0
    assert eight.cells["XOR"] > 3 * four.cells["XOR"]


def test_the_blocks_compose_to_the_whole_design(two_cores):
    whole = synth.synthesize_whole(TWO_CORES)
    total = two_cores.total()
    assert total["sram_bits"] == whole.sram_bits == 2 * (scratchpad_bits(TWO_CORES) + fifo_bits(TWO_CORES))
    # Measured: the blocks (core 0's twice) have 0.8 % more transistors than the flattened whole, where
    # Yosys optimizes across the block boundaries.
    assert 1.0 <= total["transistors"] / whole.transistors < 1.02
    assert total["cells"]["DFF_P"] == pytest.approx(whole.cells["DFF_P"], rel=0.02)


def test_the_second_run_reads_the_cache(cache, two_cores, monkeypatch):
    def no_synthesis(*args, **kwargs):
        raise AssertionError("synthesized although cached")
    monkeypatch.setattr(synth, "_run_yosys", no_synthesis)
    monkeypatch.setattr(synth, "Design", no_synthesis)
    again = synth.synthesize(TWO_CORES, cache_dir=cache)
    assert all(block.cached for block in again.blocks.values())
    assert again.to_dict() == two_cores.to_dict()
    assert sorted(path.name for path in (cache / TWO_CORES.hash).glob("*.json")) \
        == sorted(f"{spec.name}.json" for spec in synth.BLOCKS)


def write_hw(path, hw: HwConfig):
    path.write_text(hw.to_toml())
    return str(path)


def test_cli_json_table_and_report(cache, two_cores, tmp_path, capsys):
    hw_file = write_hw(tmp_path / "hw.toml", TWO_CORES)
    assert main(["synth", "--hw", hw_file, "--json", "--cache", str(cache)]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    result = json.loads(captured.out)
    assert set(result) >= {"hw", "hash", "area_unit", "total", "blocks"}
    assert result["hash"] == TWO_CORES.hash and result["hw"] == TWO_CORES.to_dict()
    assert result["area_unit"] == synth.AREA_UNIT
    assert set(result["blocks"]) == {spec.name for spec in synth.BLOCKS}
    for name, block in result["blocks"].items():
        assert set(block) >= {"cells", "transistors", "sram_bits", "area", "instances"}
        assert block["transistors"] == two_cores.blocks[name].transistors
    assert result["total"] == two_cores.total()
    assert result["total"]["area"] == pytest.approx(sum(b["area"] * b["instances"] for b in result["blocks"].values()),
                                                    abs=1)

    assert main(["synth", "--hw", hw_file, "--cache", str(cache), "--report", str(tmp_path / "report")]) == 0
    table = capsys.readouterr().out
    assert all(f"\n{name} " in table for name in result["blocks"]) and "\ntotal " in table
    assert json.loads((tmp_path / "report" / "synth.json").read_text()) == result
    assert (tmp_path / "report" / "area.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def assert_one_line_error(err: str, message: str) -> None:
    assert err.startswith("dlfusion: error: ") and err.count("\n") == 1, err
    assert message in err and "Traceback" not in err, err


def test_cli_bad_hw_file_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("cores = 0\n")
    assert main(["synth", "--hw", str(bad), "--cache", str(tmp_path / "cache")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert_one_line_error(captured.err, "cores must be between 1 and 16, not 0")
    assert main(["synth", "--hw", str(tmp_path / "missing.toml")]) == 2
    assert_one_line_error(capsys.readouterr().err, "does not exist")


def test_cli_yosys_failure_is_one_line(tmp_path, capsys, monkeypatch):
    failing = [sys.executable, "-c", "import sys; print('ERROR: out of memory', file=sys.stderr); sys.exit(1)"]
    monkeypatch.setattr(synth, "yosys_command", lambda: failing)
    hw_file = write_hw(tmp_path / "hw.toml", HwConfig(cores=1, **SMALL))
    assert main(["synth", "--hw", hw_file, "--cache", str(tmp_path / "cache")]) == 3
    captured = capsys.readouterr()
    assert captured.out == ""
    # Progress messages before, then the error on one line.
    messages = captured.err.splitlines()
    assert all(line.startswith("[dlfusion] ") for line in messages[:-1]), captured.err
    assert_one_line_error(messages[-1] + "\n", "Yosys failed on block pe_array")
    assert messages[-1].endswith("ERROR: out of memory")
    assert not list((tmp_path / "cache").rglob("*.json"))


def test_the_sparse_datapath_costs_its_selects_and_metadata(cache):
    """The same configuration with and without the sparse PE array: the array grows by its 4:1 selects,
    the scratchpads by the metadata store's bits exactly."""
    sparse, dense = (HwConfig(cores=1, **{**SMALL, "sparse_patterns": patterns}) for patterns in (("2:4", "1:4"), ()))
    reports = {hw.sparse_patterns: synth.synthesize(hw, blocks=["pe_array", "scratchpads"], cache_dir=cache)
               for hw in (sparse, dense)}
    pe = {key: report.blocks["pe_array"].transistors for key, report in reports.items()}
    assert pe[()] * 1.02 < pe[sparse.sparse_patterns]
    bits = {key: report.blocks["scratchpads"].sram_bits for key, report in reports.items()}
    assert bits[sparse.sparse_patterns] - bits[()] == sparse.weight_blocks * sparse.lanes * sparse.lanes * 2
