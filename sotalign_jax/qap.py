r"""Seeded Fast Approximate QAP (FAQ) with batched random restarts.

Graph matching of two weighted graphs with adjacency (or kernel) matrices ``a, b: [n, n]`` seeks the
permutation that best aligns them :cite:p:`vogelstein2015faq`:

.. math::

  \max_{P \in \mathcal{P}_n} f(P) = \operatorname{tr}(A^\top P B P^\top)
  = \sum_{ij} A_{ij} B_{\pi(i)\pi(j)},

(or ``min`` with ``maximize=False``). FAQ relaxes :math:`\mathcal{P}_n` to the Birkhoff polytope of doubly
stochastic matrices, runs Frank–Wolfe there — each step solves a linear assignment problem (LAP) on the
gradient and does an exact line search on the quadratic — and projects the result back onto the permutations
with one more LAP.

**Seeds.** With ``s`` pairs fixed in advance (seeded graph matching, :cite:t:`fishkind2019seeded`) both matrices are
reordered seeds-first and split into blocks :math:`A_{11} \in \mathbb{R}^{s \times s}, A_{12}, A_{21},
A_{22} \in \mathbb{R}^{q \times q}` (``q = n − s``). Only the ``q × q`` block ``P`` of the permutation is free:

.. math::

  f(P) = \langle A_{11}, B_{11}\rangle + \langle L, P\rangle + \langle P, \mathcal{N}(P)\rangle,\qquad
  L = A_{21}B_{21}^\top + A_{12}^\top B_{12},\quad \mathcal{N}(X) = A_{22}^\top X B_{22},

with gradient :math:`\nabla f(P) = L + \mathcal{N}(P) + \mathcal{M}(P)`, :math:`\mathcal{M}(X) = A_{22} X
B_{22}^\top` the adjoint of :math:`\mathcal{N}`. The seed terms :math:`L` and
:math:`\langle A_{11}, B_{11}\rangle` are computed **once**, not per iteration.

**One GEMM per iteration.** ``scipy``'s loop costs six ``q³`` products per iteration (four for the gradient,
two for the line search). Here the Frank–Wolfe vertex ``Q`` is a permutation, so with ``σ`` its columns
:math:`\mathcal{N}(Q) = A_{22}^\top Q B_{22} = (A_{22}^\top)_{:,\sigma^{-1}} B_{22}` is a column gather and
one GEMM (two for non-symmetric inputs, which also need :math:`\mathcal{M}(Q)`), and by linearity

.. math::

  \nabla f(\alpha P + (1-\alpha) Q) = \alpha \nabla f(P) + (1-\alpha)\nabla f(Q), \qquad
  f(Q + \alpha R) = f(Q) + \alpha\langle \nabla f(Q), R\rangle + \alpha^2 \langle R, \mathcal{N}(P) -
  \mathcal{N}(Q)\rangle,

with :math:`R = P - Q`, so the state carries :math:`\mathcal{N}(P)` (and :math:`\mathcal{M}(P)`), the line
search coefficients are elementwise reductions and the next gradient is free. The step rule and stopping test
(:math:`\|P_{t} - P_{t+1}\|_F / \sqrt{q} < \mathrm{tol}`) are scipy's, so with equal starts the iterates agree
with ``scipy.optimize.quadratic_assignment(method="faq")`` up to float32 rounding.

**Restarts** start at :math:`P_0 = (J + K)/2` with :math:`J = \mathbf{1}\mathbf{1}^\top / q` the barycenter and
``K`` a uniform random matrix balanced by :func:`sotalign_jax.ot.sinkhorn_knopp` (scipy's ``P0="randomized"``);
all restarts run as one batched computation (one ``[r·q, q] × [q, q]`` GEMM per step) and can be split over the
devices of a mesh.

**Linear assignment.** ``lap="scipy"`` (default) runs ``scipy.optimize.linear_sum_assignment`` (exact, a
Jonker–Volgenant variant) on the host through :func:`jax.pure_callback`, skipping restarts that have converged;
``lap="hungarian"`` uses ``optax.assignment.hungarian_algorithm`` and stays entirely in XLA (no host round trip,
but 4–25× slower than scipy on CPU for ``q = 500``); ``lap="auction"`` is :func:`auction`, Bertsekas' ε-scaling
auction, also pure XLA: every round is a handful of ``[bidders, q]`` array operations with no sequential inner loop,
the form that suits an accelerator (on the CPU it is slower than scipy too; ``benchmarks/bench_assignment.py``).

**Tracing.** :func:`faq`, :func:`linear_assignment` and :func:`auction` all run inside ``jax.jit`` (with
``lap="scipy"`` the compiled Frank–Wolfe loop calls scipy through the callback); eager calls of :func:`faq` return
NumPy results with scipy's dtypes, traced calls ``jax.Array`` ones (see :func:`faq`).
"""

