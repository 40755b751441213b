"""Executors: the local process pool and Ray return the same outcomes; failures stay per job."""

import os
import sys

import pytest

from dlfusion.compiler.tune import TuneError
from dlfusion.compiler.tune.executor import EXECUTORS, LocalExecutor, RayExecutor, make_executor


def square(x):
    if x == 3:
        raise ValueError(f"bad job {x}")
    return {"x": x, "square": x * x}


def die_on_two(x):
    if x == 2:
        os._exit(7)   # the worker process vanishes without a Python exception
    return x + 100


@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray")
    # This test module is not importable by name in Ray's workers: ship its functions by value.
    pytest.importorskip("ray.cloudpickle").register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _by_index(outcomes):
    return {o.index: (o.job, o.result, o.error) for o in outcomes}


def test_local_runs_every_job_and_reports_the_failing_one():
    with LocalExecutor(workers=2) as executor:
        outcomes = list(executor.map(square, range(8)))
    assert sorted(o.index for o in outcomes) == list(range(8))
    failed = [o for o in outcomes if not o.ok]
    assert [o.job for o in failed] == [3]
    assert failed[0].error == "ValueError: bad job 3"
    assert "raise ValueError" in failed[0].traceback
    assert all(o.result == {"x": o.job, "square": o.job ** 2} for o in outcomes if o.ok)
    assert all(o.seconds >= 0 for o in outcomes)


def test_local_worker_death_fails_only_its_job():
    with LocalExecutor(workers=2) as executor:
        outcomes = _by_index(executor.map(die_on_two, range(6)))
    assert outcomes[2][2] is not None and "worker process died" in outcomes[2][2]
    assert {i: result for i, (_, result, error) in outcomes.items() if error is None} == {
        i: i + 100 for i in range(6) if i != 2}


def test_jobs_are_drawn_lazily():
    drawn = []

    def jobs():
        for x in range(20):
            drawn.append(x)
            yield x

    with LocalExecutor(workers=1) as executor:
        iterator = executor.map(square, jobs())
        next(iterator)
        assert len(drawn) < 20       # a few ahead of completion, not all at once
        iterator.close()


def test_ray_and_local_return_the_same_outcomes(ray_instance):
    with LocalExecutor(workers=2) as local:
        expected = _by_index(local.map(square, range(8)))
    with RayExecutor() as executor:           # uses the instance the fixture started
        got = _by_index(executor.map(square, range(8)))
    assert got == expected
    assert got[3][2] == "ValueError: bad job 3"
    assert ray_instance.is_initialized()      # not ours to stop


def test_ray_worker_death_fails_only_its_job(ray_instance):
    with RayExecutor() as executor:
        outcomes = _by_index(executor.map(die_on_two, range(4)))
    assert outcomes[2][2] is not None
    assert {i: r for i, (_, r, e) in outcomes.items() if e is None} == {0: 100, 1: 101, 3: 103}


def test_ray_is_not_started_without_jobs():
    # An unreachable address: connecting would fail, so nothing connected.
    assert list(RayExecutor(address="127.0.0.1:1").map(square, [])) == []


def test_an_unreachable_ray_cluster_is_a_clear_error():
    with pytest.raises(TuneError, match=r"cannot reach the Ray cluster at '127.0.0.1:1'"):
        list(RayExecutor(address="127.0.0.1:1").map(square, [1]))
    with pytest.raises(TuneError, match=r"Ray address 'nowhere' is not 'auto', 'host:port' or 'ray://host:port'"):
        list(RayExecutor(address="nowhere").map(square, [1]))


def test_make_executor():
    assert isinstance(make_executor("local", workers=3), LocalExecutor)
    assert make_executor("local", workers=3).workers == 3
    assert make_executor("local").workers == max(1, os.cpu_count() or 1)
    ray_executor = make_executor("ray", address="ray://head:10001")
    assert isinstance(ray_executor, RayExecutor) and ray_executor.address == "ray://head:10001"
    assert EXECUTORS == ("local", "ray")
    with pytest.raises(TuneError, match=r"unknown executor 'dask'; accepted: local, ray"):
        make_executor("dask")
    with pytest.raises(TuneError, match="workers must be a positive integer, not 0"):
        make_executor("local", workers=0)
    with pytest.raises(TuneError, match="--address 'x:1' is for the ray executor"):
        make_executor("local", address="x:1")


@pytest.mark.rtl
def test_characterization_on_ray_equals_local(ray_instance, tmp_path):
    """Real RTL jobs as Ray tasks: the same dataset as the local pool, cycle for cycle."""
    from dlfusion.compiler.tune.cache import MeasurementCache
    from dlfusion.compiler.tune.characterize import Grid, characterize
    from dlfusion.hw.config import HwConfig
    quad = HwConfig(cores=4, pe_rows=4, pe_cols=4, act_lines=2048, weight_blocks=1024, acc_entries=256,
                    param_entries=64, dram_bytes=1 << 20, dram_bytes_per_cycle=4, dram_latency=12,
                    watchdog_cycles=4000)   # tests/sim/test_rtl_multicore.py's model
    tiny = Grid("tiny", spatial=(4,), channels=(1,), fc_in=(8,), fc_out=(2,), max_cycles=10_000)
    summaries = {}
    for name, executor in (("ray", RayExecutor()), ("local", LocalExecutor(workers=2))):
        with executor:
            summaries[name] = characterize(quad, grid=tiny, out_dir=tmp_path / name, executor=executor,
                                           cache=MeasurementCache(tmp_path / name / "cache"),
                                           rule_dir=tmp_path / name / "rules")
    assert summaries["ray"]["executor"] == "ray" and summaries["ray"]["measured"] == summaries["ray"]["runs"] == 20
    assert (tmp_path / "ray" / "characterization.csv").read_bytes() == \
        (tmp_path / "local" / "characterization.csv").read_bytes()
