"""The measurement CSV: round trip and validation errors that name file, line and column."""

from __future__ import annotations

import csv

import pytest
from lat_helpers import synthetic

from latency_models.measurements import COLUMNS, MeasurementError, read_csv, read_many


@pytest.fixture()
def csv_path(tmp_path):
    p = tmp_path / "m.csv"
    synthetic(n_networks=3, repeats=2).to_csv(p)
    return p


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write(path, rows, columns=COLUMNS):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def test_roundtrip(csv_path):
    m = read_csv(csv_path)
    orig = synthetic(n_networks=3, repeats=2)
    assert len(m.blocks) == len(orig.blocks) and len(m.networks) == len(orig.networks)
    assert [r.sig for r in m.blocks] == [r.sig for r in orig.blocks]
    assert [r.arch.arch_id for r in m.networks] == [r.arch.arch_id for r in orig.networks]
    assert m.blocks[0].latency_ms == pytest.approx(orig.blocks[0].latency_ms, rel=1e-5)
    assert m.noise_floor_pct() == pytest.approx(orig.noise_floor_pct(), rel=1e-3)
    assert m.info.device == "synthetic-device"


def test_missing_column(csv_path, tmp_path):
    rows = _rows(csv_path)
    bad = tmp_path / "bad.csv"
    _write(bad, rows, [c for c in COLUMNS if c != "latency_ms"])
    with pytest.raises(MeasurementError, match=r"bad\.csv: missing column 'latency_ms'"):
        read_csv(bad)


@pytest.mark.parametrize("value,msg", [("nan", "not a finite number"), ("0", "must be > 0"),
                                       ("-3", "must be > 0"), ("fast", "not a number"),
                                       ("", "empty value")])
def test_bad_latency(csv_path, tmp_path, value, msg):
    rows = _rows(csv_path)
    rows[4]["latency_ms"] = value
    bad = tmp_path / "bad.csv"
    _write(bad, rows)
    with pytest.raises(MeasurementError, match=rf"bad\.csv: line 6, column latency_ms: .*{msg}"):
        read_csv(bad)


def test_mixed_devices(csv_path, tmp_path):
    rows = _rows(csv_path)
    rows[7]["device"] = "iPhone17,2"
    bad = tmp_path / "bad.csv"
    _write(bad, rows)
    with pytest.raises(MeasurementError, match=r"line 9, column device: 'iPhone17,2' differs"):
        read_csv(bad)


def test_mixed_devices_across_files(csv_path, tmp_path):
    other = tmp_path / "other.csv"
    synthetic(device="Apple M2", n_networks=0, repeats=1).to_csv(other)
    with pytest.raises(MeasurementError, match="device 'Apple M2' differs"):
        read_many([csv_path, other])


def test_duplicate_signature(csv_path, tmp_path):
    rows = _rows(csv_path)
    rows.append(dict(rows[2]))
    bad = tmp_path / "bad.csv"
    _write(bad, rows)
    with pytest.raises(MeasurementError, match=rf"line {len(rows) + 1}, column probe_id: duplicate "
                                               r"signature .* already on line 4"):
        read_csv(bad)


def test_duplicate_network(csv_path, tmp_path):
    rows = _rows(csv_path)
    net = next(r for r in rows if r["scope"] == "network")
    rows.append(dict(net))
    bad = tmp_path / "bad.csv"
    _write(bad, rows)
    with pytest.raises(MeasurementError, match="column arch_id: duplicate arch"):
        read_csv(bad)


def test_bad_signature_field_and_scope(csv_path, tmp_path):
    rows = _rows(csv_path)
    rows[0]["heads"] = "eight"
    bad = tmp_path / "bad.csv"
    _write(bad, rows)
    with pytest.raises(MeasurementError, match=r"line 2, column heads: bad value 'eight'"):
        read_csv(bad)
    rows = _rows(csv_path)
    rows[1]["scope"] = "layer"
    _write(bad, rows)
    with pytest.raises(MeasurementError, match=r"line 3, column scope: expected 'block' or 'network'"):
        read_csv(bad)