from __future__ import annotations

import functools
import math
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as PS

from sotalign_jax import ot
from sotalign_jax._arrays import DEFAULT_PRECISION, is_tracer

__all__ = ["FAQResult", "LAPS", "auction", "faq", "linear_assignment", "resolve_lap"]

_HI = DEFAULT_PRECISION


class FAQResult(NamedTuple):
  """Result of :func:`faq`: NumPy arrays and a float eagerly, ``jax.Array`` fields when :func:`faq` is traced.

  Attributes:
    col_ind: ``[n]`` int, node ``i`` of ``a`` is matched to node ``col_ind[i]`` of ``b`` (scipy's ``col_ind``).
    fun: objective :math:`\\sum_{ij} A_{ij} B_{\\pi(i)\\pi(j)}` of ``col_ind`` (float64, scipy's ``fun``).
    fun_per_init: ``[n_init]`` objective of each restart's projected permutation (float32).
    n_iters: ``[n_init]`` Frank–Wolfe iterations done by each restart.
  """
  col_ind: np.ndarray | jax.Array
  fun: float | jax.Array
  fun_per_init: np.ndarray | jax.Array
  n_iters: np.ndarray | jax.Array


# ----------------------------------------------------------------------------------------------------------------
# Linear assignment.
# ----------------------------------------------------------------------------------------------------------------
def _lap_host(cost: np.ndarray, skip: np.ndarray, prev: np.ndarray, maximize: bool) -> np.ndarray:
  import scipy.optimize  # pylint: disable=g-import-not-at-top

  cost, skip, prev = np.asarray(cost), np.asarray(skip), np.asarray(prev)
  out = np.array(prev, dtype=np.int32, copy=True)
  for r in range(cost.shape[0]):
    if not skip[r]:
      out[r] = scipy.optimize.linear_sum_assignment(cost[r], maximize=maximize)[1]
  return out


def _auction_phase(benefit, price, eps, bidders: int, max_rounds: int):
  """One ε-phase of the Jacobi forward auction from ``price``: every person unassigned, rounds until all are."""
  q = benefit.shape[0]
  none = jnp.full((q,), -1, jnp.int32)
  slot = jnp.arange(bidders, dtype=jnp.int32)
  objects = jnp.arange(q, dtype=jnp.int32)

  def cond(s):
    _, _, assigned, r = s
    return jnp.any(assigned < 0) & (r < max_rounds)

  def body(s):
    price, owner, assigned, r = s
    persons = jnp.nonzero(assigned < 0, size=bidders, fill_value=q)[0].astype(jnp.int32)
    valid = persons < q
    values = benefit[jnp.minimum(persons, q - 1)] - price[None, :]
    # Best and second-best values by three reductions: lax.top_k with its indices is a full sort on XLA's CPU
    # backend (100x slower here).
    first = jnp.max(values, axis=1)
    target = jnp.min(jnp.where(values >= first[:, None], objects[None, :], q), axis=1)
    second = jnp.max(jnp.where(objects[None, :] == target[:, None], -jnp.inf, values), axis=1)
    bid = jnp.where(valid, price[target] + (first - second) + eps, -jnp.inf)
    best = jnp.full((q,), -jnp.inf, benefit.dtype).at[target].max(bid)
    winner = jnp.full((q,), bidders, jnp.int32).at[target].min(
        jnp.where(valid & (bid >= best[target]), slot, bidders))
    won = winner < bidders
    new_owner = jnp.where(won, persons[jnp.minimum(winner, bidders - 1)], owner)
    assigned = assigned.at[jnp.where(won & (owner >= 0), owner, q)].set(-1, mode="drop")
    assigned = assigned.at[jnp.where(won, new_owner, q)].set(objects, mode="drop")
    return jnp.where(won, best, price), new_owner, assigned, r + 1

  return jax.lax.while_loop(cond, body, (price, none, none, jnp.int32(0)))


def _fill_unassigned(owner: jax.Array, assigned: jax.Array) -> jax.Array:
  """Give the persons a phase left unassigned (only if it hit ``max_rounds``) the free objects, in index order."""
  q = assigned.shape[0]
  free_p = jnp.nonzero(assigned < 0, size=q, fill_value=q)[0]
  free_o = jnp.nonzero(owner < 0, size=q, fill_value=q)[0]
  return assigned.at[free_p].set(free_o.astype(jnp.int32), mode="drop")


