"""A Neural Engine cost model fitted across network families (numpy/scipy, torch-free).

One converted program on one chip takes

    T = floor[source] + sum_ops count * ( (compute^p + memory^p)^(1/p) + op_ms[gen] )
    compute = GFLOP / (peak_tflops[chip] * eff[gen, class] * int8[gen]^(int8 activations))
    memory  = (act_elems * act_bytes * act[class] + weight_elems * bits/8 * wt) / (bandwidth[chip] * mem[gen])

and the published number is ``T * exp(src[source] + fam[family] + chip[chip])``. ``gen`` is the
Neural Engine generation (A14 = M1, A15 = M2, A16, A17 = M3, A18): per generation and operator
class efficiencies are a shared value plus a random walk over generations, so a generation
without rows (A18) borrows the estimate of its neighbour, with the walk's extra variance.
``src`` (tool/OS of a source) and ``fam`` (what the network family does that the features do
not say) are random effects whose spreads are estimated (empirical Bayes, a few EM steps).

The fit is MAP (``scipy.optimize.least_squares`` on log residuals plus Gaussian prior rows);
uncertainty is the Laplace approximation, so a row of an unseen family, source or generation
gets the prior's spread for those terms: intervals widen exactly where the data say nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from latency_models.ane.fitset import ACT_BYTES, GENERATIONS, FitSet, Row
from latency_models.features import COMPUTE_CLASSES, OpClass

P_ROOFLINE = 4.0
NEW = "__new__"  # the family/source of a program no source has measured (a temponas network)
_NCLS = len(OpClass)
_COMPUTE = [int(c) for c in COMPUTE_CLASSES]


@dataclass(frozen=True)
class Hyper:
    """Prior means (log) and spreads; chosen from device facts before looking at the fit."""

    eff_mean: float = math.log(0.3)
    eff_sd: float = 1.0
    conv3d_tie_sd: float = 0.3       # conv3d efficiency vs conv (no fit-set network has one)
    walk_sd: float = 0.3             # generation-to-generation change of an efficiency
    mem_mean: float = math.log(0.6)
    mem_sd: float = 1.0
    act_sd: float = 0.7
    op_mean: float = math.log(0.003)
    op_sd: float = 1.5
    floor_mean: float = math.log(0.1)
    floor_sd: float = 1.5
    floor_source_sd: float = 1.0
    int8_sd: float = 0.5
    chip_sd: float = 0.15
    tau_start: float = 0.3
    sigma_start: float = 0.15
    em_steps: int = 4


DEFAULT_HYPER = Hyper()


class Params:
    """Named blocks of the parameter vector, their prior rows and difference (walk) rows."""

    def __init__(self, sources: Sequence[str], families: Sequence[str], chips, h: Hyper):
        self.names: list[str] = []
        self.mean: list[float] = []
        self.sd: list[float] = []
        self.diffs: list[tuple[int, int, float]] = []

        def add(name: str, mean: float, sd: float | None) -> int:
            self.names.append(name)
            self.mean.append(mean)
            self.sd.append(math.inf if sd is None else sd)
            return len(self.names) - 1

        self.eff = {c: add(f"eff:{OpClass(c).name.lower()}", h.eff_mean, h.eff_sd) for c in _COMPUTE}
        self.diffs.append((self.eff[int(OpClass.CONV3D)], self.eff[int(OpClass.CONV)], h.conv3d_tie_sd))
        self.sd[self.eff[int(OpClass.CONV3D)]] = math.inf
        self.effg = {}
        for c in _COMPUTE:
            prev = None
            for g in GENERATIONS:
                i = add(f"effg:{g}:{OpClass(c).name.lower()}", 0.0, h.walk_sd if prev is None else None)
                if prev is not None:
                    self.diffs.append((i, prev, h.walk_sd))
                self.effg[(g, c)] = prev = i
        self.mem = add("mem", h.mem_mean, h.mem_sd)
        self.memg, self.opg = {}, {}
        for blk, store in (("memg", self.memg), ("opg", self.opg)):
            prev = None
            for g in GENERATIONS:
                i = add(f"{blk}:{g}", 0.0, h.walk_sd if prev is None else None)
                if prev is not None:
                    self.diffs.append((i, prev, h.walk_sd))
                store[g] = prev = i
        self.act = {c: add(f"act:{OpClass(c).name.lower()}", 0.0, h.act_sd) for c in range(_NCLS)}
        self.wt = add("wt", 0.0, h.act_sd)
        self.op = add("op", h.op_mean, h.op_sd)
        self.floor = add("floor", h.floor_mean, h.floor_sd)
        self.floors = {s: add(f"floor:{s}", 0.0, h.floor_source_sd) for s in sources}
        self.int8 = {g: add(f"int8:{g}", 0.0, h.int8_sd) for g in GENERATIONS}
        self.src = {s: add(f"src:{s}", 0.0, h.tau_start) for s in sources}
        self.fam = {f: add(f"fam:{f}", 0.0, h.tau_start) for f in families}
        self.chip = {c: add(f"chip:{c}", 0.0, h.chip_sd) for c in chips}
        self.mean_a = np.array(self.mean)
        self.sd_a = np.array(self.sd)

    def __len__(self) -> int:
        return len(self.names)

    def prior_jacobian(self) -> np.ndarray:
        fin = np.flatnonzero(np.isfinite(self.sd_a))
        j = np.zeros((len(fin) + len(self.diffs), len(self)))
        j[np.arange(len(fin)), fin] = 1.0 / self.sd_a[fin]
        for k, (a, b, s) in enumerate(self.diffs):
            j[len(fin) + k, a] += 1.0 / s
            j[len(fin) + k, b] -= 1.0 / s
        return j

    def prior_residuals(self, th: np.ndarray) -> np.ndarray:
        fin = np.isfinite(self.sd_a)
        r = [(th[fin] - self.mean_a[fin]) / self.sd_a[fin]]
        r.append(np.array([(th[i] - th[j]) / s for i, j, s in self.diffs]))
        return np.concatenate(r)


class _Units:
    """Every (program, chip, activation precision) the rows need, with their ops concatenated."""

    def __init__(self, fs: FitSet, rows: Sequence[Row], par: Params):
        keys: dict[tuple[str, str, str], int] = {}
        self.row_unit = np.array([keys.setdefault((r.program, r.chip, r.precision), len(keys)) for r in rows], int)
        parts = {k: [] for k in ("u", "cls", "flops", "actb", "wb", "count", "g", "peak", "bw", "a8")}
        for (prog, chip, prec), u in keys.items():
            p, c = fs.programs[prog], fs.chips[chip]
            n = len(p.cls)
            parts["u"].append(np.full(n, u))
            parts["cls"].append(p.cls)
            parts["flops"].append(p.flops / 1e9)
            parts["actb"].append(p.act * ACT_BYTES[prec] / 1e6)
            parts["wb"].append(p.weights * p.weight_bits / 8 / 1e6)
            parts["count"].append(p.count)
            parts["g"].append(np.full(n, GENERATIONS.index(c.generation)))
            parts["peak"].append(np.full(n, c.peak_tflops_fp16))
            parts["bw"].append(np.full(n, c.bandwidth_gbs))
            parts["a8"].append(np.full(n, prec == "w8a8"))
        for k, v in parts.items():
            setattr(self, k, np.concatenate(v) if v else np.zeros(0))
        self.n_units = len(keys)
        self.u = self.u.astype(int)
        self.cls = self.cls.astype(int)
        self.g = self.g.astype(int)
        self.a8 = self.a8.astype(bool)
        self.is_compute = np.isin(self.cls, _COMPUTE)
        self.par = par
        self.src = np.array([par.src[r.source] for r in rows])
        self.floors = np.array([par.floors[r.source] for r in rows])
        self.fam = np.array([par.fam.get(r.family, -1) for r in rows])
        self.chip = np.array([par.chip[r.chip] for r in rows])

    def _op_index(self) -> None:
        """Per op, the parameter each of its terms depends on (-1: none)."""
        par = self.par
        gens = [GENERATIONS[g] for g in self.g]
        self.i_eff = np.array([par.eff.get(c, -1) for c in self.cls])
        self.i_effg = np.array([par.effg.get((g, c), -1) for g, c in zip(gens, self.cls)])
        self.i_int8 = np.where(self.a8, [par.int8[g] for g in gens], -1) if len(gens) else np.zeros(0, int)
        self.i_memg = np.array([par.memg[g] for g in gens], int)
        self.i_opg = np.array([par.opg[g] for g in gens], int)
        self.i_act = np.array([par.act[c] for c in self.cls], int)

    def log_pred(self, th: np.ndarray, p: float = P_ROOFLINE, jac: bool = False, units_only: bool = False):
        """Log predicted ms of every row (and, with ``jac``, its derivatives by ``th``);
        ``units_only``: the summed operator ms of every unit (no floor, no offsets)."""
        par = self.par
        if not hasattr(self, "i_eff"):
            self._op_index()
        e = np.where(self.is_compute, th[self.i_eff] + th[self.i_effg], 0.0)
        e = e + np.where(self.a8, th[np.maximum(self.i_int8, 0)], 0.0)
        comp = np.where(self.is_compute, self.flops / self.peak * np.exp(-e), 0.0)
        memscale = np.exp(-(th[par.mem] + th[self.i_memg])) / self.bw
        m_act = self.actb * np.exp(th[self.i_act]) * memscale
        m_w = self.wb * math.exp(th[par.wt]) * memscale
        mem = m_act + m_w
        hi = np.maximum(comp, mem)
        safe = np.where(hi > 0, hi, 1.0)
        s = np.where(hi > 0, safe * ((comp / safe) ** p + (mem / safe) ** p) ** (1.0 / p), 0.0)
        o = np.exp(th[par.op] + th[self.i_opg])
        tu = np.bincount(self.u, self.count * (s + o), self.n_units)
        if units_only:
            return tu
        floor = np.exp(th[par.floor] + th[self.floors])
        fam = np.where(self.fam >= 0, th[np.maximum(self.fam, 0)], 0.0)
        total = tu[self.row_unit] + floor
        out = np.log(total) + th[self.src] + fam + th[self.chip]
        if not jac:
            return out
        s_safe = np.where(s > 0, s, 1.0)
        dc = np.where(s > 0, (comp / s_safe) ** (p - 1), 0.0) * self.count * -comp
        dm = np.where(s > 0, (mem / s_safe) ** (p - 1), 0.0) * self.count
        ju = np.zeros((self.n_units, len(th)))
        for idx, val in ((self.i_eff, dc), (self.i_effg, dc), (self.i_int8, dc),
                         (np.full_like(self.u, par.mem), -dm * mem), (self.i_memg, -dm * mem),
                         (self.i_act, dm * m_act), (np.full_like(self.u, par.wt), dm * m_w),
                         (np.full_like(self.u, par.op), self.count * o), (self.i_opg, self.count * o)):
            ok = idx >= 0
            np.add.at(ju, (self.u[ok], idx[ok]), val[ok])
        j = ju[self.row_unit] / total[:, None]
        rows = np.arange(len(total))
        np.add.at(j, (rows, np.full(len(rows), par.floor)), floor / total)
        np.add.at(j, (rows, self.floors), floor / total)
        np.add.at(j, (rows, self.src), 1.0)
        np.add.at(j, (rows, self.chip), 1.0)
        okf = self.fam >= 0
        np.add.at(j, (rows[okf], self.fam[okf]), 1.0)
        return out, j


def new_row(program: str, chip: str) -> Row:
    """A row of ``program`` (``model@precision``) on ``chip`` from an unseen family and source."""
    model, prec = program.rsplit("@", 1)
    return Row("_", NEW, model, "", chip, "", prec, NEW, 1.0, None, None, True, "")


def _meas_sd(rows: Sequence[Row]) -> np.ndarray:
    """Spread of a published number itself (low-high range read as a 90 % band), else 0."""
    return np.array([math.log(r.high_ms / r.low_ms) / 3.29 if r.low_ms and r.high_ms else 0.0 for r in rows])


@dataclass
class CostModel:
    """A fitted model: parameters, their Laplace covariance, residual spread and the fit set."""

    fs: FitSet
    par: Params
    theta: np.ndarray
    cov: np.ndarray
    sigma: float
    taus: dict[str, float]
    rows: list[Row] = field(default_factory=list)

    def param(self, name: str) -> float:
        return float(self.theta[self.par.names.index(name)])

    def ops_ms(self, programs: Sequence[str], chip: str) -> np.ndarray:
        """Summed operator ms of each program on ``chip`` (no floor, no source/family/chip
        offsets): the cost of the program's work inside a larger program."""
        rows = [new_row(p, chip) for p in programs]
        units = _Units(self.fs, rows, self.par)
        return units.log_pred(self.theta, units_only=True)[units.row_unit]

    def predict(self, rows: Sequence[Row], z: float = 1.645) -> dict[str, np.ndarray]:
        """``mean_ms`` (median of the predictive distribution), ``low_ms``/``high_ms`` (the
        ``z``-sigma band: 90 % by default) and ``log_sd`` for ``rows`` (any devices/families)."""
        if not rows:
            z = np.zeros(0)
            return {"mean_ms": z, "low_ms": z, "high_ms": z, "log_sd": z}
        units = _Units(self.fs, rows, self.par)
        mu, grad = units.log_pred(self.theta, jac=True)
        var = np.einsum("ij,jk,ik->i", grad, self.cov, grad) + self.sigma ** 2 + _meas_sd(rows) ** 2
        sd = np.sqrt(var)
        return {"mean_ms": np.exp(mu), "low_ms": np.exp(mu - z * sd), "high_ms": np.exp(mu + z * sd),
                "log_sd": sd}


