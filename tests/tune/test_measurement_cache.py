"""The measurement cache: keys, atomic entries, reuse without re-running, resume, HwConfig separation."""

import json
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from dlfusion.compiler.tune.cache import ENTRY_FORMAT, MeasurementCache, measure, measurement_key
from dlfusion.compiler.tune.executor import LocalExecutor
from dlfusion.hw.config import HwConfig

HW_A = HwConfig(cores=2)
HW_B = HwConfig(cores=4)


def fake_measurement(job):
    """Leaves one file per call in ``job["calls"]``, so the test can count the runs."""
    Path(job["calls"], uuid.uuid4().hex).touch()
    if job["x"] < 0:
        raise RuntimeError(f"cannot measure {job['x']}")
    time.sleep(0.02)
    return {"cycles": 1000 + job["x"] ** 2}


def calls(directory) -> int:
    return len(list(Path(directory).iterdir()))


@pytest.fixture(scope="module")
def executor():
    with LocalExecutor(workers=2) as executor:
        yield executor


def _prepare(hw, calls_dir):
    return lambda x: (measurement_key(hw, {"x": x}), {"x": x, "calls": str(calls_dir)})


def _run(specs, hw, cache, executor, calls_dir):
    return list(measure(specs, _prepare(hw, calls_dir), fake_measurement, executor=executor, cache=cache,
                        hw_hash=hw.hash, describe=lambda x: {"x": x}))


def test_keys():
    blob = b"\x01\x02"
    assert measurement_key(HW_A, blob) == measurement_key(HW_A, blob)
    assert len(measurement_key(HW_A, blob)) == 64
    assert measurement_key(HW_A, blob) != measurement_key(HW_B, blob)
    assert measurement_key(HW_A, "ab", "c") != measurement_key(HW_A, "a", "bc")
    assert measurement_key(HW_A, {"a": 1, "b": 2}) == measurement_key(HW_A, {"b": 2, "a": 1})
    x = np.arange(4, dtype=np.int8)
    assert measurement_key(HW_A, x) != measurement_key(HW_A, x.astype(np.uint8))
    assert measurement_key(HW_A, x) != measurement_key(HW_A, x.reshape(2, 2))


def test_entries_are_json_with_seconds_and_time(tmp_path):
    cache = MeasurementCache(tmp_path)
    key = measurement_key(HW_A, "job")
    assert cache.get(key) is None and key not in cache
    cache.put(key, {"cycles": 5}, seconds=1.5, hw_hash=HW_A.hash, job={"name": "job"})
    entry = cache.get(key)
    assert (entry.result, entry.seconds, entry.hw_hash, entry.job) == ({"cycles": 5}, 1.5, HW_A.hash, {"name": "job"})
    data = json.loads(cache.path(key).read_text())
    assert data["format"] == ENTRY_FORMAT and data["key"] == key and data["created"] == entry.created
    assert [p.name for p in cache.path(key).parent.iterdir()] == [f"{key}.json"]   # no temporary left behind
    assert len(cache) == 1
    cache.path(key).write_text("{ truncated")
    assert cache.get(key) is None         # unreadable: measured again, never an exception


def test_cached_results_are_not_measured_again(tmp_path, executor):
    cache = MeasurementCache(tmp_path / "cache")
    calls_dir = tmp_path / "calls"
    calls_dir.mkdir()
    first = _run(list(range(6)), HW_A, cache, executor, calls_dir)
    assert calls(calls_dir) == 6
    assert all(m.ok and not m.cached and m.attempts == 1 for m in first)
    assert all(m.seconds >= 0.02 for m in first)
    second = _run(list(range(6)), HW_A, cache, executor, calls_dir)
    assert calls(calls_dir) == 6          # nothing ran
    assert all(m.cached and m.attempts == 0 for m in second)
    assert {m.spec: (m.result, m.seconds) for m in second} == {m.spec: (m.result, m.seconds) for m in first}
    assert {m.spec: m.result["cycles"] for m in second} == {x: 1000 + x * x for x in range(6)}
    assert cache.get(second[0].key).job == {"x": second[0].spec}


def test_an_interrupted_run_resumes(tmp_path, executor):
    cache = MeasurementCache(tmp_path / "cache")
    calls_dir = tmp_path / "calls"
    calls_dir.mkdir()
    specs = list(range(12))
    with LocalExecutor(workers=2) as interrupted:
        run = measure(specs, _prepare(HW_A, calls_dir), fake_measurement, executor=interrupted, cache=cache)
        done = [next(run) for _ in range(4)]
        run.close()                        # interrupted after four results: the jobs still running are stopped
    stored = len(cache)
    assert stored >= 4 and all(m.key in cache for m in done)
    before = calls(calls_dir)
    resumed = _run(specs, HW_A, cache, executor, calls_dir)
    assert sum(m.cached for m in resumed) == stored
    assert calls(calls_dir) - before == len(specs) - stored
    assert sorted(m.spec for m in resumed) == specs and len(cache) == len(specs)


def test_hw_configs_do_not_share_entries(tmp_path, executor):
    cache = MeasurementCache(tmp_path / "cache")
    calls_dir = tmp_path / "calls"
    calls_dir.mkdir()
    _run([1, 2], HW_A, cache, executor, calls_dir)
    other = _run([1, 2], HW_B, cache, executor, calls_dir)
    assert not any(m.cached for m in other) and calls(calls_dir) == 4
    assert len(cache) == 4
    assert {cache.get(m.key).hw_hash for m in other} == {HW_B.hash}


def test_failures_are_reported_and_not_stored(tmp_path, executor):
    cache = MeasurementCache(tmp_path / "cache")
    calls_dir = tmp_path / "calls"
    calls_dir.mkdir()

    def prepare(x):
        if x == 99:
            raise ValueError("does not compile")
        return _prepare(HW_A, calls_dir)(x)

    results = {m.spec: m for m in measure([1, -5, 99], prepare, fake_measurement, executor=executor, cache=cache)}
    assert results[1].ok
    assert results[-5].error == "RuntimeError: cannot measure -5" and results[-5].key not in cache
    assert results[99].error == "ValueError: does not compile" and results[99].key is None
    again = {m.spec: m for m in measure([1, -5], prepare, fake_measurement, executor=executor, cache=cache)}
    assert again[1].cached and not again[-5].cached and not again[-5].ok