@functools.partial(jax.jit, static_argnames=("tol", "start", "scale", "bidders", "max_rounds"))
def auction(benefit: ArrayLike, *, tol: float = 1e-6, start: float = 0.25, scale: float = 7.0, bidders: int = 256,
            max_rounds: int | None = None) -> tuple[jax.Array, jax.Array]:
  r"""Maximum-benefit assignment of a square ``[q, q]`` matrix by the ε-scaling auction (pure XLA).

  Bertsekas, "The auction algorithm: a distributed relaxation method for the assignment problem", Annals of
  Operations Research 14 (1988), in its Jacobi form (Bertsekas & Castañon, Parallel Computing 17, 1991): persons
  (rows) bid for objects (columns) at prices :math:`p`. In a round up to ``bidders`` unassigned persons ``i`` each
  bid for their best object :math:`j_i = \arg\max_j a_{ij} - p_j` the price that leaves them indifferent to their
  second best, plus ε: :math:`p_{j_i} + (v_1 - v_2) + ε`; each object goes to its highest bidder (ties: the lowest
  row) at that price, and its previous owner becomes unassigned. A phase ends when every person holds an object;
  the assignment then satisfies ε-complementary slackness, so its total is within :math:`q\,ε` of the optimum
  (exact whenever the benefits are integers and :math:`q\,ε < 1`). ε-scaling: the phases run at
  :math:`ε_k = \max(\mathrm{start}\cdot Δ\, \mathrm{scale}^{-k},\ \mathrm{tol}\cdot Δ)` with
  :math:`Δ = \max a - \min a`, each from the previous phase's prices with every person unassigned, down to
  :math:`ε = \mathrm{tol}\cdot Δ`.

  The auction algorithm of :cite:t:`bertsekas1988auction`.

  Args:
    benefit: ``[q, q]`` benefits (maximised; pass ``-cost`` to minimise).
    tol: the last ε as a fraction of the benefit range Δ; the total is within ``q · tol · Δ`` of the optimum.
    start: the first ε as a fraction of Δ.
    scale: ε is divided by this between phases.
    bidders: unassigned persons that bid per round (a round costs ``O(bidders · q)``).
    max_rounds: cap on the rounds of one phase (``None``: ``100 q``, never reached in the tests); persons still
      unassigned when it is reached get the free objects in index order, so the result is always a permutation.

  Returns:
    ``(cols, rounds)``: ``[q]`` int32 object of each person (scipy's ``col_ind``) and the ``[phases]`` rounds each
    phase took.
  """
  benefit = jnp.asarray(benefit, jnp.float32)
  if benefit.ndim != 2 or benefit.shape[0] != benefit.shape[1]:
    raise ValueError(f"auction needs a square [q, q] benefit matrix, got shape {benefit.shape}")
  q = benefit.shape[0]
  if q == 1:
    return jnp.zeros((1,), jnp.int32), jnp.zeros((1,), jnp.int32)
  if not 0 < tol <= start or scale <= 1:
    raise ValueError(f"auction needs 0 < tol <= start and scale > 1, got tol={tol}, start={start}, scale={scale}")
  spread = jnp.max(benefit) - jnp.min(benefit)
  spread = jnp.where(spread > 0, spread, 1.0)
  n_phases = 1 + math.ceil(math.log(start / tol) / math.log(scale))
  eps = [max(start * scale ** -k, tol) for k in range(n_phases)]
  bidders = max(1, min(int(bidders), q))
  max_rounds = 100 * q if max_rounds is None else int(max_rounds)
  price = jnp.zeros((q,), jnp.float32)
  rounds = []
  for e in eps:
    price, owner, assigned, r = _auction_phase(benefit, price, e * spread, bidders, max_rounds)
    rounds.append(r)
  return _fill_unassigned(owner, assigned), jnp.stack(rounds)


LAPS = ("scipy", "hungarian", "auction")
"""The linear assignment solvers of :func:`linear_assignment` and :func:`faq` (``lap=``); ``"auto"`` picks one by
backend (:func:`resolve_lap`)."""


