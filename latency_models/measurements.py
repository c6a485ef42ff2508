"""The measurement CSV: one row per timed block (``scope=block``) or whole network (``scope=network``).

Columns (all written, in this order; see ``docs/latency.md``):

============== ==================================================================================
column         meaning
============== ==================================================================================
schema_version ``1``
device         what was measured on, e.g. ``iPhone15,3`` / ``Apple M2`` / ``torch-cpu:<cpu>:t2``.
               One fit uses ONE device: mixing devices in a file is an error.
backend        ``torch-cpu`` or ``coreml``
compute_units  ``cpu`` (torch) or the Core ML compute units (``cpu_and_ne``, ``all`` …)
precision      ``fp32`` / ``fp16`` / ``w6a16`` …
os, chip       OS version and chip name (free text)
versions       tool versions, ``torch=2.13.0;numpy=2.3.5`` style
threads        CPU threads used (0 = not applicable)
scope          ``block`` or ``network``
probe_id       stable id of the block signature (``block``) or the arch id (``network``)
arch_id        network rows: the :attr:`ArchConfig.arch_id`; empty for blocks
arch_json      network rows: canonical ``ArchConfig`` JSON
backbone_json  network rows: ``BackboneSpec`` JSON, empty when ``arch.backbone`` is a preset
op … linear_projection   block rows: every :class:`BlockSignature` field (``kind`` is the
               temporal kind); empty for network rows
latency_ms     median latency of one call (ms, > 0)
p10_ms, p90_ms 10th/90th percentile over the timed runs
runs, warmup   number of timed and warm-up calls
repeat         0, 1, …: independent repetitions of the same probe (noise floor); a
               (scope, probe, repeat) triple may appear once
load_ms        Core ML: first load of the compiled model (includes device specialization);
               0 for torch
compile_ms     Core ML: ``.mlpackage`` -> ``.mlmodelc`` compile time (informational)
ref_ms         optional drift reference (torch-cpu, on by default): every timed call is
               followed by a fixed reference op, and ref_ms = latency_ms / median(call /
               reference) is the reference latency those pairs imply. When every row has it,
               fits use ``latency_ms * median(ref_ms) / ref_ms`` (the median ratio at the file's
               typical machine speed; ``fit --no-drift-correct`` to use raw values);
               ``latency_ms`` stays the raw value. Empty for Core ML rows
timestamp      ISO-8601 UTC
============== ==================================================================================
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from common.fsio import atomic_write
from common.limits import MAX_CSV_BYTES, MEASUREMENT_RANGES, SIGNATURE_RANGES
from common.loaders import parse_json
from latency_models.errors import MeasurementError
from search_space.arch import ArchConfig
from search_space.backbone import BackboneSpec
from search_space.errors import ConfigError
from search_space.geometry import BlockSignature
from search_space.presets import get_backbone

SCHEMA_VERSION = 1


SIG_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(BlockSignature))
META_COLUMNS = ("schema_version", "device", "backend", "compute_units", "precision", "os", "chip",
                "versions", "threads")
ROW_COLUMNS = ("scope", "probe_id", "arch_id", "arch_json", "backbone_json")
VALUE_COLUMNS = ("latency_ms", "p10_ms", "p90_ms", "runs", "warmup", "repeat", "load_ms",
                 "compile_ms", "ref_ms", "timestamp")
COLUMNS: tuple[str, ...] = META_COLUMNS + ROW_COLUMNS + SIG_COLUMNS + VALUE_COLUMNS
REQUIRED_COLUMNS = ("device", "backend", "scope", "latency_ms") + SIG_COLUMNS


def probe_id(sig: BlockSignature) -> str:
    """Stable 12-hex id of a block signature (sha256 of its canonical JSON)."""
    return hashlib.sha256(json.dumps(sig.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class DeviceInfo:
    """Where and how a set of measurements was taken."""

    device: str
    backend: str
    compute_units: str = ""
    precision: str = ""
    os: str = ""
    chip: str = ""
    versions: str = ""
    threads: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class BlockRow:
    sig: BlockSignature
    latency_ms: float
    p10_ms: float = math.nan
    p90_ms: float = math.nan
    runs: int = 0
    warmup: int = 0
    repeat: int = 0
    load_ms: float = 0.0
    timestamp: str = ""
    ref_ms: float = math.nan


@dataclass(frozen=True)
class NetworkRow:
    arch: ArchConfig
    backbone: BackboneSpec
    latency_ms: float
    p10_ms: float = math.nan
    p90_ms: float = math.nan
    runs: int = 0
    warmup: int = 0
    repeat: int = 0
    load_ms: float = 0.0
    timestamp: str = ""
    backbone_is_preset: bool = True
    ref_ms: float = math.nan


def combine_repeats(values_ms) -> float:
    """One latency from a probe's repeats: their geometric mean (the mean of log latency, the
    scale predictors fit on). Each repeat is already the median of many calls; across repeats
    the noise is a per-window speed factor, for which the mean of the logs is the efficient
    estimator: on the committed benchmark data it predicted held-out probes better than the
    median of the repeats (``docs/latency.md``)."""
    return float(np.exp(np.mean(np.log(np.asarray(values_ms, float)))))


@dataclass
class Measurements:
    """Timed blocks and networks of ONE device (see the module docstring for the CSV)."""

    info: DeviceInfo
    blocks: list[BlockRow] = field(default_factory=list)
    networks: list[NetworkRow] = field(default_factory=list)
    source: str = ""
    correct_drift: bool = True  # divide out ref_ms drift (when every row has ref_ms)

    # ---- aggregation -------------------------------------------------------------------------
    @property
    def has_reference(self) -> bool:
        """True when every row carries a reference timing (``ref_ms``)."""
        rows = [*self.blocks, *self.networks]
        return bool(rows) and all(r.ref_ms > 0 for r in rows)  # NaN compares False

    @property
    def drift_corrected(self) -> bool:
        """Whether fits see drift-corrected values (``correct_drift`` and every row has ``ref_ms``)."""
        return self.correct_drift and self.has_reference

    def values_ms(self, rows: Sequence[BlockRow | NetworkRow], corrected: bool | None = None) -> list[float]:
        """Latencies used for fitting: drift-corrected when asked (default: :attr:`drift_corrected`)."""
        if not (self.drift_corrected if corrected is None else corrected and self.has_reference):
            return [r.latency_ms for r in rows]
        ref = self._ref_median()
        return [r.latency_ms * ref / r.ref_ms for r in rows]

    def _ref_median(self) -> float:
        return float(np.median([r.ref_ms for r in [*self.blocks, *self.networks]]))

    def block_latencies(self) -> tuple[list[BlockSignature], np.ndarray]:
        """Distinct signatures (first-seen order) and one latency each: the geometric mean of
        its repeats (see :func:`combine_repeats`)."""
        groups: dict[BlockSignature, list[float]] = {}
        for r, v in zip(self.blocks, self.values_ms(self.blocks)):
            groups.setdefault(r.sig, []).append(v)
        sigs = list(groups)
        return sigs, np.array([combine_repeats(groups[s]) for s in sigs])

    def network_latencies(self) -> tuple[list[NetworkRow], np.ndarray]:
        """One representative row per arch id and the geometric mean of its repeats."""
        groups: dict[str, list[tuple[NetworkRow, float]]] = {}
        for r, v in zip(self.networks, self.values_ms(self.networks)):
            groups.setdefault(r.arch.arch_id, []).append((r, v))
        reps = [g[0][0] for g in groups.values()]
        return reps, np.array([combine_repeats([v for _, v in g]) for g in groups.values()])

    def noise_floor_pct(self, corrected: bool | None = None) -> float | None:
        """Measurement noise: median, over probes measured >= 2 times, of the coefficient of
        variation of their repeats (sample std / mean, in %) of the values fits use (or, with
        ``corrected``, of the drift-corrected/raw ones). ``None`` without repeats."""
        groups: dict[Any, list[float]] = {}
        for r, v in zip(self.blocks, self.values_ms(self.blocks, corrected)):
            groups.setdefault(("b", r.sig), []).append(v)
        for r, v in zip(self.networks, self.values_ms(self.networks, corrected)):
            groups.setdefault(("n", r.arch.arch_id), []).append(v)
        cv = [float(np.std(v, ddof=1) / np.mean(v)) for v in groups.values() if len(v) >= 2]
        return 100.0 * float(np.median(cv)) if cv else None

    def merged(self, other: Measurements) -> Measurements:
        if other.info.device != self.info.device:
            raise MeasurementError(f"{other.source or 'measurements'}: device {other.info.device!r} "
                                   f"differs from {self.info.device!r} ({self.source}); fit one "
                                   f"device at a time")
        return Measurements(self.info, self.blocks + other.blocks, self.networks + other.networks,
                            self.source or other.source, self.correct_drift)

    def subset(self, blocks: Iterable[int] | None = None,
               networks: Iterable[int] | None = None) -> Measurements:
        """A copy keeping the block/network rows at the given indices (all when ``None``)."""
        b = self.blocks if blocks is None else [self.blocks[i] for i in blocks]
        n = self.networks if networks is None else [self.networks[i] for i in networks]
        return Measurements(self.info, list(b), list(n), self.source, self.correct_drift)

    # ---- CSV -----------------------------------------------------------------------------------
    def to_rows(self) -> list[dict[str, Any]]:
        base = {"schema_version": SCHEMA_VERSION, **self.info.to_dict()}
        rows = []
        for r in self.blocks:
            d = {**base, "scope": "block", "probe_id": probe_id(r.sig), "arch_id": "",
                 "arch_json": "", "backbone_json": "", **r.sig.to_dict()}
            rows.append({**d, **_values(r)})
        empty_sig = dict.fromkeys(SIG_COLUMNS, "")
        for r in self.networks:
            bb = "" if r.backbone_is_preset else json.dumps(r.backbone.to_dict(), sort_keys=True)
            d = {**base, "scope": "network", "probe_id": r.arch.arch_id, "arch_id": r.arch.arch_id,
                 "arch_json": r.arch.to_json(), "backbone_json": bb, **empty_sig}
            rows.append({**d, **_values(r)})
        return rows

    def to_csv(self, path: str | Path) -> None:
        """Write atomically (temp file + rename)."""
        write_rows(path, self.to_rows())


def _values(r: BlockRow | NetworkRow) -> dict[str, Any]:
    return {"latency_ms": f"{r.latency_ms:.6g}", "p10_ms": _fmt(r.p10_ms), "p90_ms": _fmt(r.p90_ms),
            "runs": r.runs, "warmup": r.warmup, "repeat": r.repeat, "load_ms": _fmt(r.load_ms),
            "ref_ms": _fmt(r.ref_ms), "timestamp": r.timestamp}


def _fmt(x: float) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.6g}"


def write_rows(path: str | Path, rows: Sequence[Mapping[str, Any]], append: bool = False) -> None:
    """Write measurement rows (dicts keyed by :data:`COLUMNS`) atomically.

    ``append`` keeps the rows already in ``path`` (the file is rewritten, never half-written).
    """
    path = Path(path)
    old: list[dict[str, str]] = []
    if append and path.exists():
        with open(path, newline="", encoding="utf-8") as f:
            old = list(csv.DictReader(f))

    def writer(f) -> None:
        w = csv.DictWriter(f, fieldnames=list(COLUMNS), extrasaction="ignore")
        w.writeheader()
        for r in list(old) + list(rows):
            w.writerow({c: r.get(c, "") for c in COLUMNS})

    atomic_write(path, writer)


def _num(raw: dict[str, str], col: str, where: str, *, positive: bool = False,
         default: float | None = None) -> float:
    v = (raw.get(col) or "").strip()
    if v == "":
        if default is not None:
            return default
        raise MeasurementError(f"{where}, column {col}: empty value")
    try:
        x = float(v)
    except ValueError:
        raise MeasurementError(f"{where}, column {col}: not a number ({v!r})") from None
    if math.isnan(x) or math.isinf(x):
        raise MeasurementError(f"{where}, column {col}: {v} is not a finite number")
    if positive and x <= 0:
        raise MeasurementError(f"{where}, column {col}: must be > 0, got {v}")
    lo, hi = MEASUREMENT_RANGES.get(col, (-math.inf, math.inf))
    if not lo <= x <= hi:
        raise MeasurementError(f"{where}, column {col}: {v} is outside {lo:g}..{hi:g} "
                               f"(temponas's limit, see docs/limits.md)")
    return x


def _read_dicts(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV as dicts, after checking it is readable UTF-8 with the required columns
    (at most :data:`~common.limits.MAX_CSV_BYTES`; no row longer than the header)."""
    try:
        size = path.stat().st_size
        f = open(path, newline="", encoding="utf-8")
    except OSError as e:
        raise MeasurementError(f"{path}: cannot read ({e.strerror})") from None
    if size > MAX_CSV_BYTES:
        f.close()
        raise MeasurementError(f"{path}: {size:,} bytes, more than the {MAX_CSV_BYTES:,} a "
                               f"measurement CSV may have (see docs/limits.md)")
    with f:
        reader = csv.DictReader(f)
        try:
            header = reader.fieldnames or []
            missing = [c for c in REQUIRED_COLUMNS if c not in header]
            if missing:
                raise MeasurementError(f"{path}: missing column {missing[0]!r} (a measurement CSV "
                                       f"needs {', '.join(REQUIRED_COLUMNS)})")
            rows = []
            for raw in reader:
                if None in raw:  # DictReader's key for fields beyond the header
                    raise MeasurementError(
                        f"{path}: line {len(rows) + 2}: {len(raw[None])} field(s) beyond the "
                        f"header's {len(header)} columns (a stray comma or a shifted row?)")
                rows.append(raw)
        except UnicodeDecodeError:
            raise MeasurementError(f"{path}: line {reader.line_num + 1}: not UTF-8 text (save the "
                                   f"CSV as UTF-8)") from None
        except csv.Error as e:
            raise MeasurementError(f"{path}: line {reader.line_num}: malformed CSV ({e})") from None
    if not rows:
        raise MeasurementError(f"{path}: no measurement rows")
    return rows


