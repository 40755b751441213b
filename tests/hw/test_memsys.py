"""The shared DRAM port on the Amaranth simulator: round-robin grants, bandwidth, latency, tags.

Requesters are testbench queues of reads and writes; every cycle the bench records which
requester was granted and every response. Expectations: a requester waiting is granted
within one round of the others, grants follow the round-robin order exactly, the port
moves at most ``dram_bytes_per_cycle`` bytes per cycle, read data arrives exactly
``dram_latency`` cycles after its grant, in request order, with the request's tag, at the
requester that asked, and writes land in the store.
"""

import dataclasses

import numpy as np
import pytest
from amaranth.hdl import Elaboratable, Module
from hypothesis import given, settings
from hypothesis import strategies as st
from unit_bench import TINY, backing_store, pack, simulate, unpack

from dlfusion.hw.memsys import TAG_BITS, MemorySystem

LANES = TINY.lanes


class MemBench(Elaboratable):
    def __init__(self, hw, tag_bits, dram):
        self.memsys = MemorySystem(hw, tag_bits)
        self.dram_init = [pack(line, 8) for line in dram]
        self.dram = None

    def elaborate(self, platform):
        m = Module()
        m.submodules.memsys = self.memsys
        self.dram = backing_store(m, self.memsys.mem, self.dram_init)
        return m


def run_requests(hw, tag_bits, requests, dram, *, max_cycles=400):
    """``requests[i]``: list of (addr, write, wdata line or None, tag) of requester ``i``, offered in order
    back to back. Returns (grants: list of (cycle, requester, request)), responses per requester as
    (cycle, data, tag), DRAM after."""
    bench = MemBench(hw, tag_bits, dram)
    memsys = bench.memsys
    n = len(tag_bits)
    grants, responses, result = [], [[] for _ in range(n)], {}
    pending = [list(r) for r in requests]

    async def monitor(ctx):
        resps = [getattr(memsys, f"resp{i}") for i in range(n)]
        cycle = 0
        samples = []
        for i, r in enumerate(resps):
            samples += [r.valid, r.payload.data] + ([r.payload.tag] if tag_bits[i] else [])
        async for _, _, *values in ctx.tick().sample(*samples):
            k = 0
            for i in range(n):
                valid, data = values[k], values[k + 1]
                tag = values[k + 2] if tag_bits[i] else None
                k += 3 if tag_bits[i] else 2
                if valid:
                    responses[i].append((cycle, tuple(unpack(data, LANES, 8)), tag))
            cycle += 1

    async def testbench(ctx):
        reqs = [getattr(memsys, f"req{i}") for i in range(n)]
        for cycle in range(max_cycles):
            for i, req in enumerate(reqs):
                if pending[i]:
                    addr, write, wdata, tag = pending[i][0]
                    ctx.set(req.valid, 1)
                    ctx.set(req.payload.addr, addr)
                    ctx.set(req.payload.write, write)
                    ctx.set(req.payload.wdata, pack(wdata, 8) if wdata is not None else 0)
                    if tag_bits[i]:
                        ctx.set(req.payload.tag, tag)
                else:
                    ctx.set(req.valid, 0)
            _, _, *handshakes = await ctx.tick().sample(*[r.valid & r.ready for r in reqs])
            granted = [i for i, h in enumerate(handshakes) if h]
            assert len(granted) <= 1, f"two requesters granted in cycle {cycle}: {granted}"
            for i in granted:
                grants.append((cycle, i, pending[i].pop(0)))
            if not any(pending) and cycle > (grants[-1][0] if grants else 0) + hw.dram_latency + 2:
                break
        result["dram"] = np.array([unpack(ctx.get(bench.dram.data[i]), LANES, 8) for i in range(hw.dram_lines)])

    simulate(bench, testbench, processes=[monitor])
    return grants, responses, result["dram"]


def random_dram(seed, hw=TINY):
    return np.random.default_rng(seed).integers(0, 256, size=(hw.dram_lines, LANES)).astype(np.uint8)


def reads(addresses, tag_base=0):
    return [(a, 0, None, tag_base + k) for k, a in enumerate(addresses)]


def test_round_robin_is_fair_when_everyone_waits():
    dram = random_dram(1)
    requests = [reads(range(10 * i, 10 * i + 6), tag_base=100 * i) for i in range(3)]
    grants, _, _ = run_requests(TINY, [TAG_BITS, 0, TAG_BITS], requests, dram)
    assert [i for _, i, _ in grants] == [0, 1, 2] * 6
    # Full bandwidth (4 bytes per cycle, 4-byte lines): one grant per cycle.
    cycles = [cycle for cycle, _, _ in grants]
    assert cycles == list(range(cycles[0], cycles[0] + 18))