def _batched_lap(cost: jax.Array, *, maximize: bool, method: str, skip: jax.Array | None = None,
                 prev: jax.Array | None = None) -> jax.Array:
  """Column of each row in an optimal assignment of every ``cost[r]``; ``[r, q, m] -> [r, q]`` int32, ``q <= m``
  (a wide matrix assigns every row; the auction pads it with constant rows, which leaves the optimum of the real
  rows unchanged)."""
  r, q, m = cost.shape
  if skip is None:
    skip = jnp.zeros((r,), bool)
  if prev is None:
    prev = jnp.zeros((r, q), jnp.int32)
  if method == "scipy":
    return jax.pure_callback(functools.partial(_lap_host, maximize=maximize),
                             jax.ShapeDtypeStruct((r, q), jnp.int32), cost, skip, prev,
                             vmap_method="sequential")
  if method == "hungarian":
    from optax import assignment  # pylint: disable=g-import-not-at-top

    def one(c):
      i, j = assignment.hungarian_algorithm(-c if maximize else c)
      return jnp.zeros((q,), jnp.int32).at[i].set(j.astype(jnp.int32))

    return jnp.where(skip[:, None], prev, jax.vmap(one)(cost))
  if method == "auction":
    def one(c):
      c = c if maximize else -c
      return auction(jnp.concatenate([c, jnp.zeros((m - q, m), c.dtype)]) if m > q else c)[0][:q]

    return jnp.where(skip[:, None], prev, jax.vmap(one)(cost))
  raise ValueError(f"lap must be one of {LAPS}, got {method!r}")


