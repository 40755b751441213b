"""``dlfusion demo``: its first part's table (the RTL replaced by the golden simulator: no Verilator build)."""

import dlfusion.cli.demo
from dlfusion.cli import main


def test_demo_convolution_table(monkeypatch, capsys, tmp_path):
    run_backend = dlfusion.cli.demo.run_backend
    backends = []

    def golden_only(binary, inputs, backend, **options):
        backends.append(backend)
        return run_backend(binary, inputs, "golden")
    monkeypatch.setattr(dlfusion.cli.demo, "run_backend", golden_only)
    small = tmp_path / "small.toml"
    small.write_text("cores = 2\npe_rows = 4\npe_cols = 4\ndram_bytes_per_cycle = 4\n")
    code = main(["demo", "--hw", str(small), "--h", "6", "--w", "6", "--c", "8", "--no-tune"])
    out, err = capsys.readouterr()
    assert code == 0 and backends == ["golden", "rtl"]
    assert out.startswith("dlfusion demo 1/2: one 3x3 convolution (6x6, 8 -> 8 channels) split by output rows "
                          "over 2 core(s)")
    assert "  RTL output == golden output: True\n" in out and "RTL counters (core 1): instructions=" in out
    assert err == "[dlfusion] golden simulator: done\n"
