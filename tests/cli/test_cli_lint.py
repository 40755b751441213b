"""``dlfusion lint``: Verilator's lint with and without the Amaranth waivers (what ``make lint`` runs)."""

from dlfusion.cli import main

VERILOG = "module top(input a, output b);\n  assign b = a;\nendmodule\n"


def test_lint(tmp_path, capsys):
    path = tmp_path / "other_name.v"
    path.write_text(VERILOG)
    assert main(["lint", str(path), "--top", "top"]) == 0
    assert capsys.readouterr().out == "verilator --lint-only -Wall: clean\n"
    # Without the waivers, the module name differing from the file name is reported.
    assert main(["lint", str(path), "--no-waivers"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("%Warning-DECLFILENAME: ")
    assert out[-1] == "verilator --lint-only -Wall: 1 Warning-DECLFILENAME"
    assert main(["lint", str(tmp_path / "missing.v")]) == 2
    assert capsys.readouterr().err == f"dlfusion: error: no such Verilog file(s): {tmp_path / 'missing.v'}\n"