def _host_cores() -> int:
  """The CPU cores this process may run on (its affinity mask; ``os.cpu_count()`` where there is none)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # macOS, Windows
    return os.cpu_count() or 1


def resolve_lap(lap: str) -> str:
  """The solver ``lap`` stands for: one of :data:`LAPS` as it is, or ``"auto"``: ``"scipy"`` on a CPU backend (the
  fastest there) and ``"auction"`` on an accelerator (pure XLA, no host round trip; ``benchmarks/bench_assignment.py``
  measures the choice).

  On a CPU backend where the process may use a single core (its affinity mask: ``taskset -c 0``, a one-CPU batch
  job), ``"auto"`` is ``"auction"`` too: there the host callback of ``"scipy"`` can deadlock inside a compiled loop.
  jax's callback copies its inputs to a CPU buffer before scipy reads them, and that copy waits for XLA's CPU thread
  pool, whose only thread runs the loop that waits for the callback (seen with ``wasserstein_procrustes`` under
  jax 0.10; two cores, or two host devices, do not hang). Pass ``"auction"`` or ``"hungarian"`` rather than
  ``"scipy"`` on one core.
  """
  if lap == "auto":
    return "scipy" if jax.default_backend() == "cpu" and _host_cores() > 1 else "auction"
  if lap not in LAPS:
    raise ValueError(f"lap must be one of {LAPS + ('auto',)}, got {lap!r}")
  return lap


def linear_assignment(cost: ArrayLike, *, maximize: bool = False, lap: str = "scipy") -> jax.Array:
  r"""Optimal assignment of every row of a cost matrix, :math:`\min_\sigma \sum_i C_{i\sigma(i)}` (or ``max``) over
  injective :math:`\sigma`: the one linear assignment entry point of the library.

  Runs inside ``jax.jit`` whatever ``lap`` (``"scipy"`` through :func:`jax.pure_callback`).

  Args:
    cost: ``[q, m]`` or batched ``[r, q, m]`` cost (benefit if ``maximize``) matrices, square or wide (``q <= m``:
      every row is assigned; transpose a tall matrix).
    maximize: maximise the total instead of minimising it.
    lap: ``"scipy"`` (``scipy.optimize.linear_sum_assignment`` on the host) or ``"hungarian"`` (pure XLA, optax),
      both exact; ``"auction"`` (pure XLA, :func:`auction`: within ``q · 1e-6 ·`` (the range of ``cost``) of the
      optimal total); or ``"auto"`` (:func:`resolve_lap`).

  Returns:
    ``[q]`` (or ``[r, q]``) int32 column of each row, like scipy's ``col_ind``.
  """
  cost = jnp.asarray(cost, jnp.float32)
  if cost.ndim not in (2, 3) or cost.shape[-2] > cost.shape[-1] or cost.shape[-2] == 0:
    raise ValueError(f"cost must be a non-empty square or wide [q, m] (q <= m) or batched [r, q, m] matrix, got "
                     f"shape {cost.shape}")
  batched = cost.reshape((-1,) + cost.shape[-2:])
  out = _batched_lap(batched, maximize=maximize, method=resolve_lap(lap))
  return out if cost.ndim == 3 else out[0]


# ----------------------------------------------------------------------------------------------------------------
# Random doubly-stochastic starts.
# ----------------------------------------------------------------------------------------------------------------
def _random_starts(keys: jax.Array, q: int) -> jax.Array:
  """``[r, q, q]`` starts :math:`(J + K)/2` (scipy's ``P0="randomized"``)."""

  def one(key):
    k = ot.sinkhorn_knopp(jax.random.uniform(key, (q, q), jnp.float32))
    return 0.5 * (k + 1.0 / q)

  return jax.vmap(one)(keys)


# ----------------------------------------------------------------------------------------------------------------
# Frank–Wolfe core, batched over restarts.
# ----------------------------------------------------------------------------------------------------------------
def _n_of_perm(a22t: jax.Array, b22: jax.Array, cols: jax.Array) -> jax.Array:
  r""":math:`A_{22}^\top Q_r B_{22}` for permutations ``Q_r = I[cols_r]``: a column gather and one GEMM."""
  r, q = cols.shape
  inv = jnp.argsort(cols, axis=1)  # (A^T Q)[:, v] = A^T[:, σ^{-1}(v)]
  gathered = jnp.take(a22t, inv, axis=1)  # [q, r, q]
  gathered = jnp.transpose(gathered, (1, 0, 2)).reshape(r * q, q)
  return jnp.matmul(gathered, b22, precision=_HI).reshape(r, q, q)


def _faq_core(keys, a11, a12, a21, a22, b11, b12, b21, b22, *, maximize: bool, symmetric: bool, maxiter: int,
              tol: float, lap: str):
  """Runs FAQ from ``len(keys)`` random starts; returns (cols [r, q], per-restart objective [r], n_iter [r])."""
  q = a22.shape[0]
  r = keys.shape[0]
  mm = functools.partial(jnp.matmul, precision=_HI)
  lin = mm(a21, b21.T) + mm(a12.T, b12)  # seed terms, computed once
  const = jnp.sum(a11 * b11)
  a22t, b22t = a22.T, b22.T
  sign = 1.0 if maximize else -1.0

  p0 = _random_starts(keys, q)
  # N(P0) = A^T P0 B, batched as one [r q, q] x [q, q] GEMM after the left product.
  np0 = mm(jnp.einsum("ik,rkj->rij", a22t, p0, precision=_HI).reshape(r * q, q), b22).reshape(r, q, q)
  mp0 = np0 if symmetric else mm(jnp.einsum("ik,rkj->rij", a22, p0, precision=_HI).reshape(r * q, q),
                                 b22t).reshape(r, q, q)

  def take(x, cols):  # <X_r, Q_r> for every restart
    return jnp.sum(jnp.take_along_axis(x, cols[:, :, None], axis=2)[..., 0], axis=1)

  def cond(s):
    return jnp.any(~s["done"])

  def body(s):
    p, npp, mpp, done, nit = s["p"], s["np"], s["mp"], s["done"], s["nit"]
    grad = lin[None] + npp + mpp
    cols = _batched_lap(grad, maximize=maximize, method=lap, skip=done, prev=s["cols"])
    nq = _n_of_perm(a22t, b22, cols)
    mq = nq if symmetric else _n_of_perm(a22, b22t, cols)
    # line search on f(Q + α R), R = P − Q:  a α² + b α + const
    gq = lin[None] + nq + mq
    b_coef = jnp.sum(gq * p, axis=(1, 2)) - take(gq, cols)
    d = npp - nq
    a_coef = jnp.sum(p * d, axis=(1, 2)) - take(d, cols)
    # scipy's rule (obj_func_scalar = −1 when maximising)
    safe_a = jnp.where(a_coef == 0, 1.0, a_coef)
    crit = -b_coef / (2.0 * safe_a)
    interior = (a_coef * -sign > 0) & (crit >= 0) & (crit <= 1)
    endpoint = jnp.where((b_coef + a_coef) * -sign < 0, 1.0, 0.0)
    alpha = jnp.where(interior, crit, endpoint)
    qmat = jax.nn.one_hot(cols, q, dtype=p.dtype)
    w = alpha[:, None, None]
    p_new = w * p + (1 - w) * qmat
    np_new = w * npp + (1 - w) * nq
    mp_new = np_new if symmetric else w * mpp + (1 - w) * mq
    r_norm2 = jnp.sum(p * p, axis=(1, 2)) - 2.0 * take(p, cols) + q
    step = (1 - alpha) * jnp.sqrt(jnp.maximum(r_norm2, 0.0)) / math.sqrt(q)
    live = ~done
    lv = live[:, None, None]
    return dict(p=jnp.where(lv, p_new, p), np=jnp.where(lv, np_new, npp), mp=jnp.where(lv, mp_new, mpp),
                cols=jnp.where(live[:, None], cols, s["cols"]), nit=nit + live.astype(jnp.int32),
                done=done | (step < tol) | (nit + 1 >= maxiter))

  init = dict(p=p0, np=np0, mp=mp0, cols=jnp.zeros((r, q), jnp.int32), nit=jnp.zeros((r,), jnp.int32),
              done=jnp.zeros((r,), bool))
  out = jax.lax.while_loop(cond, body, init)
  cols = _batched_lap(out["p"], maximize=True, method=lap)
  # objective of each projected permutation, from the blocks (B[perm][:, perm] restricted to the queries)
  b22p = jax.vmap(lambda c: b22[c][:, c])(cols)
  b21p = jax.vmap(lambda c: b21[c])(cols)
  b12p = jax.vmap(lambda c: b12[:, c])(cols)
  fun = (const + jnp.sum(a22[None] * b22p, axis=(1, 2)) + jnp.sum(a21[None] * b21p, axis=(1, 2))
         + jnp.sum(a12[None] * b12p, axis=(1, 2)))
  return cols, fun, out["nit"]


# ----------------------------------------------------------------------------------------------------------------
# Public entry point.
# ----------------------------------------------------------------------------------------------------------------
def _check_square(m, name: str):
  """A square ``[n, n]`` matrix: NumPy for host data and concrete arrays (values checked), a float ``jax.Array``
  for a tracer (shape only: see :func:`faq` on why its traced values are not checked)."""
  if is_tracer(m):
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
      raise ValueError(f"{name} must be a square [n, n] matrix, got shape {m.shape}")
    return m if jnp.issubdtype(m.dtype, jnp.floating) else m.astype(jnp.float32)
  m = np.asarray(m)
  if m.ndim != 2 or m.shape[0] != m.shape[1]:
    raise ValueError(f"{name} must be a square [n, n] matrix, got shape {m.shape}")
  if not np.issubdtype(m.dtype, np.number) or not np.isfinite(m).all():
    raise ValueError(f"{name} must be a finite numeric matrix (no NaN/Inf); clean it first")
  return m


def _check_seeds(seeds, n: int) -> np.ndarray:
  if seeds is None:
    return np.zeros((0, 2), np.int64)
  s = np.asarray(seeds)
  if s.size == 0:
    return np.zeros((0, 2), np.int64)
  if s.ndim != 2 or s.shape[1] != 2:
    raise ValueError(f"seeds must be an [s, 2] array of (node of a, node of b) pairs, got shape {s.shape}")
  if not np.issubdtype(s.dtype, np.integer):
    if not np.all(np.isfinite(s)) or not np.all(s == np.round(s)):
      raise ValueError("seeds must hold integer node indices")
    s = s.astype(np.int64)
  if (s < 0).any() or (s >= n).any():
    raise ValueError(f"seeds entries must be node indices in [0, {n}); got range [{s.min()}, {s.max()}]")
  if len(np.unique(s[:, 0])) != len(s) or len(np.unique(s[:, 1])) != len(s):
    raise ValueError("seeds must not repeat a node in either column (each node is matched at most once)")
  return s.astype(np.int64)


@functools.lru_cache(maxsize=32)
def _compiled(maximize: bool, symmetric: bool, maxiter: int, tol: float, lap: str, mesh: Mesh | None,
              axis: str | None):
  core = functools.partial(_faq_core, maximize=maximize, symmetric=symmetric, maxiter=maxiter, tol=tol, lap=lap)
  if mesh is None:
    return jax.jit(core)
  rep = PS()
  fn = jax.shard_map(core, mesh=mesh, in_specs=(PS(axis),) + (rep,) * 8, out_specs=(PS(axis), PS(axis), PS(axis)),
                     check_vma=False)
  return jax.jit(fn)


def _place(x: jax.Array, mesh: Mesh, axis_name: str, spec: PS) -> jax.Array:
  """``x`` laid out as ``spec`` over ``mesh`` inside a trace: ``reshard`` if ``axis_name`` is an explicit axis,
  a sharding constraint if it is an automatic one."""
  sharding = jax.sharding.NamedSharding(mesh, spec)
  if mesh.axis_types[mesh.axis_names.index(axis_name)] == jax.sharding.AxisType.Explicit:
    return jax.sharding.reshard(x, sharding)
  return jax.lax.with_sharding_constraint(x, sharding)


def faq(a: ArrayLike, b: ArrayLike, *, seeds: ArrayLike | None = None, n_init: int = 1, maxiter: int = 30,
        tol: float = 1e-5, maximize: bool = True, key: jax.Array | None = None, lap: str = "scipy",
        batch_size: int | None = None, mesh: Mesh | None = None, axis_name: str | None = None,
        symmetric: bool | None = None) -> FAQResult:
  r"""Seeded FAQ graph matching with ``n_init`` batched random restarts; keeps the best.

  **Traceable.** Called eagerly, ``faq`` returns NumPy results with scipy's types (``col_ind`` int64, ``fun`` a
  float64 recomputed on the host). Called with traced ``a``, ``b`` or ``key`` (inside ``jax.jit``), it returns the
  same fields as ``jax.Array`` (``col_ind`` int32, ``fun`` in the inputs' float dtype), with the same permutation
  as the eager call for the same key. ``seeds`` and every option are static host values. With ``lap="scipy"`` the
  compiled loop calls scipy on the host through :func:`jax.pure_callback`; ``"auction"`` and ``"hungarian"`` are
  pure XLA. NaN/Inf raise for host data and concrete jax arrays; traced inputs are not value-checked at all, not
  even under ``jax.experimental.checkify.checkify``, which cannot transform FAQ's batched while-loops (the vmapped
  Sinkhorn balancing of the starts, the auction): check ``a`` and ``b`` before the jitted call.

  FAQ :cite:p:`vogelstein2015faq` with seeds :cite:p:`fishkind2019seeded`, as used for training-free
    matching by :cite:t:`maniparambil2024vision`.

  Args:
    a: ``[n, n]`` matrix of the first graph (e.g. a centred kernel of ``n`` points of space X).
    b: ``[n, n]`` matrix of the second graph.
    seeds: ``[s, 2]`` int pairs ``(i, j)``: node ``i`` of ``a`` is fixed to node ``j`` of ``b`` (scipy's
      ``partial_match``). ``None`` for unseeded matching. Host data (the block structure depends on it).
    n_init: number of random restarts (scipy's ``P0="randomized"``, :math:`(J + K)/2`).
    maxiter: Frank–Wolfe iterations per restart at most.
    tol: stop a restart once :math:`\|P_t - P_{t+1}\|_F / \sqrt{q} <` ``tol`` (scipy's test).
    maximize: maximise (graph matching) rather than minimise (QAP) the objective.
    key: PRNG key of the random starts (default ``jax.random.key(0)``).
    lap: linear assignment solver, ``"scipy"`` (host callback, fast on CPU), ``"hungarian"`` or ``"auction"``
      (pure XLA), or ``"auto"`` (:func:`resolve_lap`); see :func:`linear_assignment`.
    batch_size: restarts per batched call (default: all at once). Memory is ``≈ 8 · batch · q² · 4`` bytes.
    mesh: optional device mesh; restarts of each batch are split over its ``axis_name`` axis. ``batch_size``
      must then be a multiple of that axis' size, unless it covers all ``n_init`` restarts: that one batch is
      padded to the axis size and the padding dropped.
    axis_name: mesh axis of the restarts (default: the mesh's first axis).
    symmetric: whether both matrices are symmetric, which saves one of the two GEMMs per Frank–Wolfe step
      (``True`` also symmetrises them). ``None`` (default) tests it on concrete inputs; traced inputs, whose
      values are unknown, then take the general path, which gives the same result up to float32 rounding.

  Returns:
    :class:`FAQResult` with the best restart's ``col_ind`` and ``fun`` (scipy's conventions) and per-restart
    objectives and iteration counts.
  """
  if is_tracer(seeds):
    raise TypeError("faq: `seeds` must be host data (an [s, 2] int array), not a traced value: the seeded and free "
                    "blocks of the problem have static shapes")
  traced = any(is_tracer(v) for v in (a, b, key))
  a = _check_square(a, "a")
  b = _check_square(b, "b")
  if a.shape != b.shape:
    raise ValueError(f"a and b must have the same shape, got {a.shape} and {b.shape}")
  n = a.shape[0]
  if n == 0:
    raise ValueError("a and b must not be empty")
  s = _check_seeds(seeds, n)
  for name, v, lo in (("n_init", n_init, 1), ("maxiter", maxiter, 1)):
    if not isinstance(v, (int, np.integer)) or v < lo:
      raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
  if not tol > 0:
    raise ValueError(f"tol must be positive, got {tol!r}")
  lap = resolve_lap(lap)
  if batch_size is None:
    batch_size = n_init
  if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
    raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
  batch_size = min(batch_size, n_init)
  if mesh is not None:
    axis_name = axis_name or mesh.axis_names[0]
    if axis_name not in mesh.axis_names:
      raise ValueError(f"axis_name {axis_name!r} is not an axis of mesh {mesh.axis_names}")
    split = mesh.shape[axis_name]
    if batch_size == n_init:  # all restarts in one call: pad it to the axis size (the padding is dropped)
      batch_size = -(-n_init // split) * split
    if batch_size % split:
      raise ValueError(f"batch_size = {batch_size} must be a multiple of the mesh axis size "
                       f"{mesh.shape[axis_name]}")
  key = jax.random.key(0) if key is None else key
  xp = jnp if traced else np
  a, b = xp.asarray(a), xp.asarray(b)

  ns = len(s)
  q = n - ns
  if q <= 1:  # nothing (or a single node) left to match
    col = np.empty(n, np.int64)
    col[s[:, 0]] = s[:, 1]
    rest_a = np.setdiff1d(np.arange(n), s[:, 0])
    col[rest_a] = np.setdiff1d(np.arange(n), s[:, 1])
    if traced:
      fun = jnp.sum(a * b[col][:, col])
      return FAQResult(jnp.asarray(col, jnp.int32), fun, jnp.full(n_init, fun, jnp.float32),
                       jnp.zeros(n_init, jnp.int32))
    fun = float(np.sum(a * b[col][:, col]))
    return FAQResult(col, fun, np.full(n_init, fun, np.float32), np.zeros(n_init, np.int32))

  nonseed_a = np.setdiff1d(np.arange(n), s[:, 0])
  nonseed_b = np.setdiff1d(np.arange(n), s[:, 1])
  perm_a = np.concatenate([s[:, 0], nonseed_a])
  perm_b = np.concatenate([s[:, 1], nonseed_b])
  ap = a[np.ix_(perm_a, perm_a)].astype(np.float32)
  bp = b[np.ix_(perm_b, perm_b)].astype(np.float32)
  if symmetric is None:
    symmetric = not traced and bool(
        np.allclose(ap, ap.T, rtol=1e-6, atol=1e-7 * float(np.abs(ap).max() + 1e-30)) and
        np.allclose(bp, bp.T, rtol=1e-6, atol=1e-7 * float(np.abs(bp).max() + 1e-30)))
  if symmetric:
    ap, bp = 0.5 * (ap + ap.T), 0.5 * (bp + bp.T)
  blocks = [jnp.asarray(x) for x in (ap[:ns, :ns], ap[:ns, ns:], ap[ns:, :ns], ap[ns:, ns:],
                                     bp[:ns, :ns], bp[:ns, ns:], bp[ns:, :ns], bp[ns:, ns:])]
  fn = _compiled(bool(maximize), bool(symmetric), int(maxiter), float(tol), lap, mesh, axis_name)

  keys = jax.random.split(key, n_init)
  cols_all, fun_all, nit_all = [], [], []
  for start in range(0, n_init, batch_size):
    kb = keys[start:start + batch_size]
    pad = batch_size - kb.shape[0]
    if pad:  # keep one compiled shape (and the mesh divisibility) for the last batch
      kb = jnp.concatenate([kb, jax.random.split(jax.random.fold_in(key, start), pad)])
    if mesh is not None and traced:
      kb = _place(kb, mesh, axis_name, PS(axis_name))
    elif mesh is not None:
      kb = jax.device_put(kb, jax.sharding.NamedSharding(mesh, PS(axis_name)))
    out = fn(kb, *blocks)
    keep = batch_size - pad
    if not traced:  # eager: host arrays, whatever the sharding
      out = [np.asarray(v)[:keep] for v in jax.device_get(out)]
    else:
      if mesh is not None:  # replicated, so that the best restart can be picked (and the padding dropped)
        out = [_place(v, mesh, axis_name, PS()) for v in out]
      out = [v[:keep] for v in out]
    for acc, v in zip((cols_all, fun_all, nit_all), out):
      acc.append(v)
  cols, fun, nit = (xp.concatenate(v) for v in (cols_all, fun_all, nit_all))

  if traced:
    best = jnp.argmax(fun) if maximize else jnp.argmin(fun)
    perm = jnp.concatenate([jnp.arange(ns, dtype=jnp.int32), cols[best] + ns])
    col_ind = jnp.zeros(n, jnp.int32).at[perm_a].set(jnp.asarray(perm_b, jnp.int32)[perm])
    return FAQResult(col_ind, jnp.sum(a * b[col_ind][:, col_ind]), fun, nit)
  best = int(np.argmax(fun) if maximize else np.argmin(fun))
  perm = np.concatenate([np.arange(ns), cols[best] + ns])
  col_ind = np.empty(n, np.int64)
  col_ind[perm_a] = perm_b[perm]
  best_fun = float(np.sum(a.astype(np.float64) * b.astype(np.float64)[col_ind][:, col_ind]))
  return FAQResult(col_ind, best_fun, fun, nit)
