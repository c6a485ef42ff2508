"""The Apple fit set as data: published Core ML latencies and the features of their networks.

Files in ``latency_models/ane/data/`` (versioned with the code; every number has its source):

* ``measurements.csv``: one row per published number (device, OS, compute units, precision,
  source, input shape, ``latency_ms`` and its low/high when published); ``include = 0`` rows
  stay out of the fit, with the ``reason``;
* ``sources.csv``: publisher, tool, OS and URL of each source;
* ``devices.csv`` / ``chips.csv``: device -> chip -> Neural Engine generation, fp16 peak,
  int8 claim and DRAM bandwidth (vendor claims and third-party figures, each with its note);
* ``recipes.json``: how each model is built and converted (:mod:`.recipes`);
* ``programs.csv`` / ``ops.csv``: the per-operator MIL features of every converted program,
  written by :mod:`.extract` (hashes of the recipe and of the features for provenance).

:func:`load_fitset` reads and cross-checks all of them (torch-free, numpy only).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from latency_models.features import OpClass
from search_space.errors import ConfigError

DATA_DIR = Path(__file__).resolve().parent / "data"
GENERATIONS = ("A14", "A15", "A16", "A17", "A18")  # Neural Engine generations, oldest first
ACT_BYTES = {"fp16": 2.0, "w8a16": 2.0, "w8a8": 1.0, "lut2": 2.0, "lut4": 2.0, "lut6": 2.0, "lut8": 2.0}


@dataclass(frozen=True)
class Row:
    row_id: str
    family: str
    model: str
    device: str
    chip: str
    os: str
    precision: str
    source: str
    latency_ms: float
    low_ms: float | None
    high_ms: float | None
    include: bool
    reason: str

    @property
    def program(self) -> str:
        return f"{self.model}@{self.precision}"


@dataclass(frozen=True)
class Chip:
    chip: str
    generation: str
    peak_tflops_fp16: float
    int8_tops_claim: float
    bandwidth_gbs: float
    facts: str


@dataclass
class Program:
    """Operators of one converted program as parallel arrays (identical ops merged: ``count``)."""

    name: str
    cls: np.ndarray
    flops: np.ndarray
    act: np.ndarray
    weights: np.ndarray
    weight_bits: np.ndarray
    count: np.ndarray
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def gflop(self) -> float:
        return float((self.flops * self.count).sum() / 1e9)

    @property
    def n_ops(self) -> int:
        return int(self.count.sum())


@dataclass
class FitSet:
    rows: list[Row]
    chips: dict[str, Chip]
    devices: dict[str, dict[str, str]]
    sources: dict[str, dict[str, str]]
    programs: dict[str, Program]

    @property
    def included(self) -> list[Row]:
        return [r for r in self.rows if r.include]

    @property
    def excluded(self) -> list[Row]:
        return [r for r in self.rows if not r.include]

    def families(self) -> list[str]:
        return sorted({r.family for r in self.included})

    def subset(self, keep) -> FitSet:
        """The same tables with only the included rows for which ``keep(row)`` is true."""
        return FitSet([r for r in self.rows if r.include and keep(r)], self.chips, self.devices,
                      self.sources, self.programs)


def _read(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in required if c not in (reader.fieldnames or ())]
            if missing:
                raise ConfigError(f"{path}: missing column {missing[0]!r}")
            rows = []
            for i, r in enumerate(reader, start=2):
                if None in r:  # DictReader's key for fields beyond the header
                    raise ConfigError(f"{path}:{i}: {len(r[None])} field(s) beyond the header")
                rows.append(r)
            return rows
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None


def _float(path: Path, line: int, col: str, text: str, optional: bool = False) -> float | None:
    if optional and not text.strip():
        return None
    try:
        v = float(text)
    except ValueError:
        raise ConfigError(f"{path}:{line}: column {col!r}: {text!r} is not a number") from None
    if not math.isfinite(v) or v <= 0:
        raise ConfigError(f"{path}:{line}: column {col!r}: {text!r} must be a positive number")
    return v


def load_chips(data: Path = DATA_DIR) -> dict[str, Chip]:
    p = data / "chips.csv"
    out = {}
    for i, r in enumerate(_read(p, ("chip", "ane_generation", "peak_tflops_fp16", "int8_tops_claim",
                                    "bandwidth_gbs", "facts")), start=2):
        if r["ane_generation"] not in GENERATIONS:
            raise ConfigError(f"{p}:{i}: ane_generation {r['ane_generation']!r} is not one of {GENERATIONS}")
        out[r["chip"]] = Chip(r["chip"], r["ane_generation"], _float(p, i, "peak_tflops_fp16", r["peak_tflops_fp16"]),
                              _float(p, i, "int8_tops_claim", r["int8_tops_claim"]),
                              _float(p, i, "bandwidth_gbs", r["bandwidth_gbs"]), r["facts"])
    return out


def load_programs(data: Path = DATA_DIR) -> dict[str, Program]:
    """Programs of ``programs.csv`` with their operators from ``ops.csv`` ({} before extraction)."""
    pp, po = data / "programs.csv", data / "ops.csv"
    if not pp.exists() or not po.exists():
        return {}
    metas = {r["program"]: r for r in _read(pp, ("program", "recipe_sha256", "ops_sha256"))}
    cols: dict[str, list[list[float]]] = {}
    names = {c.value: c for c in OpClass}
    for i, r in enumerate(_read(po, ("program", "cls", "op_type", "flops", "act", "weights",
                                     "weight_bits", "count")), start=2):
        if r["program"] not in metas:
            raise ConfigError(f"{po}:{i}: program {r['program']!r} is not in {pp.name}")
        try:
            vals = [float(r[c]) for c in ("cls", "flops", "act", "weights", "weight_bits", "count")]
        except ValueError:
            raise ConfigError(f"{po}:{i}: a feature column is not a number") from None
        if int(vals[0]) not in names or min(vals[1:]) < 0:
            raise ConfigError(f"{po}:{i}: bad operator class or negative feature")
        cols.setdefault(r["program"], []).append(vals)
    out = {}
    for name, meta in metas.items():
        a = np.asarray(cols.get(name, []), dtype=float).reshape(-1, 6)
        out[name] = Program(name, a[:, 0].astype(int), a[:, 1], a[:, 2], a[:, 3], a[:, 4], a[:, 5], dict(meta))
    return out


def load_fitset(data: Path = DATA_DIR, need_features: bool = True) -> FitSet:
    """All tables of ``data``, cross-checked (unknown device/chip/source, duplicate row ids,
    an included row whose program has no features)."""
    data = Path(data)
    chips = load_chips(data)
    devices = {r["device"]: r for r in _read(data / "devices.csv", ("device", "name", "chip", "profile"))}
    for d, r in devices.items():
        if r["chip"] not in chips:
            raise ConfigError(f"{data / 'devices.csv'}: device {d!r}: chip {r['chip']!r} is not in chips.csv")
    sources = {r["source"]: r for r in _read(data / "sources.csv", ("source", "publisher", "tool", "url"))}
    programs = load_programs(data)
    p = data / "measurements.csv"
    rows, seen = [], set()
    req = ("row_id", "family", "model", "device", "os", "compute_units", "precision", "source",
           "input_shape", "latency_ms", "low_ms", "high_ms", "include", "reason")
    for i, r in enumerate(_read(p, req), start=2):
        if r["row_id"] in seen:
            raise ConfigError(f"{p}:{i}: duplicate row_id {r['row_id']!r}")
        seen.add(r["row_id"])
        if r["device"] not in devices:
            raise ConfigError(f"{p}:{i}: device {r['device']!r} is not in devices.csv")
        if r["source"] not in sources:
            raise ConfigError(f"{p}:{i}: source {r['source']!r} is not in sources.csv")
        if r["precision"] not in ACT_BYTES:
            raise ConfigError(f"{p}:{i}: precision {r['precision']!r} is unknown ({', '.join(ACT_BYTES)})")
        if r["include"] not in ("0", "1"):
            raise ConfigError(f"{p}:{i}: column 'include' must be 0 or 1")
        inc = r["include"] == "1"
        if not inc and not r["reason"].strip():
            raise ConfigError(f"{p}:{i}: an excluded row needs its 'reason'")
        row = Row(r["row_id"], r["family"], r["model"], r["device"], devices[r["device"]]["chip"], r["os"],
                  r["precision"], r["source"], _float(p, i, "latency_ms", r["latency_ms"]),
                  _float(p, i, "low_ms", r["low_ms"], True), _float(p, i, "high_ms", r["high_ms"], True),
                  inc, r["reason"].strip())
        if inc and need_features and row.program not in programs:
            raise ConfigError(f"{p}:{i}: no features for program {row.program!r} in programs.csv "
                              f"(run `make fitset-features`)")
        rows.append(row)
    return FitSet(rows, chips, devices, sources, programs)