def _text(raw: Mapping[str, str], col: str) -> str:
    return (raw.get(col) or "").strip()


def _device(raw: Mapping[str, str], where: str) -> DeviceInfo:
    dev = DeviceInfo(device=_text(raw, "device"), backend=_text(raw, "backend"),
                     compute_units=_text(raw, "compute_units"), precision=_text(raw, "precision"),
                     os=_text(raw, "os"), chip=_text(raw, "chip"), versions=_text(raw, "versions"),
                     threads=int(_num(raw, "threads", where, default=0)))
    if not dev.device:
        raise MeasurementError(f"{where}, column device: empty value")
    if not dev.backend:
        raise MeasurementError(f"{where}, column backend: empty value")
    return dev


def _timing(raw: Mapping[str, str], where: str) -> dict[str, Any]:
    """The value columns of a row (``latency_ms`` > 0 required, ``ref_ms`` > 0 when given)."""
    vals = dict(latency_ms=_num(raw, "latency_ms", where, positive=True),
                p10_ms=_num(raw, "p10_ms", where, default=math.nan),
                p90_ms=_num(raw, "p90_ms", where, default=math.nan),
                runs=int(_num(raw, "runs", where, default=0)),
                warmup=int(_num(raw, "warmup", where, default=0)),
                repeat=int(_num(raw, "repeat", where, default=0)),
                load_ms=_num(raw, "load_ms", where, default=0.0),
                timestamp=_text(raw, "timestamp"),
                ref_ms=_num(raw, "ref_ms", where, default=math.nan))
    if not (math.isnan(vals["ref_ms"]) or vals["ref_ms"] > 0):
        raise MeasurementError(f"{where}, column ref_ms: must be > 0 when given, got {vals['ref_ms']}")
    return vals


