"""torch-cpu backend: real (tiny) timings, interleaved repeats, and the measure CLI."""

from __future__ import annotations

import time

import pytest
from lat_helpers import tiny_space

from experiments.cli import main
from latency_models.backends.torch_cpu import TimingPolicy, TorchCpuBackend, clock_ns, interleaved_order, time_callable
from latency_models.measurements import read_csv
from latency_models.probes import probes, random_archs

FAST = TimingPolicy(warmup=1, warmup_s=0.0, min_runs=3, max_runs=5, time_limit_s=0.3)


def test_interleaved_order_with_counts_spreads_fewer_repeats():
    order = interleaved_order(5, 4, seed=2, counts=[4, 4, 1, 2, 2])
    per_item = {i: [r for r, j in order if j == i] for i in range(5)}
    assert {i: len(v) for i, v in per_item.items()} == {0: 4, 1: 4, 2: 1, 3: 2, 4: 2}
    assert all(v == list(range(len(v))) for v in per_item.values())  # repeats numbered in order


def test_interleaved_order_visits_everything_each_repeat():
    order = interleaved_order(7, 3, seed=1)
    assert len(order) == 21
    for r in range(3):
        assert sorted(i for rr, i in order if rr == r) == list(range(7))
    assert [i for r, i in order if r == 0] != [i for r, i in order if r == 1]


def test_time_callable_stops_on_time_limit_and_counts_runs():
    pol = TimingPolicy(warmup=2, warmup_s=0.0, min_runs=3, max_runs=1000, rel_precision=0.0,
                       time_limit_s=0.3)
    t = time_callable(lambda: time.sleep(0.004), pol)
    assert t.warmup >= 2 and 3 <= t.runs < 1000
    assert 3.5 <= t.median_ms <= 60 and t.p10_ms <= t.median_ms <= t.p90_ms


def test_cpu_clock_ignores_sleeping():
    t = time_callable(lambda: time.sleep(0.01), FAST, clock_ns("cpu", 1))
    assert t.median_ms < 5  # sleeping burns no CPU time
    with pytest.raises(ValueError):
        clock_ns("sundial", 1)


def test_backend_times_blocks_and_networks():
    space = tiny_space()
    be = TorchCpuBackend(1, FAST)
    sig = probes(space)[2].sig
    row = be.time_block(sig, repeat=1)
    assert row.latency_ms > 0 and row.runs >= 3 and row.repeat == 1 and row.sig == sig
    arch = random_archs(space, 2, seed=3)[1]
    net = be.time_network(space.backbone, arch)
    assert net.latency_ms > row.latency_ms and net.arch == arch
    assert be.info.threads == 1 and be.info.device.endswith(":t1") and "torch=" in be.info.versions


def test_measure_cli_writes_valid_csv(tmp_path, capsys):
    out = tmp_path / "m.csv"
    rc = main(["latency", "measure", "--preset", "tiny", "--out", str(out), "--limit", "4",
               "--repeats", "2", "--networks", "1", "--min-runs", "3", "--max-runs", "4",
               "--time-limit", "0.3", "--warmup", "1", "--no-progress", "--clock", "cpu",
               "--calibration", "3", "--calibration-repeats", "1"])
    assert rc == 0 and "noise floor" in capsys.readouterr().out
    m = read_csv(out)
    assert len(m.blocks) == 8 + 3 and len(m.networks) == 2  # 4 probes x 2 + 3 calibration x 1
    assert m.info.device.endswith(":cpu-clock") and m.noise_floor_pct() is not None
    assert m.has_reference and all(r.ref_ms > 0 for r in m.blocks)


@pytest.mark.parametrize("k", ["0", "3"])
def test_measure_cli_rejects_calibration_repeats_outside_1_to_repeats(tmp_path, capsys, k):
    out = tmp_path / "m.csv"
    rc = main(["latency", "measure", "--preset", "tiny", "--out", str(out), "--repeats", "2",
               "--calibration", "3", "--calibration-repeats", k, "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "--calibration-repeats" in err
    assert not out.exists()
