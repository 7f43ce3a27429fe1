r"""Intervals for benchmark tables: across seeds (Student t) and for paired method differences (bootstrap).

* :func:`seed_interval` — mean of one metric over ``n`` seeds with the Student-t interval
  :math:`\bar v \pm t_{(1+c)/2,\,n-1}\, s / \sqrt n`.
* :func:`paired_difference` — method a minus method b, both evaluated on the same seeds (same pairs) and the same
  test queries: resample the queries within each seed (one resample shared by a and b), average over seeds,
  percentile interval; with the per-seed differences, how many seeds a wins, and the t interval of the per-seed
  differences (which also carries the between-seed variance that query resampling alone leaves out).
* :func:`t_ppf` — the Student-t quantile, from the regularised incomplete beta function (continued fraction,
  Numerical Recipes §6.4) inverted by bisection; accurate to ~1e-10, so scipy stays a test-only dependency.

Post-processing on host arrays: plain NumPy, no JAX.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np
from jax.typing import ArrayLike

__all__ = ["Interval", "PairedDifference", "t_ppf", "t_cdf", "seed_interval", "paired_difference"]


# ----------------------------------------------------------------------------------------------------------------
# Student t.
# ----------------------------------------------------------------------------------------------------------------
def _betacf(a: float, b: float, x: float) -> float:
  """Continued fraction of the incomplete beta function (modified Lentz)."""
  tiny, eps = 1e-300, 1e-15
  qab, qap, qam = a + b, a + 1.0, a - 1.0
  c, d = 1.0, 1.0 - qab * x / qap
  d = 1.0 / (d if abs(d) > tiny else tiny)
  h = d
  for m in range(1, 10_000):
    m2 = 2 * m
    aa = m * (b - m) * x / ((qam + m2) * (a + m2))
    d = 1.0 + aa * d
    d = 1.0 / (d if abs(d) > tiny else tiny)
    c = 1.0 + aa / c
    c = c if abs(c) > tiny else tiny
    h *= d * c
    aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
    d = 1.0 + aa * d
    d = 1.0 / (d if abs(d) > tiny else tiny)
    c = 1.0 + aa / c
    c = c if abs(c) > tiny else tiny
    delta = d * c
    h *= delta
    if abs(delta - 1.0) < eps:
      break
  return h


def _betainc(a: float, b: float, x: float) -> float:
  r"""Regularised incomplete beta :math:`I_x(a, b)`."""
  if x <= 0.0:
    return 0.0
  if x >= 1.0:
    return 1.0
  lbt = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
  if x < (a + 1.0) / (a + b + 2.0):
    return math.exp(lbt) * _betacf(a, b, x) / a
  return 1.0 - math.exp(lbt) * _betacf(b, a, 1.0 - x) / b


def _check_df(df) -> float:
  if not (isinstance(df, (int, float, np.integer, np.floating)) and df > 0 and math.isfinite(df)):
    raise ValueError(f"df must be a finite number > 0, got {df!r}")
  return float(df)


def t_cdf(t: float, df: float) -> float:
  r"""Student-t CDF, :math:`F(t) = 1 - \tfrac12 I_{\nu/(\nu+t^2)}(\nu/2, 1/2)` for :math:`t \ge 0` (symmetric)."""
  df = _check_df(df)
  tail = 0.5 * _betainc(0.5 * df, 0.5, df / (df + t * t))
  return 1.0 - tail if t >= 0 else tail


@functools.lru_cache(maxsize=1024)
def _t_ppf(q: float, df: float) -> float:
  if q == 0.5:
    return 0.0
  target = 2.0 * min(q, 1.0 - q)
  lo, hi = 0.0, 1.0
  for _ in range(200):
    mid = 0.5 * (lo + hi)
    if mid <= lo or mid >= hi:
      break
    if _betainc(0.5 * df, 0.5, mid) < target:
      lo = mid
    else:
      hi = mid
  x = 0.5 * (lo + hi)
  t = math.sqrt(df * (1.0 - x) / x)
  return t if q > 0.5 else -t


def t_ppf(q: float, df: float) -> float:
  r"""Quantile of the Student-t distribution with ``df`` degrees of freedom (``0 < q < 1``, any real ``df > 0``).

  Solves :math:`I_x(\nu/2, 1/2) = 2\min(q, 1-q)` for ``x`` by bisection (the left side increases with ``x``) and
  returns :math:`\pm\sqrt{\nu(1-x)/x}`; memoised.
  """
  df = _check_df(df)
  if not 0.0 < q < 1.0:
    raise ValueError(f"q must lie in (0, 1), got {q!r}")
  return _t_ppf(float(q), df)


# ----------------------------------------------------------------------------------------------------------------
# Across seeds.
# ----------------------------------------------------------------------------------------------------------------
class Interval(NamedTuple):
  """A mean with a two-sided interval; ``low``/``high`` are NaN when ``n < 2`` (no spread to estimate)."""
  mean: float
  low: float
  high: float
  n: int

  @property
  def half_width(self) -> float:
    return 0.5 * (self.high - self.low)

  def excludes(self, value: float = 0.0) -> bool:
    """True if the interval lies strictly on one side of ``value``."""
    return bool(self.low > value or self.high < value)


def _check_confidence(confidence) -> float:
  if not 0.0 < confidence < 1.0:
    raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
  return float(confidence)


def seed_interval(values: ArrayLike, *, confidence: float = 0.95) -> Interval:
  r"""Mean over seeds with a Student-t interval, :math:`\bar v \pm t_{(1+c)/2,\,n-1}\; s/\sqrt n`
  (``s`` the sample standard deviation, ``ddof = 1``).

  Args:
    values: ``[n]`` one value per seed (a failed seed must be dropped explicitly: NaN raises).
    confidence: coverage ``c`` of the interval.

  Returns:
    :class:`Interval` ``(mean, low, high, n)``; for ``n = 1`` the bounds are NaN.
  """
  confidence = _check_confidence(confidence)
  v = np.asarray(values, np.float64).ravel()
  if v.size == 0:
    raise ValueError("`values` is empty")
  if not np.isfinite(v).all():
    raise ValueError(f"`values` contains NaN or Inf: {v.tolist()}")
  mean = float(v.mean())
  n = int(v.size)
  if n < 2:
    return Interval(mean, math.nan, math.nan, n)
  half = t_ppf(0.5 * (1.0 + confidence), n - 1) * float(v.std(ddof=1)) / math.sqrt(n)
  return Interval(mean, mean - half, mean + half, n)


# ----------------------------------------------------------------------------------------------------------------
# Paired differences.
# ----------------------------------------------------------------------------------------------------------------
class PairedDifference(NamedTuple):
  """Method a minus method b on the same seeds and test queries (see :func:`paired_difference`).

  Attributes:
    diff: mean over seeds of the per-seed mean difference.
    low, high: percentile bootstrap interval of ``diff``.
    excludes_zero: ``low > 0`` or ``high < 0``.
    per_seed: ``[n_seeds]`` mean difference on each seed.
    wins: number of seeds where a's mean is larger than b's (``per_seed > 0``).
    n_seeds: number of seeds.
    seed_interval: Student-t interval of ``per_seed`` across seeds (NaN bounds for one seed).
    confidence: coverage of both intervals.
  """
  diff: float
  low: float
  high: float
  excludes_zero: bool
  per_seed: np.ndarray
  wins: int
  n_seeds: int
  seed_interval: Interval
  confidence: float


def _per_query_matrix(a, name: str) -> np.ndarray:
  a = np.asarray(a, np.float64)
  if a.ndim == 1:
    a = a[None]
  if a.ndim != 2 or 0 in a.shape:
    raise ValueError(f"`{name}` must be a non-empty [n_seeds, n_queries] array, got shape {a.shape}")
  if not np.isfinite(a).all():
    raise ValueError(f"`{name}` contains NaN or Inf")
  return a


def paired_difference(per_query_a: ArrayLike, per_query_b: ArrayLike, *, n_boot: int = 1000, seed: int = 0,
                      confidence: float = 0.95, resample_seeds: bool = False) -> PairedDifference:
  r"""Difference of two methods' means with a paired bootstrap interval over test queries.

  With :math:`d_{sq} = a_{sq} - b_{sq}` for seed ``s`` and query ``q``, the statistic is
  :math:`\bar d = \frac1S\sum_s \frac1Q\sum_q d_{sq}`. Each bootstrap replicate draws, for every seed independently,
  ``Q`` queries with replacement — the *same* queries for a and b, which is what makes the interval paired — and
  recomputes :math:`\bar d`; the interval is the ``(1 ± c)/2`` percentiles of the replicates.

  Query resampling measures how much the verdict depends on *which test queries* were drawn, given the seeds (the
  pairs each seed drew). ``resample_seeds=True`` also resamples the seeds with replacement (a two-stage bootstrap),
  and ``seed_interval`` gives the t interval over the per-seed differences; both carry the between-seed variance,
  but with 3–5 seeds they are coarse.

  Args:
    per_query_a: ``[n_seeds, n_queries]`` per-query metric of method a (e.g. hit@1 or FOSCTTM per query); row ``s``
      and column ``q`` must be the same seed and query as in ``per_query_b``. A 1-D array is one seed.
    per_query_b: the same for method b.
    n_boot: bootstrap replicates.
    seed: seed of the resampling.
    confidence: coverage ``c``.
    resample_seeds: also resample seeds (see above).

  Returns:
    :class:`PairedDifference`. For a lower-is-better metric (FOSCTTM, rank) "a wins" means ``per_seed > 0``, i.e.
    a is *worse*; negate the inputs to count wins the other way.
  """
  confidence = _check_confidence(confidence)
  a, b = _per_query_matrix(per_query_a, "per_query_a"), _per_query_matrix(per_query_b, "per_query_b")
  if a.shape != b.shape:
    raise ValueError(f"per_query_a and per_query_b must cover the same seeds and queries, got shapes {a.shape} and "
                     f"{b.shape}")
  if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
    raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
  d = a - b
  n_seeds, n_q = d.shape
  per_seed = d.mean(1)
  rng = np.random.default_rng(seed)
  stats = np.empty(int(n_boot))
  step = max(1, int(4_000_000 // (n_seeds * n_q)))  # replicates per block: bounds the index array to ~32 MB
  rows = np.arange(n_seeds)[None, :, None]
  for start in range(0, int(n_boot), step):
    m = min(step, int(n_boot) - start)
    s_idx = rng.integers(0, n_seeds, size=(m, n_seeds))[:, :, None] if resample_seeds else rows
    q_idx = rng.integers(0, n_q, size=(m, n_seeds, n_q))
    stats[start:start + m] = d[s_idx, q_idx].mean(axis=(1, 2))
  low, high = (float(v) for v in np.quantile(stats, [0.5 * (1.0 - confidence), 0.5 * (1.0 + confidence)]))
  return PairedDifference(
      diff=float(per_seed.mean()), low=low, high=high, excludes_zero=bool(low > 0.0 or high < 0.0),
      per_seed=per_seed, wins=int((per_seed > 0).sum()), n_seeds=int(n_seeds),
      seed_interval=seed_interval(per_seed, confidence=confidence), confidence=confidence)
