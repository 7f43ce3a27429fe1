r"""Trained aligners: heads initialised from a closed-form teacher, SigLIP on the pairs + α · an unpaired term.

Every method here is one recipe (:func:`fit_heads`) with a different unpaired term
(:data:`sotalign_jax.objectives.UNPAIRED_TERMS`) and different defaults:

==================  =====================================================================  ==================
name                method                                                                 unpaired term
==================  =====================================================================  ==================
``sail``            SAIL: SigLIP on the pairs only (Zhang et al., CVPR 2025)               none
``sail_semi``       semi-supervised SAIL: unpaired rows as extra SigLIP negatives          ``extra_negatives``
``structure``       STRUCTURE regulariser (Gröger et al. 2025)                             ``structure``
``pseudo_label``    S-CLIP-style soft pseudo-captions from the teacher's OT plan           ``pseudo_label``
                    (Mo et al., NeurIPS 2023)
``nnclr``           NNCLR-style nearest-neighbour positives (Dwibedi et al., ICCV 2021)    ``nn_positives``
``sotalign``        SOTAlign, this project's recipe (AdamW, 600 steps, α = 10)             ``klot``
``sotalign_paper``  SOTAlign, the paper's recipe (Roschmann et al. 2026, App. A.1), α      ``klot``
                    chosen on the validation pairs from ``alpha_grid``
``upper_bound``     SAIL on every training pair (the protocol gives it all of them)        none
==================  =====================================================================  ==================

The recipe (:func:`fit_heads`):

1. **Preprocessing.** Each side is centred with the mean of its rows (``center``, as every aligner:
   :mod:`sotalign_jax.aligners.base`) and, with ``normalize``, scaled to unit norm.
2. **Teacher.** A closed-form map fitted on the preprocessed pairs (``teacher``: ``cca`` | ``ridge`` |
   ``procrustes``, :mod:`sotalign_jax.teachers`), the same map as the registry's aligner of that name with the same
   options; the heads start *at* it (:func:`sotalign_jax.nn.heads.init_head`): a linear head is
   :math:`(\hat x) W + b`, an ``mlp`` head adds a residual MLP whose output layer starts at zero.
3. **Steps.** Each step draws a paired batch (all pairs when ``batch_paired >= p``, else ``batch_paired`` without
   replacement) and, for methods with an unpaired term, ``batch_unpaired`` images and as many texts *with
   replacement* — an O(batch) draw however large the pool (the whole pool when it is no larger than the batch) —
   and minimises :func:`sotalign_jax.losses.siglip_loss` + α · term, SigLIP's temperature and bias learned
   (initialised at ``siglip_t`` and ``siglip_b``). Step ``i`` uses ``fold_in(key, i)``
   (:func:`sotalign_jax.nn.optim.step_with_rng`). The step returns its metrics: the loss, both parts, the gradient,
   parameter and update norms, SigLIP's temperature and bias, and the term's diagnostics (``klot``: both Sinkhorn
   plans' marginal errors and ``klot/converged``, :func:`sotalign_jax.objectives.klot_term`), which a logging loop
   writes as ``train/<method>/<metric>``.
4. **Loop.** ``loop(state, step_fn, data, key=, steps=, name=)``: :func:`sotalign_jax.nn.optim.plain_loop` by default
   (in memory); the experiments pass :func:`sotalign_jax.runtime.train.train_loop` with its run directory bound,
   which adds logging, NaN checks, Orbax checkpoints and resume — the same updates either way.
5. **Devices.** With ``mesh`` (a 1-D ``("data",)`` mesh), the pools are row-sharded over it (zero-padded; only
   real rows are drawn; each process places only the rows its devices hold) and the batches are constrained to
   ``P("data")``; the state is replicated.

``loop`` and ``mesh`` are not hyperparameters: :func:`sotalign_jax.aligners.fit` passes them through, and they
change where the computation runs and what is written, never the result.

What α means here: :func:`~sotalign_jax.losses.siglip_loss` is Zhai et al.'s Algorithm 1, a sum over the
:math:`p^2` entries divided by :math:`p` (≈ 10 at initialisation, dominated by the positives), and KLOT is a KL
divergence between two transport plans that each sum to one, :math:`O(1)`; so this project's α = 10 gives the
unpaired term a weight comparable to the pair loss. The paper's grid {1e-3, 1e-4, 1e-5} is kept as
``sotalign_paper``'s default ``alpha_grid`` because the paper does not say how its SigLIP is normalised (a mean
over entries would make the pair loss :math:`p` times smaller, and its α correspondingly larger in effect);
``alpha_grid`` is overridable and ``sotalign_paper`` records the α it chose.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np
import optax
from flax.training import train_state

from sotalign_jax import losses, objectives, teachers
from sotalign_jax._arrays import DEFAULT_PRECISION
from sotalign_jax.aligners.base import AlignData, Alignment, check_queries, preprocess, register, static_field
from sotalign_jax.nn.heads import AlignmentHead, init_head
from sotalign_jax.nn.optim import Loop, make_optimizer, plain_loop

__all__ = ["HeadsAlignment", "fit_heads", "TRAINED_METHODS", "RECIPE_DEFAULTS", "PAPER_RECIPE", "folded_heads"]

TEACHERS = teachers.TEACHERS  # the names of teachers.fit

RECIPE_DEFAULTS: dict[str, Any] = dict(
    steps=600, optimizer="adamw", lr=1e-3, weight_decay=1e-4, warmup_steps=50, batch_paired=256,
    batch_unpaired=512, head="linear", hidden=512, siglip_t=10.0, siglip_b=-10.0, teacher="cca", teacher_dim=256,
    teacher_reg=0.1, ridge_lam=10.0, center="all", normalize=True)
"""This project's recipe (``experiments/sotalign.py``'s defaults), shared by every trained method."""

PAPER_RECIPE: dict[str, Any] = dict(
    RECIPE_DEFAULTS, steps=2000, optimizer="lion", lr=1e-4, weight_decay=1e-5, warmup_steps=0, batch_paired=10_000,
    batch_unpaired=22_000, siglip_t=20.0, siglip_b=-10.0, teacher_dim=1024)
"""The recipe of SOTAlign's App. A.1 (Lion, cosine schedule, lr 1e-4, weight decay 1e-5, 2,000 iterations, SigLIP scale
20 and bias −10 (learned), batches of up to 32k = up to 10k pairs + unpaired fill, heads into d = 1024 (here: the CCA
teacher's dimension, capped by the pairs and the feature sizes)); :cite:p:`roschmann2026sotalign`."""


# ----------------------------------------------------------------------------------------------------------------
# The fitted alignment.
# ----------------------------------------------------------------------------------------------------------------
@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class HeadsAlignment(Alignment):
  """Two trained heads on preprocessed features: ``embed_x(x) = f(pre(x − m_x))``, ``embed_y(y) = g(pre(y − m_y))``.

  Attributes:
    params: ``{"f": image-head params, "g": text-head params}`` (:class:`sotalign_jax.nn.heads.AlignmentHead`).
    mx: ``[dx]`` x-side centring vector; ``my``: ``[dy]``.
    normalize: rows are scaled to unit norm after centring (static).
    hidden: the heads' MLP width, 0 for linear heads (static).
    info: what the fit chose (e.g. ``sotalign_paper``'s α), as a tuple of ``(name, value)`` (static).
  """
  params: dict
  mx: jax.Array
  my: jax.Array
  normalize: bool = static_field(True)
  hidden: int = static_field(0)
  info: tuple = static_field(())

  def _head(self, side: str):
    return AlignmentHead(dim=self.params[side]["linear"]["kernel"].shape[1], hidden=self.hidden)

  def _embed_x(self, x) -> jax.Array:
    x = preprocess(check_queries(x, self.mx.shape[0], "x"), self.mx, self.normalize)
    return self._head("f").apply({"params": self.params["f"]}, x)

  def _embed_y(self, y) -> jax.Array:
    y = preprocess(check_queries(y, self.my.shape[0], "y"), self.my, self.normalize)
    return self._head("g").apply({"params": self.params["g"]}, y)


def folded_heads(a: HeadsAlignment) -> dict:
  """The heads with the centring folded into the first layers' biases, so they apply to *raw* features
  (:func:`sotalign_jax.nn.heads.save_heads` format). Only for ``normalize=False`` (a unit-norm step cannot fold)."""
  if a.normalize:
    raise ValueError("folded_heads needs normalize=False: unit-norm preprocessing cannot be folded into a bias")
  out = {}
  for side, m in (("f", a.mx), ("g", a.my)):
    p = dict(a.params[side])
    for layer in [k for k in ("linear", "mlp_in") if k in p]:
      p[layer] = dict(p[layer], bias=p[layer]["bias"] - m @ p[layer]["kernel"])
    out[side] = p
  return out


# ----------------------------------------------------------------------------------------------------------------
# Data placement and sampling.
# ----------------------------------------------------------------------------------------------------------------
def _place(a, mesh: Mesh | None):
  """``(array, n_real_rows)``: ``a`` on the device(s) — row-sharded over ``mesh`` and zero-padded to a multiple of its
  size (each process reads only the rows its devices hold), or as it is without a mesh."""
  n = int(np.shape(a)[0])
  if mesh is None:
    return jnp.asarray(a, jnp.float32), n
  s = mesh.devices.size
  rows = max(-(-n // s) * s, s)
  sharding = NamedSharding(mesh, P("data"))

  def block(index):
    lo, hi, _ = index[0].indices(rows)
    out = np.zeros((hi - lo, np.shape(a)[1]), np.float32)
    if lo < n:
      out[:min(hi, n) - lo] = np.asarray(a[lo:min(hi, n)], np.float32)
    return out

  return jax.make_array_from_callback((rows, int(np.shape(a)[1])), sharding, block), n


def _draw(key, n: int, b: int, *, replace: bool):
  """Indices of one batch among the first ``n`` rows: all of them if ``b >= n``, else ``b`` drawn — uniformly with
  replacement (``randint``: O(b), for pools of any size) or without (``choice``: for the pairs)."""
  if b >= n:
    return jnp.arange(n)
  if replace:
    return jax.random.randint(key, (b,), 0, n)
  return jax.random.choice(key, n, (b,), replace=False)


# ----------------------------------------------------------------------------------------------------------------
# The recipe.
# ----------------------------------------------------------------------------------------------------------------
def _side_mean(pool, n_pool: int, pairs, center: str):
  if center == "none":
    return jnp.zeros((pairs.shape[1],), jnp.float32)
  if center == "pairs" or n_pool == 0:
    return pairs.mean(0)
  if center != "all":
    raise ValueError(f"center must be one of ('all', 'pairs', 'none'), got {center!r}")
  return (jnp.sum(pool, 0) + jnp.sum(pairs, 0)) / (n_pool + pairs.shape[0])  # zero padding adds nothing


def _train_step(state, data, rng, *, f, g, term, alpha, sizes, batch_paired, batch_unpaired, normalize, sharding,
                uses_unpaired):
  kp, kx, ky = jax.random.split(rng, 3)
  n_pairs, n_ux, n_uy = sizes
  constrain = (lambda a: a) if sharding is None else (lambda a: jax.lax.with_sharding_constraint(a, sharding))
  ip = _draw(kp, n_pairs, batch_paired, replace=False)
  xp, yp = constrain(data["pair_x"][ip]), constrain(data["pair_y"][ip])
  pre = lambda a, side: preprocess(a, data["m" + side], normalize)  # noqa: E731
  if uses_unpaired:
    xu = constrain(data["unp_x"][_draw(kx, n_ux, batch_unpaired, replace=True)])
    yu = constrain(data["unp_y"][_draw(ky, n_uy, batch_unpaired, replace=True)])

  def loss_fn(params):
    fx = lambda a: f.apply({"params": params["f"]}, pre(a, "x"))  # noqa: E731
    gy = lambda a: g.apply({"params": params["g"]}, pre(a, "y"))  # noqa: E731
    zxp, zyp = fx(xp), gy(yp)
    pair_loss = losses.siglip_loss(zxp, zyp, t_log=params["t_log"], bias=params["bias"])
    if not uses_unpaired:
      return pair_loss, {"pair_loss": pair_loss, "unpaired_loss": jnp.zeros(())}
    mm = lambda a, w: jnp.matmul(a, w, precision=DEFAULT_PRECISION)  # noqa: E731
    batch = objectives.UnpairedBatch(
        xu, yu, fx(xu), gy(yu), mm(pre(xu, "x"), data["teacher_wx"]), mm(pre(yu, "y"), data["teacher_wy"]),
        jnp.exp(params["t_log"]), params["bias"], xp, yp, zxp, zyp)
    unpaired_loss, diagnostics = term(batch)
    return pair_loss + alpha * unpaired_loss, {"pair_loss": pair_loss, "unpaired_loss": unpaired_loss,
                                               **diagnostics}

  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  new_state = state.apply_gradients(grads=grads)
  updates = jax.tree.map(lambda a, b: a - b, new_state.params, state.params)
  return new_state, {"loss": loss, **aux, "grad_norm": optax.tree.norm(grads),
                     "param_norm": optax.tree.norm(state.params), "update_norm": optax.tree.norm(updates),
                     "temperature": jnp.exp(state.params["t_log"]), "bias": state.params["bias"]}


def fit_heads(key: jax.Array, data: AlignData, *, term: str = "none", term_options: dict | None = None,
              alpha: float = 0.0, loop: Loop | None = None, mesh: Mesh | None = None, steps: int, optimizer: str,
              lr: float, weight_decay: float, warmup_steps: int, batch_paired: int, batch_unpaired: int, head: str,
              hidden: int, siglip_t: float, siglip_b: float, teacher: str, teacher_dim: int, teacher_reg: float,
              ridge_lam: float, center: str, normalize: bool, info: tuple = (), run_name: str = "") -> HeadsAlignment:
  """Fits two heads by the recipe of the module docstring; every trained method calls this.

  Args:
    key: PRNG key (head initialisation and every step's draws).
    data: :class:`AlignData`; the paired batch comes from ``data.pairs_*``, the unpaired one from ``data.x`` /
      ``data.y`` (which a term needs non-empty).
    term: a key of :data:`sotalign_jax.objectives.UNPAIRED_TERMS`; ``term_options`` its keyword options.
    alpha: weight of the term.
    loop: ``loop(state, step_fn, data, key=, steps=, name=) -> state`` (default
      :func:`~sotalign_jax.nn.optim.plain_loop`).
    mesh: a 1-D ``("data",)`` mesh to shard the pools and batches over (default: no sharding).
    steps, optimizer, lr, weight_decay, warmup_steps: the optimiser (:func:`sotalign_jax.nn.optim.make_optimizer`).
    batch_paired, batch_unpaired: batch sizes (capped by the pools).
    head: ``"linear"`` | ``"mlp"``; ``hidden`` the MLP width.
    siglip_t, siglip_b: SigLIP's initial temperature :math:`e^{t'}` and bias.
    teacher, teacher_dim, teacher_reg, ridge_lam: the closed-form teacher the heads start from.
    center, normalize: preprocessing (:mod:`sotalign_jax.aligners.base`).
    info: recorded in the returned alignment.
    run_name: passed to ``loop`` as ``name=`` (one fit of several, e.g. one α of a grid, gets its own run).
  """
  if head not in ("linear", "mlp"):
    raise ValueError(f"head must be 'linear' or 'mlp', got {head!r}")
  if term not in objectives.UNPAIRED_TERMS:
    raise ValueError(f"unknown unpaired term {term!r}; known: {sorted(objectives.UNPAIRED_TERMS)}")
  for name, v in (("steps", steps), ("batch_paired", batch_paired), ("batch_unpaired", batch_unpaired)):
    if int(v) < 1:
      raise ValueError(f"{name} must be >= 1, got {v!r}")
  uses_unpaired = term != "none"
  if uses_unpaired and (np.shape(data.x)[0] == 0 or np.shape(data.y)[0] == 0):
    raise ValueError(f"the unpaired term {term!r} needs unpaired images and texts; got {np.shape(data.x)[0]} and "
                     f"{np.shape(data.y)[0]} rows (give AlignData(x=..., y=...) or use a method without one)")
  repl = None if mesh is None else NamedSharding(mesh, P())
  put = (lambda a: a) if repl is None else (lambda a: jax.device_put(a, repl))
  px, py = put(jnp.asarray(data.pairs_x, jnp.float32)), put(jnp.asarray(data.pairs_y, jnp.float32))
  ux, nux = _place(data.x if uses_unpaired or center == "all" else np.zeros((0, px.shape[1]), np.float32), mesh)
  uy, nuy = _place(data.y if uses_unpaired or center == "all" else np.zeros((0, py.shape[1]), np.float32), mesh)
  mx, my = _side_mean(ux, nux, px, center), _side_mean(uy, nuy, py, center)
  tpx, tpy = preprocess(px, mx, normalize), preprocess(py, my, normalize)
  t = teachers.fit(teacher, tpx, tpy, dim=min(int(teacher_dim), tpx.shape[0] - 1, tpx.shape[1], tpy.shape[1]),
                   reg=teacher_reg, lam=ridge_lam, center=False)
  wx, wy = t.wx, t.wy

  kf, kg, key = jax.random.split(key, 3)
  width = int(hidden) if head == "mlp" else 0
  f, pf = init_head(kf, wx, jnp.zeros((wx.shape[0],)), hidden=width)
  g, pg = init_head(kg, wy, jnp.zeros((wy.shape[0],)), hidden=width)
  params = {"f": pf, "g": pg, "t_log": jnp.log(jnp.float32(siglip_t)), "bias": jnp.float32(siglip_b)}
  tx = make_optimizer(optimizer, lr=lr, weight_decay=weight_decay, warmup_steps=int(warmup_steps), steps=int(steps))
  state = train_state.TrainState.create(apply_fn=None, params=params, tx=tx)

  pools = {"pair_x": px, "pair_y": py, "unp_x": ux, "unp_y": uy, "mx": put(mx), "my": put(my),
           "teacher_wx": put(wx), "teacher_wy": put(wy)}
  term_fn = objectives.UNPAIRED_TERMS[term]
  term_options = dict(term_options or {})
  if "mesh" in inspect.signature(term_fn).parameters:  # a term that can split its [n, m] matrices over the mesh
    term_options["mesh"] = mesh
  step_fn = functools.partial(
      _train_step, f=f, g=g, term=functools.partial(term_fn, **term_options),
      alpha=float(alpha), sizes=(int(px.shape[0]), nux, nuy), batch_paired=int(batch_paired),
      batch_unpaired=int(batch_unpaired), normalize=bool(normalize),
      sharding=None if mesh is None else NamedSharding(mesh, P("data")), uses_unpaired=uses_unpaired)
  state = (loop or plain_loop)(state, step_fn, pools, key=key, steps=int(steps), name=run_name)
  return HeadsAlignment({"f": state.params["f"], "g": state.params["g"]}, mx, my, bool(normalize), width,
                        tuple(info))


# ----------------------------------------------------------------------------------------------------------------
# The registered methods.
# ----------------------------------------------------------------------------------------------------------------
_SAIL = ("Zhang, Lü, Feng et al., 'Assessing and Learning Alignment of Unimodal Vision and Language Models' (SAIL), "
         "CVPR 2025")
_SOTALIGN = "Roschmann, Krzakala, Mazelet, Bouniot, Akata, 'SOTAlign', ICML 2026 (arXiv 2602.23353)"

# name -> (term, term defaults (alpha included), recipe, citation, summary)
TRAINED_METHODS: dict[str, tuple] = {
    "sail": ("none", {}, RECIPE_DEFAULTS, _SAIL, "SigLIP on the pairs only"),
    "sail_semi": ("extra_negatives", {"alpha": 1.0}, RECIPE_DEFAULTS,
                  _SAIL + "; semi-supervised variant as the SOTAlign paper's baseline",
                  "SigLIP with the unpaired rows as extra negatives"),
    "structure": ("structure", {"alpha": 1.0, "temperature": 0.05}, RECIPE_DEFAULTS,
                  "Gröger, Wen, Le, Brbić, 'With Limited Data for Multimodal Alignment, Let the STRUCTURE Guide "
                  "You', arXiv 2506.16895, 2025", "SigLIP + the STRUCTURE neighbourhood regulariser"),
    "pseudo_label": ("pseudo_label", {"alpha": 1.0, "eps": 0.005}, RECIPE_DEFAULTS,
                     "Mo, Kim, Lee, Kim, Shin, 'S-CLIP: Semi-supervised Vision-Language Learning using Few "
                     "Specialist Captions', NeurIPS 2023", "SigLIP + soft OT pseudo-captions of the teacher"),
    "nnclr": ("nn_positives", {"alpha": 1.0}, RECIPE_DEFAULTS,
              "Dwibedi, Aytar, Tompson, Sermanet, Zisserman, 'With a Little Help from My Friends: Nearest-Neighbor "
              "Contrastive Learning of Visual Representations', ICCV 2021", "SigLIP + nearest-neighbour positives"),
    "sotalign": ("klot", {"alpha": 10.0, "eps_student": 0.05, "eps_teacher": 0.005, "sinkhorn_iters": 100,
                          "shard_klot": False},
                 RECIPE_DEFAULTS, _SOTALIGN + "; this project's recipe", "SigLIP + α · KLOT to the teacher"),
    "upper_bound": ("none", {}, RECIPE_DEFAULTS, _SAIL + "; trained on every training pair",
                    "SigLIP on every training pair (the protocol's upper bound)"),
}


def _make_fit(name: str, term: str, term_defaults: dict, recipe: dict, summary: str):
  term_keys = tuple(k for k in term_defaults if k != "alpha")

  def fit_fn(key, data, *, loop=None, mesh=None, **hp):
    hp = {**term_defaults, **recipe, **hp}
    alpha = hp.pop("alpha", 0.0)
    options = {k: hp.pop(k) for k in term_keys}
    return fit_heads(key, data, term=term, term_options=options, alpha=alpha, loop=loop, mesh=mesh, **hp)

  params = [inspect.Parameter("key", inspect.Parameter.POSITIONAL_OR_KEYWORD),
            inspect.Parameter("data", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
  params += [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=v)
             for k, v in {**term_defaults, **recipe}.items()]
  params += [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=None) for k in ("loop", "mesh")]
  fit_fn.__signature__ = inspect.Signature(params)
  fit_fn.__name__ = fit_fn.__qualname__ = f"fit_{name}"
  fit_fn.__doc__ = (f"{summary}: :func:`fit_heads` with the unpaired term ``{term!r}``.\n\nDefaults: "
                    + ", ".join(f"``{k}={v!r}``" for k, v in {**term_defaults, **recipe}.items()) + ".")
  return fit_fn

for _name, (_term, _tdef, _recipe, _cite, _summary) in TRAINED_METHODS.items():
  register(_name, needs_pairs=True, uses_unpaired=_term != "none", min_pairs=2, citation=_cite, trained=True,
           all_pairs=_name == "upper_bound")(_make_fit(_name, _term, _tdef, _recipe, _summary))


@register("sotalign_paper", needs_pairs=True, uses_unpaired=True, min_pairs=2, trained=True,
          citation=_SOTALIGN + "; the paper's recipe, App. A.1")
def fit_sotalign_paper(key, data: AlignData, *, alpha_grid: tuple = (1e-3, 1e-4, 1e-5), eps_student: float = 0.05,
                       eps_teacher: float = 0.01, sinkhorn_iters: int = 100, shard_klot: bool = False,
                       steps: int = PAPER_RECIPE["steps"],
                       optimizer: str = "lion", lr: float = 1e-4, weight_decay: float = 1e-5, warmup_steps: int = 0,
                       batch_paired: int = 10_000, batch_unpaired: int = 22_000, head: str = "linear",
                       hidden: int = 512, siglip_t: float = 20.0, siglip_b: float = -10.0, teacher: str = "cca",
                       teacher_dim: int = 1024, teacher_reg: float = 0.1, ridge_lam: float = 10.0,
                       center: str = "all", normalize: bool = True, val: AlignData | None = None, loop=None,
                       mesh=None) -> HeadsAlignment:
  r"""SOTAlign with the paper's recipe (Roschmann et al. 2026, App. A.1): Lion, cosine schedule, lr 1e-4, weight
  decay 1e-5, 2,000 iterations, SigLIP scale 20 and bias −10 (learned), Sinkhorn 100 iterations, ε = 0.05 (student),
  ε* = 0.01 (teacher), batches of up to 32k made of up to 10k pairs and 22k unpaired rows (capped by the pools),
  α chosen from ``alpha_grid`` by the mean R@1 of both directions on ``val`` (held-out pairs the benchmark passes).

  ``shard_klot=True`` keeps the KLOT matrices of a 22k unpaired batch split by rows over ``mesh``
  (:func:`sotalign_jax.ot.klot_sharded`), for batches whose ``[n, m]`` matrices do not fit on one device.

  With one α in the grid, or no ``val``, the first α is used. The chosen α and every α's validation score are in
  the returned alignment's ``info``. See the module docstring for what α means under this project's SigLIP.
  """
  recipe = dict(steps=steps, optimizer=optimizer, lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps,
                batch_paired=batch_paired, batch_unpaired=batch_unpaired, head=head, hidden=hidden,
                siglip_t=siglip_t, siglip_b=siglip_b, teacher=teacher, teacher_dim=teacher_dim,
                teacher_reg=teacher_reg, ridge_lam=ridge_lam, center=center, normalize=normalize)
  options = dict(eps_student=eps_student, eps_teacher=eps_teacher, sinkhorn_iters=sinkhorn_iters,
                 shard_klot=bool(shard_klot))
  grid = tuple(float(a) for a in (alpha_grid if isinstance(alpha_grid, (tuple, list)) else (alpha_grid,)))
  if not grid:
    raise ValueError("alpha_grid is empty: give at least one α")
  if len(grid) == 1 or val is None or val.n_pairs < 2:
    return fit_heads(key, data, term="klot", term_options=options, alpha=grid[0], loop=loop, mesh=mesh,
                     info=(("alpha", grid[0]),), **recipe)
  best, scores = None, []
  for i, alpha in enumerate(grid):
    a = fit_heads(key, data, term="klot", term_options=options, alpha=alpha, loop=loop, mesh=mesh,
                  run_name=f"alpha{i}", **recipe)
    score = _val_r1(a, val)
    scores.append(score)
    if best is None or score > best[0]:
      best = (score, alpha, a)
  _, alpha, a = best
  return dataclasses.replace(a, info=(("alpha", alpha), ("val_mean_r1", tuple(zip(grid, scores)))))


def _val_r1(a: Alignment, val: AlignData) -> float:
  """Mean R@1 of both directions on row-aligned validation pairs (row i's partner is column i)."""
  sim = np.asarray(a.similarity(val.pairs_x, val.pairs_y))
  hit = np.arange(sim.shape[0])
  return float(0.5 * (np.mean(sim.argmax(1) == hit) + np.mean(sim.argmax(0) == hit)))