def _solve(units: _Units, par: Params, y: np.ndarray, sd_rows: np.ndarray, th0: np.ndarray):
    from scipy.optimize import least_squares

    pj = par.prior_jacobian()

    def res(th: np.ndarray) -> np.ndarray:
        return np.concatenate([(units.log_pred(th) - y) / sd_rows, par.prior_residuals(th)])

    def jac(th: np.ndarray) -> np.ndarray:
        return np.vstack([units.log_pred(th, jac=True)[1] / sd_rows[:, None], pj])

    sol = least_squares(res, th0, jac=jac, method="trf", x_scale=1.0, max_nfev=400)
    return sol.x, sol.jac, len(y)


def fit(fs: FitSet, rows: Sequence[Row] | None = None, h: Hyper = DEFAULT_HYPER) -> CostModel:
    """MAP fit on ``rows`` (default: every included row), with EM updates of the family and
    source spreads and of the residual spread ``sigma``. BLAS runs on one thread: the matrices
    are small (rows x ~100 parameters), and more threads only contend on a shared machine."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        return _fit(fs, rows, h)


def _fit(fs: FitSet, rows: Sequence[Row] | None, h: Hyper) -> CostModel:
    rows = list(fs.included if rows is None else rows)
    sources = sorted(fs.sources) + [NEW]
    families = sorted({r.family for r in fs.rows}) + [NEW]
    par = Params(sources, families, sorted(fs.chips), h)
    units = _Units(fs, rows, par)
    y = np.log([r.latency_ms for r in rows])
    meas = _meas_sd(rows)
    th = par.mean_a.copy()
    sigma, tau_f, tau_s = h.sigma_start, h.tau_start, h.tau_start
    seen_f = sorted({r.family for r in rows})
    seen_s = sorted({r.source for r in rows})
    for _ in range(max(1, h.em_steps)):
        for f in families:
            par.sd_a[par.fam[f]] = tau_f
        for s in sources:
            par.sd_a[par.src[s]] = tau_s
        sd_rows = np.sqrt(sigma ** 2 + meas ** 2)
        th, jac, n = _solve(units, par, y, sd_rows, th)
        cov = np.linalg.pinv(jac.T @ jac)
        jd = jac[:n]
        hat = float(np.einsum("ij,jk,ik->", jd, cov, jd))
        r = units.log_pred(th) - y
        sigma = float(np.sqrt(max(np.sum(r ** 2 - meas ** 2 * (meas > 0)) / max(n - hat, 1.0), 0.05 ** 2)))
        tau_f = _spread(th, cov, [par.fam[f] for f in seen_f])
        tau_s = _spread(th, cov, [par.src[s] for s in seen_s])
    return CostModel(fs, par, th, cov, sigma, {"family": tau_f, "source": tau_s}, rows)


def _spread(th: np.ndarray, cov: np.ndarray, idx: list[int]) -> float:
    """EM update of a random effect's spread: sqrt(mean(theta_i^2 + var_i)), floored at 0.05."""
    return float(np.sqrt(max(np.mean([th[i] ** 2 + cov[i, i] for i in idx]), 0.05 ** 2)))
