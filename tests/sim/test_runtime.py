"""The backend interface's per-group report (sim/runtime.py ``group_report``) on hand-made
barrier events; the RTL and golden measurements themselves are tested in
tests/sim/test_rtl_multicore.py."""

import importlib

import pytest

from dlfusion.hw.binary import Binary, Segment, Stream
from dlfusion.hw.config import HwConfig
from dlfusion.hw.errors import AcceleratorFault, DlfusionError, InputError
from dlfusion.hw.isa import ErrorCode
from dlfusion.sim.result import ErrorInfo, RunResult
from dlfusion.sim.runtime import AcceleratorError, GroupReportError, group_report

HW = HwConfig(cores=2, pe_rows=4, pe_cols=4, dram_bytes=1 << 20, dram_bytes_per_cycle=4)
GROUPS = [{"index": 0, "nodes": ["conv1"], "cores": 2, "split": "rows", "macs": 6400, "barrier_index": [9, 9]},
          {"index": 1, "nodes": ["fc"], "cores": 1, "split": "channels", "macs": 160, "barrier_index": [14, 14]}]


def _binary(metadata: dict) -> Binary:
    code = Segment("code", 0, bytes(32 * 16))
    return Binary(HW, [Stream(0, 0, 16), Stream(1, 0, 16)], [code], metadata=metadata)


def _event(cycle, cores, read, write):
    return {"cycle": cycle, "cores": cores, "dram_read_lines": read, "dram_write_lines": write}


def _result(barriers) -> RunResult:
    return RunResult("rtl", {}, 700, [], barriers=barriers, dram_read_lines=300, dram_write_lines=40)


def test_groups_span_consecutive_all_core_barriers():
    # A barrier of core 0 alone (mask 0b01) is not a group boundary.
    result = _result([_event(50, 0b01, 10, 0), _event(500, 0b11, 200, 32), _event(690, 0b11, 290, 40)])
    report = group_report(_binary({"groups": GROUPS}), result)
    assert [g["nodes"] for g in report] == [["conv1"], ["fc"]]
    assert [(g["end_cycle"], g["cycles"]) for g in report] == [(500, 500), (690, 190)]
    line = HW.line_bytes
    assert [(g["dram_read_bytes"], g["dram_write_bytes"], g["dram_bytes"]) for g in report] == [
        (200 * line, 32 * line, 232 * line), (90 * line, 8 * line, 98 * line)]
    assert report[0]["utilization"] == 6400 / (HW.macs_per_cycle * 2 * 500)
    assert report[1]["utilization"] == 160 / (HW.macs_per_cycle * 1 * 190)
    assert (report[1]["cores"], report[1]["split"], report[1]["macs"]) == (1, "channels", 160)


def test_binary_without_groups_reports_none():
    assert group_report(_binary({"layer": "conv"}), _result([_event(10, 0b11, 5, 1)])) == []


def test_barrier_count_must_match_the_groups():
    result = _result([_event(500, 0b11, 200, 32)])
    with pytest.raises(GroupReportError, match=r"the rtl run passed 1 barrier\(s\) of all the program's cores "
                                               r"\(mask 0x3\), but the binary has 2 groups"):
        group_report(_binary({"groups": GROUPS}), result)


@pytest.mark.parametrize(("module", "name", "base", "status"), [
    ("runtime", "AcceleratorError", AcceleratorFault, 3),
    ("runtime", "GroupReportError", InputError, 2),
    ("rtl", "RtlBuildError", AcceleratorFault, 3),
    ("rtl", "RtlSimulationError", AcceleratorFault, 3),
    ("verilator_tool", "VerilatorNotFound", AcceleratorFault, 3),
])
def test_sim_errors_carry_their_exit_status(module, name, base, status):
    error_class = getattr(importlib.import_module(f"dlfusion.sim.{module}"), name)
    assert issubclass(error_class, base) and issubclass(error_class, DlfusionError)
    assert error_class.exit_status == status


def test_accelerator_error_keeps_the_result():
    result = RunResult("golden", {}, 7, [{}], error=ErrorInfo(ErrorCode.WATCHDOG, 1, 5))
    error = AcceleratorError(result.error, result)
    assert str(error) == "accelerator error: WATCHDOG on core 1 at instruction 5"
    assert error.info is result.error and error.result is result and error.exit_status == 3
