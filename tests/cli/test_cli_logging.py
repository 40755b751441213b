"""Messages go through logging to stderr (none with --quiet or --json), results to stdout, never mixed."""

import json
import logging

from dlfusion.cli import main


def test_messages_on_stderr_results_on_stdout(tmp_path, capsys):
    out = tmp_path / "tiny.dlfb"
    assert main(["compile", "tiny_cnn", "--input-size", "16", "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("compiled tiny_cnn: 8 layers in 8 groups") and captured.out.count("\n") == 1
    lines = captured.err.splitlines()
    assert lines[0] == "[dlfusion] exporting and quantizing tiny_cnn at 16 px..."
    assert all(line.startswith("[dlfusion] ") for line in lines) and len(lines) == 3


def test_quiet_and_json_keep_stderr_empty(tmp_path, capsys):
    out = tmp_path / "tiny.dlfb"
    assert main(["compile", "tiny_cnn", "--input-size", "16", "-o", str(out), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out.startswith("compiled tiny_cnn")
    assert main(["compile", "tiny_cnn", "--input-size", "16", "-o", str(out), "--json"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and json.loads(captured.out)["layers"] == 8
    assert main(["verilog", "-q", "-o", str(tmp_path / "a.v"), "--hw", str(tmp_path / "missing.toml")]) == 2
    assert capsys.readouterr().err.startswith("dlfusion: error: ")


def test_main_leaves_logging_as_it_was(tmp_path, capsys):
    logger = logging.getLogger("dlfusion")
    handlers, level = list(logger.handlers), logger.level
    main(["models"])
    assert (logger.handlers, logger.level) == (handlers, level)
    capsys.readouterr()
    # The library's messages reach no stream by themselves (no handler of its own).
    logging.getLogger("dlfusion.compiler.tune.tune").info("not shown")
    assert capsys.readouterr().err == ""
