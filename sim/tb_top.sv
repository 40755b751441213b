// Testbench top (Verilator) for the dlfusion accelerator, driven by sim/cocotb_bench.py.
//
// Owns the DRAM backing store behind the accelerator's synchronous memory port
// (the bandwidth/latency model is inside the accelerator), loads the initial
// image from +DRAM_IMAGE=<file> ($readmemh, sparse "@line" hex, one line of
// 8*L bits per text line, byte 0 in bits [7:0]) and writes DRAM regions on
// request to +DUMP_DIR=<dir>/region_<index>.hex ($writememh).
//
// DRAM traffic and barriers: tb_dram_reads / tb_dram_writes count the cycles with
// mem__re / mem__we since the last start pulse (one line each: instruction fetch and
// DMA loads are reads, DMA stores writes). With +BARRIER_LOG=<file>, every cycle in
// which at least one core passes a barrier appends the line
// "<cycles> <barrier_go mask> <reads> <writes>" (decimal): the accelerator's cycles
// counter in that cycle and the lines moved in the cycles before it. Logged here, not
// in Python, so the run never wakes Python per cycle.
//
// Parameters are set at build time with Verilator -G: L (bytes per DRAM line),
// DRAM_LINES and CORES. No `timescale here: the build passes --timescale 1ns/1ps
// so the generated accelerator module and this file agree.
//
// Clocking: with TB_SV_CLOCK defined (the default build, needs --timing) the
// clock is generated here, so the cocotb side is not woken per cycle; without
// it, clk is an input driven by a cocotb Clock (kept for comparison/debug).
//
// Control inputs: rst, start, core_mask and prog_addr reach the accelerator through
// registers (one cycle later than cocotb writes them). Verilator evaluates all logic
// that depends combinationally on a top-level input at every eval() call (its "ico"
// region: every rising and falling clock edge), and every next-state function of the
// accelerator depends on rst: registered here, that logic is evaluated only when its
// clock ticks. The accelerator's own cycle counts are unchanged (counted from the start
// it sees), and so are the DRAM counters below (kept on the same start).

module tb_top #(
    parameter int L = 16,
    parameter int DRAM_LINES = 4096,
    parameter int CORES = 1
) (
`ifndef TB_SV_CLOCK
    input  logic                  clk,
`endif
    input  logic                  rst,
    input  logic                  start,
    input  logic [CORES-1:0]      core_mask,
    input  logic [32*CORES-1:0]   prog_addr,
    output logic                  done,
    output logic [3:0]            error_code,
    output logic [3:0]            error_core,
    output logic [31:0]           error_pc,
    output logic [47:0]           cycles,
    output logic [48*7*CORES-1:0] counters,
    // region dump: set start/count/index, then raise dump_trigger
    input  logic                  dump_trigger,
    input  logic [31:0]           dump_start,
    input  logic [31:0]           dump_count,
    input  logic [31:0]           dump_index,
    // testbench status
    output logic [63:0]           tb_cycles,    // clock cycles since time 0
    output logic [31:0]           tb_oob,       // DRAM accesses beyond DRAM_LINES (ignored)
    output logic [63:0]           tb_dram_reads,   // mem__re cycles since start
    output logic [63:0]           tb_dram_writes   // mem__we cycles since start
);
`ifdef TB_SV_CLOCK
    logic clk;
    initial clk = 1'b0;
    always #5 clk = ~clk;                   // 10 ns period
`endif

    logic [31:0]    mem_addr;
    logic           mem_re;
    logic           mem_we;
    logic [8*L-1:0] mem_wdata;
    logic [8*L-1:0] mem_rdata;
    logic [CORES-1:0] barrier_go;

    logic                rst_q;
    logic                start_q;
    logic [CORES-1:0]    core_mask_q;
    logic [32*CORES-1:0] prog_addr_q;
    initial begin
        rst_q = 1'b1;
        start_q = 1'b0;
        core_mask_q = '0;
        prog_addr_q = '0;
    end
    always_ff @(posedge clk) begin
        rst_q <= rst;
        start_q <= start;
        core_mask_q <= core_mask;
        prog_addr_q <= prog_addr;
    end

    dlfusion_accel dut (
        .clk        (clk),
        .rst        (rst_q),
        .start      (start_q),
        .core_mask  (core_mask_q),
        .prog_addr  (prog_addr_q),
        .mem__addr  (mem_addr),
        .mem__re    (mem_re),
        .mem__we    (mem_we),
        .mem__wdata (mem_wdata),
        .mem__rdata (mem_rdata),
        .done       (done),
        .error_code (error_code),
        .error_core (error_core),
        .error_pc   (error_pc),
        .cycles     (cycles),
        .counters   (counters),
        .barrier_go (barrier_go)
    );

    // DRAM: synchronous read (data valid after the edge that saw mem_re),
    // write at the edge; a read and a write of the same line at one edge
    // return the old contents.
    logic [8*L-1:0] dram [0:DRAM_LINES-1];
    logic           in_range;
    assign in_range = {32'd0, mem_addr} < 64'(DRAM_LINES);

    always_ff @(posedge clk) begin
        if (mem_we && in_range) dram[mem_addr] <= mem_wdata;
        if (mem_re) mem_rdata <= in_range ? dram[mem_addr] : '0;
    end

    initial begin
        tb_cycles = '0;
        tb_oob = '0;
    end
    always_ff @(posedge clk) begin
        tb_cycles <= tb_cycles + 64'd1;
        if ((mem_re || mem_we) && !in_range) tb_oob <= tb_oob + 32'd1;
    end

    initial begin
        tb_dram_reads = '0;
        tb_dram_writes = '0;
    end
    always_ff @(posedge clk) begin
        if (start_q) begin
            tb_dram_reads <= '0;
            tb_dram_writes <= '0;
        end else begin
            tb_dram_reads <= tb_dram_reads + 64'(mem_re);
            tb_dram_writes <= tb_dram_writes + 64'(mem_we);
        end
    end

    string barrier_path;
    int barrier_log = 0;
    initial begin
        if ($value$plusargs("BARRIER_LOG=%s", barrier_path)) begin
            barrier_log = $fopen(barrier_path, "w");
            if (barrier_log == 0) $fatal(1, "cannot open +BARRIER_LOG=%s", barrier_path);
        end
    end
    always @(posedge clk) begin
        if (barrier_log != 0 && !rst_q && |barrier_go) begin
            $fwrite(barrier_log, "%0d %0d %0d %0d\n", cycles, barrier_go, tb_dram_reads, tb_dram_writes);
            $fflush(barrier_log);   // read by Python after the process exits, which may not close it
        end
    end

    string image;
    string dump_dir;
    initial begin
        // Explicit zero fill: the golden model's DRAM starts at zero, and
        // --x-initial fast leaves uninitialised state unspecified.
        for (int i = 0; i < DRAM_LINES; i++) dram[i] = '0;
        if ($value$plusargs("DRAM_IMAGE=%s", image)) $readmemh(image, dram);
        if (!$value$plusargs("DUMP_DIR=%s", dump_dir)) dump_dir = ".";
    end

    always @(posedge dump_trigger) begin
        if (dump_count != 0)
            $writememh($sformatf("%s/region_%0d.hex", dump_dir, dump_index), dram,
                       dump_start, dump_start + dump_count - 32'd1);
    end
endmodule