def test_network_row_arch_mismatch(csv_path, tmp_path):
    rows = _rows(csv_path)
    i = next(i for i, r in enumerate(rows) if r["scope"] == "network")
    rows[i]["arch_id"] = "000000000000"
    bad = tmp_path / "bad.csv"
    _write(bad, rows)
    with pytest.raises(MeasurementError, match=rf"line {i + 2}, column arch_id: .* does not match"):
        read_csv(bad)


def test_cli_reports_one_line_error(csv_path, tmp_path, capsys):
    from experiments.cli import main

    rows = _rows(csv_path)
    rows[3]["latency_ms"] = "nan"
    bad = tmp_path / "bad.csv"
    _write(bad, rows)
    rc = main(["latency", "fit", str(bad), "--out", str(tmp_path / "model")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "line 5, column latency_ms" in err
    assert not (tmp_path / "model").exists()


def test_drift_correction_with_reference_timings(tmp_path):
    """Rows measured while the machine was 30% slower (the reference shows it) are scaled back."""
    from dataclasses import replace

    m = synthetic(n_networks=4, repeats=2, noise=0.0)
    slow = {0: 1.0, 1: 1.3}  # repeat 1 ran on a slowed-down machine
    m.blocks = [replace(r, latency_ms=r.latency_ms * slow[r.repeat], ref_ms=5.0 * slow[r.repeat])
                for r in m.blocks]
    m.networks = [replace(r, latency_ms=r.latency_ms * slow[r.repeat], ref_ms=5.0 * slow[r.repeat])
                  for r in m.networks]
    assert m.has_reference and m.drift_corrected  # on whenever every row has ref_ms
    assert m.noise_floor_pct(corrected=False) > 10 and m.noise_floor_pct() < 1e-6
    m.correct_drift = False  # fit --no-drift-correct
    assert not m.drift_corrected and m.noise_floor_pct() > 10
    m.correct_drift = True
    sigs, y = m.block_latencies()
    assert m.subset(networks=[]).block_latencies()[1] == pytest.approx(y)
    p = tmp_path / "ref.csv"
    m.to_csv(p)
    back = read_csv(p)
    assert back.has_reference and back.noise_floor_pct() < 1e-3
    back.blocks[0] = replace(back.blocks[0], ref_ms=float("nan"))  # one row without: raw values
    assert not back.drift_corrected and back.noise_floor_pct() > 10
    rows = _rows(p)
    rows[3]["ref_ms"] = "-1"
    _write(p, rows)
    with pytest.raises(MeasurementError, match="line 5, column ref_ms"):
        read_csv(p)


def test_repeats_combine_by_geometric_mean():
    """A probe timed 1 ms and 4 ms counts as 2 ms: the mean of log latency, not the arithmetic
    mean (2.5 ms); with three repeats at 1x, 2x and 8x, not the median (2x) either."""
    from dataclasses import replace

    from latency_models.measurements import combine_repeats

    assert combine_repeats([1.0, 4.0]) == pytest.approx(2.0)
    assert combine_repeats([3.0]) == pytest.approx(3.0)
    m = synthetic(n_networks=2, repeats=3, noise=0.0)
    scale = {0: 1.0, 1: 2.0, 2: 8.0}
    m.blocks = [replace(r, latency_ms=r.latency_ms * scale[r.repeat]) for r in m.blocks]
    m.networks = [replace(r, latency_ms=r.latency_ms * scale[r.repeat]) for r in m.networks]
    base = synthetic(n_networks=2, repeats=1, noise=0.0)
    assert m.block_latencies()[1] == pytest.approx(base.block_latencies()[1] * 16 ** (1 / 3))
    assert m.network_latencies()[1] == pytest.approx(base.network_latencies()[1] * 16 ** (1 / 3))
