r"""A resumable (method, p, seed) sweep and its statistics: the cell store, intervals, paired differences, tables.

Used by the experiment engine (``sotalign_jax/runtime/engine.py``) and ``experiments/cmcr.py``; nothing here knows
about aligners or caches.

* :class:`CellSettings` — everything that determines a cell's numbers, in two parts: ``fit`` (the method, its
  resolved hyper-parameters, the training data's fingerprint, the protocol, seed and p) and ``evaluation`` (the
  evaluation data). ``key`` hashes both (:func:`sotalign_jax.runtime.workdir.settings_key`) and names the cell;
  ``fit_key`` hashes ``fit`` alone and names a trained cell's run (checkpoint) directory, so changing only an
  evaluation set re-evaluates without discarding a finished training run.
* :class:`CellStore` — one cell is ``done/<method>/p<p>_s<seed>__<key12>.json`` (its record: scalar metrics or the
  status ``"needs_pairs"``, its full ``key`` and ``settings``) and, for a computed cell with per-query values,
  ``cells/<method>/p<p>_s<seed>__<key12>.npz``. Both are written atomically, the ``.npz`` first, so a ``done`` file
  means the cell is complete. A rerun with the same settings skips it; a rerun with any changed setting looks for
  another key, computes the cell anew and leaves the old one where it is (a rerun of the old settings finds it).
* :func:`summarise` — per (method, p, metric): the mean over seeds with a Student-t interval
  (:func:`sotalign_jax.stats.seed_interval`).
* :func:`compare` — per p and metric: each method minus the reference, and the reference minus the best other
  method, with :func:`sotalign_jax.stats.paired_difference` on the per-query values of the seeds both have (same
  pairs, same test queries), and the seeds each wins.
* :func:`markdown` / :func:`plot` — ``results.md`` and the R@1 / FOSCTTM-vs-p figure.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from sotalign_jax import _extras, stats
from sotalign_jax.runtime import io as sio, workdir as wd

__all__ = ["METRICS", "PER_QUERY_METRICS", "CellSettings", "CellStore", "summarise", "compare",
           "choose_reference", "markdown", "plot", "to_json", "lower_is_better"]

# Every scalar a cell reports; the per-query ones are stored per test query for the paired bootstrap.
METRICS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "foscttm", "i2t_mean_rank",
           "t2i_mean_rank", "i2t_median_rank", "t2i_median_rank", "matching_acc", "zeroshot_fashion_mnist",
           "tuxpaint_i2t_r1", "fit_seconds")
PER_QUERY_METRICS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "foscttm", "i2t_mean_rank",
                     "t2i_mean_rank", "matching_acc")
_LOWER_SUFFIXES = ("foscttm", "_mean_rank", "_median_rank", "_seconds")


def lower_is_better(metric: str) -> bool:
  """Whether a smaller value of ``metric`` is better: FOSCTTM, ranks and seconds, under any evaluator prefix."""
  return metric.endswith(_LOWER_SUFFIXES)
NEEDS_PAIRS = "needs_pairs"


# ----------------------------------------------------------------------------------------------------------------
# Cells on disk.
# ----------------------------------------------------------------------------------------------------------------
class CellSettings(NamedTuple):
  """What determines one cell's numbers (plain JSON values; see the module docstring).

  Attributes:
    fit: what determines the fitted alignment: the method, its resolved hyper-parameters (registry defaults with
      the config's values over them), the training data's fingerprint, the protocol, the seeds and p.
    evaluation: what else determines the metrics: the evaluation data.
  """
  fit: Mapping[str, Any]
  evaluation: Mapping[str, Any]

  @property
  def key(self) -> str:
    """The hash of both parts (the cell's key)."""
    return wd.settings_key({"fit": self.fit, "evaluation": self.evaluation})

  @property
  def fit_key(self) -> str:
    """The hash of the fit alone, which names a trained cell's run directory."""
    return wd.settings_key(self.fit)

  def to_json(self) -> dict:
    return {"fit": wd.canonical(self.fit), "evaluation": wd.canonical(self.evaluation)}


class CellStore:
  """The ``done/`` and ``cells/`` files of a sweep under ``workdir``, keyed by :attr:`CellSettings.key`."""

  def __init__(self, workdir: str):
    self.workdir = workdir

  def _path(self, kind: str, method: str, p: int, seed: int, key: str, ext: str) -> str:
    return os.path.join(self.workdir, kind, method, f"p{int(p)}_s{int(seed)}__{key[:12]}.{ext}")

  def load(self, method: str, p: int, seed: int, key: str) -> dict | None:
    """The record of the cell finished under the settings of ``key``, or ``None``."""
    path = self._path("done", method, p, seed, key, "json")
    if not os.path.exists(path):
      return None
    with open(path, encoding="utf-8") as fh:
      record = json.load(fh)
    return record if record.get("key") == key else None  # a 12-character prefix collision is not a match

  def others(self, method: str, p: int, seed: int, key: str) -> list[str]:
    """``done`` files of the same (method, p, seed) under other settings (or from before cells were keyed)."""
    stem = os.path.join(glob.escape(os.path.join(self.workdir, "done", method)), f"p{int(p)}_s{int(seed)}")
    mine = self._path("done", method, p, seed, key, "json")
    return [f for f in sorted(glob.glob(stem + ".json") + glob.glob(stem + "__*.json")) if f != mine]

  def save(self, record: Mapping[str, Any], per_query: Mapping[str, np.ndarray] | None = None):
    """Writes a cell (its per-query values first, then the ``done`` record that marks it finished); the record
    holds its ``key``."""
    method, p, seed, key = record["method"], record["p"], record["seed"], record["key"]
    if per_query is not None:
      sio.save_npz(self._path("cells", method, p, seed, key, "npz"),
                   **{k: np.asarray(v, np.float32) for k, v in per_query.items()})
    sio.write_json(self._path("done", method, p, seed, key, "json"), to_json(record))

  def per_query(self, record: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The per-query arrays of a computed cell (its record)."""
    with np.load(self._path("cells", record["method"], record["p"], record["seed"], record["key"], "npz")) as z:
      return {k: np.asarray(z[k], np.float64) for k in z.files}


def to_json(v: Any) -> Any:
  """``v`` with NumPy scalars and arrays as Python numbers and lists, NaN as ``None`` (strict JSON); other objects
  are left to the JSON writer (:func:`sotalign_jax.runtime.workdir.canonical` with those two choices)."""
  return wd.canonical(v, nonfinite=lambda _: None, other=lambda x: x)


# ----------------------------------------------------------------------------------------------------------------
# Statistics.
# ----------------------------------------------------------------------------------------------------------------
def _ok(cells: Mapping, method: str, p: int, seeds: Sequence[int]) -> list[int]:
  """Seeds with a computed cell of (method, p)."""
  return [s for s in seeds if (method, p, s) in cells and cells[method, p, s]["status"] == "ok"]


def _finite(v) -> bool:
  return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def summarise(cells: Mapping, *, methods: Sequence[str], ps: Sequence[int], seeds: Sequence[int],
              confidence: float = 0.95, metrics: Sequence[str] = METRICS) -> dict:
  """``{method: {p: {metric: {"mean", "low", "high", "n"}}}}`` over the computed seeds; ``None`` where a (method,
  p) has no computed cell (needs pairs) or a metric was not evaluated (its optional data is missing)."""
  out = {}
  for m in methods:
    out[m] = {}
    for p in ps:
      ok = _ok(cells, m, p, seeds)
      if not ok:
        out[m][p] = None
        continue
      out[m][p] = {}
      for k in metrics:
        vals = [cells[m, p, s]["metrics"].get(k) for s in ok]
        if not all(map(_finite, vals)):
          out[m][p][k] = None
          continue
        iv = stats.seed_interval(vals, confidence=confidence)
        out[m][p][k] = {"mean": iv.mean, "low": iv.low, "high": iv.high, "n": iv.n}
  return out


def choose_reference(summary: Mapping, *, methods: Sequence[str], trained: Mapping[str, bool],
                     preferred: str = "sotalign", metrics: Sequence[str] = ("i2t_r1", "t2i_r1")) -> str:
  """``preferred`` when it is among ``methods``, else the closed-form (untrained) method with the best mean of
  ``metrics`` (R@1 of both directions by default; averaged over the p values it has), else the best method."""
  if preferred in methods:
    return preferred

  def score(m):
    vals = [np.mean([c[k]["mean"] for k in metrics]) for c in summary[m].values()
            if c and all(c.get(k) for k in metrics)]
    sign = -1.0 if lower_is_better(metrics[0]) else 1.0
    return sign * float(np.mean(vals)) if vals else -math.inf

  pool = [m for m in methods if not trained.get(m, False)] or list(methods)
  return max(pool, key=score)


def _boot_seed(*parts) -> int:
  return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:4], "big")


def _difference(store: CellStore, cells: Mapping, a: str, b: str, p: int, seeds: Sequence[int], metric: str, *,
                n_boot: int, confidence: float) -> dict:
  pa = np.stack([store.per_query(cells[a, p, s])[metric] for s in seeds])
  pb = np.stack([store.per_query(cells[b, p, s])[metric] for s in seeds])
  d = stats.paired_difference(pa, pb, n_boot=n_boot, confidence=confidence, seed=_boot_seed(a, b, p, metric))
  better = d.per_seed < 0 if lower_is_better(metric) else d.per_seed > 0
  return {"a": a, "b": b, "diff": d.diff, "low": d.low, "high": d.high, "excludes_zero": d.excludes_zero,
          "wins": int(better.sum()), "n_seeds": d.n_seeds, "seeds": list(seeds), "per_seed": d.per_seed.tolist(),
          "seed_low": d.seed_interval.low, "seed_high": d.seed_interval.high}


def compare(store: CellStore, cells: Mapping, summary: Mapping, *, reference: str, methods: Sequence[str],
            ps: Sequence[int], seeds: Sequence[int], metrics: Sequence[str], n_boot: int = 1000,
            confidence: float = 0.95, not_competing: Sequence[str] = ()) -> dict:
  """Paired differences at every p and metric.

  ``not_competing`` methods (the all-pairs upper bound, which sees every training pair) get a difference to the
  reference but are never its "best other".

  Returns:
    ``{"vs_reference": {p: {metric: {method: diff}}}, "vs_best_other": {p: {metric: diff}}}`` where a ``diff`` is
    ``{"a", "b", "diff" (a − b), "low", "high", "excludes_zero", "wins" (seeds where a is better, the metric's
    direction taken into account), "n_seeds", "seeds", "per_seed", "seed_low", "seed_high"}``; a method with no
    seed in common with the reference at that p is left out.
  """
  vs_ref, vs_best = {}, {}
  for p in ps:
    vs_ref[p], vs_best[p] = {}, {}
    ref_seeds = set(_ok(cells, reference, p, seeds))
    for metric in metrics:
      vs_ref[p][metric] = {}
      if not ref_seeds:
        continue
      for m in methods:
        common = [s for s in _ok(cells, m, p, seeds) if s in ref_seeds]
        if m != reference and common:
          vs_ref[p][metric][m] = _difference(store, cells, m, reference, p, common, metric, n_boot=n_boot,
                                             confidence=confidence)
      others = [m for m in vs_ref[p][metric]
                if m not in not_competing and summary[m][p] and summary[m][p].get(metric)]
      if others:
        sign = -1.0 if lower_is_better(metric) else 1.0
        best = max(others, key=lambda m: sign * summary[m][p][metric]["mean"])
        common = vs_ref[p][metric][best]["seeds"]
        vs_best[p][metric] = _difference(store, cells, reference, best, p, common, metric, n_boot=n_boot,
                                         confidence=confidence)
  return {"vs_reference": vs_ref, "vs_best_other": vs_best}


# ----------------------------------------------------------------------------------------------------------------
# Tables and plot.
# ----------------------------------------------------------------------------------------------------------------
def _digits(metric: str) -> int:
  return 1 if metric.endswith("rank") or metric.endswith("seconds") else 3


def _fmt_interval(c, metric: str) -> str:
  if not c:
    return "–"
  d = _digits(metric)
  if c["n"] < 2 or not _finite(c["low"]):
    return f"{c['mean']:.{d}f}"
  return f"{c['mean']:.{d}f} ± {0.5 * (c['high'] - c['low']):.{d}f}"


def _fmt_diff(d, metric: str) -> str:
  if not d:
    return "–"
  k = _digits(metric)
  star = "*" if d["excludes_zero"] else ""
  return f"{d['diff']:+.{k}f} [{d['low']:+.{k}f}, {d['high']:+.{k}f}]{star} {d['wins']}/{d['n_seeds']}"


def markdown(summary: Mapping, comparison: Mapping, *, methods: Sequence[str], ps: Sequence[int],
             labels: Mapping[int, str], reference: str, table_metrics: Sequence[str],
             compare_metrics: Sequence[str], n_seeds: int, confidence: float, header: str = "") -> str:
  """The benchmark's markdown: one methods × p table per metric, then the difference tables."""
  cols = [f"p={labels[p]}" + (f" ({p})" if labels[p] != str(p) else "") for p in ps]
  head = lambda first: [f"| {first} | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]  # noqa: E731
  pct = f"{100 * confidence:g}%"
  out = [header] if header else []
  for metric in table_metrics:
    if not any(summary[m][p] and summary[m][p].get(metric) for m in methods for p in ps):
      continue  # never evaluated (e.g. its optional cache is missing)
    arrow = "lower is better" if lower_is_better(metric) else "higher is better"
    out += [f"### {metric} ({arrow}; mean ± {pct} interval over {n_seeds} seeds; – = needs pairs)", ""]
    out += head("method")
    for m in methods:
      out.append(f"| {m} | " + " | ".join(_fmt_interval(summary[m][p] and summary[m][p].get(metric), metric)
                                          for p in ps) + " |")
    out.append("")
  for metric in compare_metrics:
    vs_ref = comparison["vs_reference"]
    if not any(vs_ref[p].get(metric) for p in ps):
      continue
    out += [f"### Δ {metric}: method − {reference} (paired bootstrap over test queries within seeds, {pct}; "
            f"* = interval excludes 0; n/m = seeds where the method is better)", ""]
    out += head("method")
    for m in methods:
      if m != reference:
        out.append(f"| {m} | " + " | ".join(_fmt_diff(vs_ref[p].get(metric, {}).get(m), metric) for p in ps) + " |")
    best = [comparison["vs_best_other"][p].get(metric) for p in ps]
    out.append(f"| **{reference} − best other** | " + " | ".join(
        _fmt_diff(b, metric) + (f" (vs {b['b']})" if b else "") for b in best) + " |")
    out.append("")
  return "\n".join(out).rstrip() + "\n"


METRIC_TITLES = {"i2t_r1": "image → text R@1", "t2i_r1": "text → image R@1", "foscttm": "FOSCTTM"}
_MARKERS = "osD^v<>pPX*hH8d"


def method_styles(methods: Sequence[str]) -> dict[str, dict]:
  """One colour and marker per method (``tab20`` colours, 15 markers: distinct pairs for up to 20 methods), fixed
  by the method's position in ``methods``."""
  colours = _extras.require("matplotlib", what="a result plot").colormaps["tab20"].colors
  return {m: dict(color=colours[i % len(colours)], marker=_MARKERS[i % len(_MARKERS)]) for i, m in enumerate(methods)}


def plot(summary: Mapping, *, methods: Sequence[str], ps: Sequence[int], labels: Mapping[int, str], path: str,
         metrics: Sequence[str] = ("i2t_r1", "t2i_r1", "foscttm")) -> None:
  """Each metric vs p, one titled panel per metric: per method its mean with the seed interval as error bars (and a
  band when there are several p); log-x, p = 0 drawn left of the smallest p > 0; each method its own colour and
  marker (``method_styles``)."""
  plt = wd.pyplot()
  positive = [p for p in ps if p > 0] or [1]
  x_of = {p: (p if p > 0 else min(positive) / 3.0) for p in ps}
  styles = method_styles(methods)
  fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
  for ax, metric in zip(axes[0], metrics):
    for i, m in enumerate(methods):
      pts = [(x_of[p], summary[m][p][metric]) for p in ps if summary[m][p] and summary[m][p].get(metric)]
      if not pts:
        continue
      # Methods at one p sit side by side (a small multiplicative offset on the log axis) so their bars don't hide.
      x = np.array([a for a, _ in pts]) * 1.04 ** (i - (len(methods) - 1) / 2)
      mean = np.array([c["mean"] for _, c in pts])
      lo = np.array([c["low"] if _finite(c["low"]) else c["mean"] for _, c in pts])
      hi = np.array([c["high"] if _finite(c["high"]) else c["mean"] for _, c in pts])
      ax.errorbar(x, mean, yerr=[mean - lo, hi - mean], ms=4, capsize=2, lw=1, label=m, **styles[m])
      if len(pts) > 1:
        ax.fill_between(x, lo, hi, color=styles[m]["color"], alpha=0.12, lw=0)
    ax.set_xscale("log")
    ax.set_xticks([x_of[p] for p in ps])
    ax.set_xticklabels([labels[p] if labels[p] != "max" else f"max\n{p}" for p in ps], fontsize=7)
    ax.minorticks_off()
    ax.set_xlabel("paired examples p")
    ax.set_ylabel(metric + (" (lower is better)" if lower_is_better(metric) else ""))
    ax.set_title(f"{METRIC_TITLES.get(metric, metric)}: mean and 95% interval over seeds", fontsize=9)
    ax.grid(alpha=0.3)
  handles, names = axes[0][0].get_legend_handles_labels()
  if handles:
    axes[0][0].legend(handles, names, fontsize=7)
  fig.tight_layout()
  wd.save_figure(fig, path)