def _block_row(raw: Mapping[str, str], where: str, vals: dict[str, Any]) -> BlockRow:
    try:
        sig = BlockSignature.from_dict({c: raw.get(c, "") for c in SIG_COLUMNS}, where)
    except ConfigError as e:
        raise MeasurementError(str(e).replace(f"{where}.", f"{where}, column ", 1)) from None
    for col, (lo, hi) in SIGNATURE_RANGES.items():
        v = getattr(sig, col)
        if not lo <= v <= hi:
            raise MeasurementError(f"{where}, column {col}: {v} is outside {lo}..{hi} "
                                   f"(temponas's limit, see docs/limits.md)")
    return BlockRow(sig, **vals)


def _network_row(raw: Mapping[str, str], where: str, vals: dict[str, Any]) -> NetworkRow:
    arch_json = _text(raw, "arch_json")
    if not arch_json:
        raise MeasurementError(f"{where}, column arch_json: a network row needs the arch JSON")
    try:
        arch = ArchConfig.from_json(arch_json, where=f"{where}, column arch_json")
    except ConfigError as e:
        raise MeasurementError(str(e)) from None
    aid = _text(raw, "arch_id")
    if aid and aid != arch.arch_id:
        raise MeasurementError(f"{where}, column arch_id: {aid!r} does not match arch_json "
                               f"({arch.arch_id})")
    bb_json = _text(raw, "backbone_json")
    try:
        if bb_json:
            backbone = BackboneSpec.from_dict(parse_json(bb_json, "value"), f"{where}, column backbone_json")
        else:
            backbone = get_backbone(arch.backbone)
    except ConfigError as e:
        raise MeasurementError(f"{where}, column backbone_json: {e}") from None
    return NetworkRow(arch, backbone, backbone_is_preset=not bb_json, **vals)