def test_reads_return_after_the_latency_in_order_with_their_tags():
    dram = random_dram(2)
    requests = [reads([5, 9, 5, 200], tag_base=7), reads([1, 2, 3])]
    grants, responses, _ = run_requests(TINY, [TAG_BITS, 0], requests, dram)
    for requester in range(2):
        mine = [(cycle, request) for cycle, i, request in grants if i == requester]
        got = responses[requester]
        assert len(got) == len(mine)
        for (grant_cycle, (addr, _, _, tag)), (cycle, data, resp_tag) in zip(mine, got, strict=True):
            assert cycle - grant_cycle == TINY.dram_latency
            assert data == tuple(dram[addr])
            assert resp_tag == (tag if requester == 0 else None)


def test_writes_land_in_the_store_and_return_nothing():
    dram = random_dram(3)
    line = (1, 2, 3, 4)
    requests = [[(17, 1, line, 0), (18, 1, (9, 9, 9, 9), 0), (17, 0, None, 5)]]
    grants, responses, after = run_requests(TINY, [TAG_BITS], requests, dram)
    assert len(grants) == 3
    assert responses[0] == [(grants[2][0] + TINY.dram_latency, line, 5)]   # the read sees the write
    expected = dram.copy()
    expected[17], expected[18] = line, (9, 9, 9, 9)
    np.testing.assert_array_equal(after, expected)


@pytest.mark.parametrize("bytes_per_cycle", [1, 2, 3])
def test_bandwidth_limits_the_grant_rate(bytes_per_cycle):
    hw = dataclasses.replace(TINY, dram_bytes_per_cycle=bytes_per_cycle, dram_latency=7)
    dram = random_dram(4, hw)
    requests = [reads(range(12)), reads(range(12, 24))]
    grants, responses, _ = run_requests(hw, [TAG_BITS, TAG_BITS], requests, dram, max_cycles=1000)
    cycles = [cycle for cycle, _, _ in grants]
    span = cycles[-1] - cycles[0]
    # 23 further lines of 4 bytes: never faster than `bytes_per_cycle` ...
    assert span >= -(-(len(cycles) - 1) * LANES // bytes_per_cycle)
    if LANES % bytes_per_cycle == 0:
        # ... and exactly that fast when a line is a whole number of cycles. (Otherwise the credits,
        # capped at one line, round the rate down: 3 bytes per cycle move a 4-byte line every 2 cycles.)
        assert span == (len(cycles) - 1) * LANES // bytes_per_cycle
    assert [cycle for cycle, _, _ in responses[0]] == [c + 7 for c, i, _ in grants if i == 0]


def expected_round_robin(n, offers):
    """The grant order of a round-robin arbiter over requesters that always want (``offers[i]`` requests)."""
    left = list(offers)
    pointer, order = 0, []
    while any(left):
        candidates = [i for i in range(n) if left[i]]
        chosen = next((i for i in candidates if i >= pointer), candidates[0])
        order.append(chosen)
        left[chosen] -= 1
        pointer = (chosen + 1) % n
    return order


@settings(max_examples=8, deadline=None)
@given(counts=st.lists(st.integers(0, 5), min_size=1, max_size=4), seed=st.integers(0, 2**32 - 1),
       latency=st.integers(2, 9))
def test_random_traffic(counts, seed, latency):
    hw = dataclasses.replace(TINY, dram_latency=latency)
    rng = np.random.default_rng(seed)
    dram = random_dram(seed, hw)
    n = len(counts)
    tag_bits = [int(rng.choice([0, TAG_BITS])) for _ in range(n)]
    requests = []
    for i, count in enumerate(counts):
        mine = []
        for k in range(count):
            addr = int(rng.integers(0, 64))
            if rng.random() < 0.3:
                mine.append((64 + 8 * i + k, 1, tuple(rng.integers(0, 256, size=LANES).tolist()), 0))
            else:
                mine.append((addr, 0, None, int(rng.integers(0, 1 << TAG_BITS)) if tag_bits[i] else 0))
        requests.append(mine)
    grants, responses, after = run_requests(hw, tag_bits, requests, dram)
    assert [i for _, i, _ in grants] == expected_round_robin(n, counts)
    expected = dram.copy()
    for i in range(n):
        mine = [(cycle, request) for cycle, j, request in grants if j == i]
        assert [request for _, request in mine] == requests[i]
        read_grants = [(cycle, request) for cycle, request in mine if not request[1]]
        assert len(responses[i]) == len(read_grants)
        for (grant_cycle, (addr, _, _, tag)), (cycle, data, resp_tag) in zip(read_grants, responses[i],
                                                                             strict=True):
            assert cycle == grant_cycle + latency
            assert data == tuple(dram[addr])          # reads target lines no request writes
            assert resp_tag == (tag if tag_bits[i] else None)
        for addr, write, wdata, _ in requests[i]:
            if write:
                expected[addr] = wdata
    np.testing.assert_array_equal(after, expected)
