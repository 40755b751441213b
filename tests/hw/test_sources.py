"""The sources that name RTL builds and measurements: the gateware, not the host-side modules of hw."""

from dlfusion.hw.sources import gateware_sources


def test_gateware_sources_are_what_the_verilog_is_made_from():
    names = {path.name for path in gateware_sources()}
    assert {"top.py", "core.py", "dma.py", "pe_array.py", "ppu.py", "memsys.py", "fp.py", "config.py",
            "isa.py"} <= names
    # The assembler, the container and the numerics do not change the hardware.
    assert not names & {"asm.py", "binary.py", "numerics.py", "sources.py", "__init__.py"}