def read_csv(path: str | Path) -> Measurements:
    """Read and validate a measurement CSV (errors name file, line and column)."""
    path = Path(path)
    info: DeviceInfo | None = None
    first_line = 0
    blocks: list[BlockRow] = []
    nets: list[NetworkRow] = []
    seen: dict[tuple[str, str, int], int] = {}
    for i, raw in enumerate(_read_dicts(path)):
        line = i + 2
        where = f"{path}: line {line}"
        dev = _device(raw, where)
        if info is None:
            info, first_line = dev, line
        for col in ("device", "backend", "compute_units", "precision"):
            if getattr(dev, col) != getattr(info, col):
                raise MeasurementError(
                    f"{where}, column {col}: {getattr(dev, col)!r} differs from "
                    f"{getattr(info, col)!r} on line {first_line}; one file holds one device "
                    f"(split it per {col})")
        vals = _timing(raw, where)
        scope = _text(raw, "scope")
        if scope == "block":
            block = _block_row(raw, where, vals)
            blocks.append(block)
            key = ("block", probe_id(block.sig), block.repeat)
        elif scope == "network":
            net = _network_row(raw, where, vals)
            nets.append(net)
            key = ("network", net.arch.arch_id, net.repeat)
        else:
            raise MeasurementError(f"{where}, column scope: expected 'block' or 'network', got {scope!r}")
        if key in seen:
            what = "signature" if key[0] == "block" else "arch"
            raise MeasurementError(f"{where}, column {'probe_id' if key[0] == 'block' else 'arch_id'}: "
                                   f"duplicate {what} {key[1]} (repeat {key[2]}) already on line "
                                   f"{seen[key]}; give repeats distinct 'repeat' values")
        seen[key] = line
    assert info is not None
    return Measurements(info, blocks, nets, str(path))


def read_many(paths: Sequence[str | Path]) -> Measurements:
    """Read several CSVs of the same device and merge them."""
    if not paths:
        raise MeasurementError("no measurement files given")
    m = read_csv(paths[0])
    for p in paths[1:]:
        m = m.merged(read_csv(p))
    return m
