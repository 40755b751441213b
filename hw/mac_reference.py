"""The bare MAC array of a configuration: the lower bound of what simulating the accelerator can cost.

``cores x pe_rows x pe_cols`` int8 multipliers, each adding into its own int32
accumulator every cycle, fed by 16-bit Galois LFSRs (one per activation lane
``(core, row)`` and one per weight lane ``(core, col)``; MAC ``(core, row, col)``
multiplies the low bytes of the two). Nothing else: no control, memory, DMA or
post-processing. ``dlfusion bench simspeed`` builds it with the accelerator's
Verilator flags and compares the accelerator's simulated cycles per second with
this array's.

Plain Verilog rather than an Amaranth component, on purpose: the accumulators are
an unpacked array the testbench reads by hierarchical name once, at the end, so
that they are observable (Verilator cannot remove the MACs) without a checksum or
an output port evaluated every cycle. Not part of the accelerator (``top.py`` does
not import it, so it names no RTL build).
"""

from __future__ import annotations

from .config import HwConfig

__all__ = ["MODULE", "LFSR_TAPS", "mac_array_verilog"]

#: The module name of :func:`mac_array_verilog`'s Verilog.
MODULE = "mac_array_reference"
#: Taps of the 16-bit maximal-length Galois LFSR (x^16 + x^14 + x^13 + x^11 + 1).
LFSR_TAPS = 0xB400


def _seed(index: int) -> int:
    """A distinct non-zero 16-bit seed per LFSR (the all-zero state would stay zero)."""
    return ((index * 40503 + 12345) & 0xFFFF) | 1


def mac_array_verilog(hw: HwConfig) -> str:
    """Verilog of the bare MAC array of ``hw`` (module :data:`MODULE`, one input ``clk``).

    The accumulators are ``acc[(core * pe_rows + row) * pe_cols + col]`` (signed 32-bit,
    zero at start); the LFSRs are ``act_lfsr[core * pe_rows + row]`` and
    ``weight_lfsr[core * pe_cols + col]``.
    """
    cores, rows, cols = hw.cores, hw.pe_rows, hw.pe_cols
    activations, weights = cores * rows, cores * cols
    seeds = [f"        act_lfsr[{i}] = 16'h{_seed(i):04x};" for i in range(activations)]
    seeds += [f"        weight_lfsr[{i}] = 16'h{_seed(activations + i):04x};" for i in range(weights)]
    return f"""\
// Bare MAC array reference of HwConfig {hw.hash}: {cores} x {rows} x {cols} int8 MACs, int32 accumulators.
module {MODULE} (input wire clk);
    localparam CORES = {cores};
    localparam ROWS = {rows};
    localparam COLS = {cols};
    reg [15:0] act_lfsr [0:CORES*ROWS-1];
    reg [15:0] weight_lfsr [0:CORES*COLS-1];
    reg signed [31:0] acc [0:CORES*ROWS*COLS-1];
    integer i;
    initial begin
{chr(10).join(seeds)}
        for (i = 0; i < CORES*ROWS*COLS; i = i + 1) acc[i] = 32'sd0;
    end
    genvar lane, core, row, col;
    generate
        for (lane = 0; lane < CORES*ROWS; lane = lane + 1) begin : act
            always @(posedge clk)
                act_lfsr[lane] <= {{1'b0, act_lfsr[lane][15:1]}}
                    ^ (act_lfsr[lane][0] ? 16'h{LFSR_TAPS:04x} : 16'h0);
        end
        for (lane = 0; lane < CORES*COLS; lane = lane + 1) begin : weight
            always @(posedge clk)
                weight_lfsr[lane] <= {{1'b0, weight_lfsr[lane][15:1]}}
                    ^ (weight_lfsr[lane][0] ? 16'h{LFSR_TAPS:04x} : 16'h0);
        end
        for (core = 0; core < CORES; core = core + 1) begin : mac_core
            for (row = 0; row < ROWS; row = row + 1) begin : mac_row
                for (col = 0; col < COLS; col = col + 1) begin : mac_col
                    always @(posedge clk)
                        acc[(core*ROWS + row)*COLS + col] <= acc[(core*ROWS + row)*COLS + col]
                            + $signed(act_lfsr[core*ROWS + row][7:0]) * $signed(weight_lfsr[core*COLS + col][7:0]);
                end
            end
        end
    endgenerate
endmodule
"""
