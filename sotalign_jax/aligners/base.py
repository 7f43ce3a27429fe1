r"""The interface every aligner shares: the data it is fitted on, the fitted ``Alignment``, the registry by name.

A method is a pure ``fit(key, data, **hparams) -> Alignment``:

* :class:`AlignData` — unpaired images ``x`` and texts ``y`` (independent samples, either may be empty) and the
  row-aligned pairs ``(pairs_x, pairs_y)`` (possibly none).
* :class:`Alignment` — a pytree (arrays as leaves, options as static metadata, so it passes through ``jit``) that
  maps queries and keys into one shared space, ``embed_x(x) -> [n, k]``, ``embed_y(y) -> [m, k]``, and scores them,
  ``similarity(qx, ky) -> [n, m]`` (cosine of the embeddings unless the method says otherwise). Training-free scorers
  without a shared space (local CKA) implement only ``similarity`` and set ``has_embeddings = False``. A
  *transductive* method (``AlignerSpec.transductive``: seeded graph matching, ``qap``) solves one joint problem
  over the given query sets, so the score of a row depends on the other rows: evaluators must call its
  ``similarity`` on the exact evaluation sets (never in chunks), and it has no ``embed_x`` / ``embed_y``.
* :data:`ALIGNERS` — ``name -> AlignerSpec``; :func:`fit` looks a method up, fills its defaults, rejects unknown
  options and raises :class:`NeedsPairsError` (a ``ValueError``) when there are fewer pairs than the method needs, so
  a benchmark can mark the cell "needs pairs" instead of reporting a made-up chance score.

Preprocessing shared by the methods (``center``): every side is centred with a mean estimated on the rows the
method is given — ``"all"`` (default) the unpaired *and* paired rows of that side, ``"pairs"`` the pairs only
(:func:`sotalign_jax.teachers.fit`'s convention), ``"none"``. The mean is a label-free statistic, so it is
preprocessing, not learning from unpaired data: ``AlignerSpec.uses_unpaired`` marks methods whose *fit* learns from
unpaired rows (semi-supervised ones). Centring with the larger pool is what makes one or two pairs usable at all
(with ``"pairs"``, a single centred pair is zero). The same convention is used by unpaired-rosetta
(Schnaus et al.), whose baselines centre with the unpaired training mean.

The training-free matching aligners (``relative``, ``local_cka``, ``ridge``, ``qap``) share two more options,
implemented here once: ``stretch`` (:func:`fit_scales`, :func:`stretch_with_queries`: every feature divided by its
std over the ``"fit"`` rows or over the base pairs and the ``"queries"`` given to ``similarity``, the latter making
the scores of a row depend on the rest of its set, so such an alignment must be scored on whole evaluation sets,
not chunks) and ``base`` (:func:`select_base`: all pairs, or the ``n_base`` nearest to k-means centroids).

Trained methods (SAIL, semi-supervised SAIL, SOTAlign and its paper recipe, STRUCTURE, S-CLIP-style pseudo-labels,
NNCLR-style positives, the all-pairs upper bound) register here with the same signature once the shared training
loop lands: a module defines ``fit_<name>(key, data, *, <hparams with defaults>) -> Alignment`` (typically an
``Alignment`` subclass holding the trained head parameters and implementing ``_embed_x`` / ``_embed_y``), decorates
it with ``@register("<name>", needs_pairs=..., uses_unpaired=..., min_pairs=..., citation=..., trained=True)`` and is
added to ``_METHOD_MODULES`` in ``aligners/__init__.py``. Methods that can run without pairs (``min_pairs=0``)
register ``needs_pairs=False``.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from types import MappingProxyType
from typing import Any, Callable, ClassVar, Literal, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from sotalign_jax import matching as match_lib
from sotalign_jax import qap
from sotalign_jax._arrays import cosine, on_host, unit

__all__ = [
    "AlignData", "Alignment", "AlignerSpec", "NeedsPairsError", "ALIGNERS", "register", "fit", "get", "check_data",
    "resolved_options",
    "cosine", "side_mean", "preprocess", "CENTER_MODES", "STRETCH_MODES", "BASE_MODES", "select_base", "fit_scales",
    "stretch_with_queries", "check_stretch",
]

Center = Literal["all", "pairs", "none"]
CENTER_MODES = ("all", "pairs", "none")
Stretch = Literal["none", "fit", "queries"]
STRETCH_MODES = ("none", "fit", "queries")
Base = Literal["all", "cluster"]
BASE_MODES = ("all", "cluster")


# ----------------------------------------------------------------------------------------------------------------
# Data.
# ----------------------------------------------------------------------------------------------------------------
class AlignData(NamedTuple):
  """What an aligner is fitted on.

  Every part is optional: a part left out (``None``) is an empty ``[0, d]`` array once :func:`check_data` has run
  (every registered method runs it first), so ``AlignData(x=images, y=texts)`` is the zero-pair case and
  ``AlignData(pairs_x=px, pairs_y=py)`` the pairs-only case. Each side needs at least one array to give its
  dimension (or use :meth:`create` with ``dx`` / ``dy``).

  The unpaired parts may also be lazy row sources (``is_row_source``), which trained methods read block by
  block when they shard the pools; closed-form and training-free methods read them whole.

  Attributes:
    x: ``[nx, dx]`` unpaired x-rows (images); may be empty, ``[0, dx]``, or ``None``.
    y: ``[ny, dy]`` unpaired y-rows (texts), independent of ``x``; may be empty, ``[0, dy]``, or ``None``.
    pairs_x: ``[p, dx]`` paired x-rows; row ``i`` is the partner of ``pairs_y[i]``; ``p`` may be 0 (or ``None``).
    pairs_y: ``[p, dy]`` paired y-rows.
  """
  x: Any = None
  y: Any = None
  pairs_x: Any = None
  pairs_y: Any = None

  @property
  def n_pairs(self) -> int:
    return 0 if self.pairs_x is None else int(np.shape(self.pairs_x)[0])

  @property
  def dims(self) -> tuple[int, int]:
    return _side_dim((self.pairs_x, self.x), None, "dx"), _side_dim((self.pairs_y, self.y), None, "dy")

  @classmethod
  def create(cls, *, pairs_x=None, pairs_y=None, x=None, y=None, dx: int | None = None,
             dy: int | None = None) -> "AlignData":
    """Fills missing parts with empty ``[0, d]`` arrays (``d`` from the given parts, or ``dx`` / ``dy``)."""
    return check_data(cls(x, y, pairs_x, pairs_y), dx=dx, dy=dy)


def _side_dim(parts, d: int | None, name: str) -> int:
  for a in parts:
    if a is not None:
      return int(np.shape(a)[1])
  if d is None:
    side = "x, pairs_x" if name == "dx" else "y, pairs_y"
    raise ValueError(f"cannot infer {name}: give one of {side} (an empty [0, d] array will do) or use "
                     f"AlignData.create({name}=...)")
  return int(d)


def _fill_missing(data: "AlignData", dx: int | None = None, dy: int | None = None) -> "AlignData":
  """``data`` with its ``None`` parts replaced by empty ``[0, d]`` float32 arrays."""
  if all(a is not None for a in data):
    return data
  dx, dy = _side_dim((data.x, data.pairs_x), dx, "dx"), _side_dim((data.y, data.pairs_y), dy, "dy")
  empty = lambda d: np.zeros((0, d), np.float32)  # noqa: E731
  return AlignData(*(empty(d) if a is None else a for a, d in zip(data, (dx, dy, dx, dy))))


def is_row_source(a) -> bool:
  """A lazy ``[n, d]`` row source: not an array, but ``a.shape`` and ``a[start:stop]`` (e.g. a pool of rows of a
  memory-mapped cache), read only where a method places or uses its rows."""
  return not isinstance(a, (np.ndarray, np.generic, jax.Array)) and hasattr(a, "shape") and hasattr(a, "__getitem__")


def _check_rows(a, name: str) -> jax.Array:
  if is_row_source(a):  # values are the source's responsibility (an embedding cache is scanned when opened)
    if len(a.shape) != 2 or a.shape[1] == 0:
      raise ValueError(f"`{name}` must be a 2-D [n, d] row source, got shape {tuple(a.shape)}")
    return a
  if on_host(a) and not np.isfinite(np.asarray(a, np.float32)).all():
    raise ValueError(f"`{name}` contains NaN or Inf; clean or drop those rows first")
  a = jnp.asarray(a)
  if not jnp.issubdtype(a.dtype, jnp.floating):
    a = a.astype(jnp.float32)
  if a.ndim != 2 or a.shape[1] == 0:
    raise ValueError(f"`{name}` must be a 2-D [n, d] array of features (n may be 0), got shape {a.shape}")
  return a


def check_data(data: AlignData, *, dx: int | None = None, dy: int | None = None) -> AlignData:
  """Validates shapes (each part ``[n, d]``, x-parts share ``dx``, y-parts ``dy``, pairs row-aligned) and fills
  the parts left out (``None``) with empty ``[0, d]`` arrays (``dx`` / ``dy`` when a side has no array at all)."""
  if not isinstance(data, AlignData):
    raise TypeError(f"`data` must be an AlignData(x, y, pairs_x, pairs_y), got {type(data).__name__}")
  data = _fill_missing(data, dx, dy)
  x, y, px, py = (_check_rows(a, n) for a, n in zip(data, AlignData._fields))
  if x.shape[1] != px.shape[1]:
    raise ValueError(f"`x` and `pairs_x` must share the feature size dx, got {x.shape[1]} and {px.shape[1]}")
  if y.shape[1] != py.shape[1]:
    raise ValueError(f"`y` and `pairs_y` must share the feature size dy, got {y.shape[1]} and {py.shape[1]}")
  if px.shape[0] != py.shape[0]:
    raise ValueError(f"`pairs_x` and `pairs_y` must hold the same pairs (same number of rows), got {px.shape[0]} and "
                     f"{py.shape[0]}")
  return AlignData(x, y, px, py)


# ----------------------------------------------------------------------------------------------------------------
# Preprocessing and scores.
# ----------------------------------------------------------------------------------------------------------------
def side_mean(unpaired: jax.Array, paired: jax.Array, center: Center) -> jax.Array:
  """``[d]`` centring vector of one side: mean of unpaired + paired rows (``"all"``), of the pairs, or zeros."""
  if center not in CENTER_MODES:
    raise ValueError(f"center must be one of {CENTER_MODES}, got {center!r}")
  d = paired.shape[1]
  if center == "all" and is_row_source(unpaired):
    unpaired = jnp.asarray(unpaired[0:unpaired.shape[0]], jnp.float32)
  rows = {"all": lambda: jnp.concatenate([unpaired, paired]), "pairs": lambda: paired,
          "none": lambda: paired[:0]}[center]()
  if rows.shape[0] == 0:
    return jnp.zeros((d,), paired.dtype)
  return rows.mean(0)


def preprocess(a: jax.Array, mean: jax.Array, normalize: bool) -> jax.Array:
  """``a − mean``, with rows scaled to unit L2 norm if ``normalize``."""
  a = a - mean
  return unit(a) if normalize else a


def check_queries(a, dim: int, name: str) -> jax.Array:
  """A ``[n, dim]`` float array. Shape checks only (no value checks), so it is free under ``jit``."""
  a = jnp.asarray(a)
  if not jnp.issubdtype(a.dtype, jnp.floating):
    a = a.astype(jnp.float32)
  if a.ndim != 2 or a.shape[1] != dim:
    raise ValueError(f"`{name}` must be a [n, {dim}] array, got shape {a.shape}")
  return a


# ----------------------------------------------------------------------------------------------------------------
# Base pairs and stretching (the options of the matching aligners).
# ----------------------------------------------------------------------------------------------------------------
def check_stretch(stretch: str) -> str:
  """``stretch`` itself, or a ``ValueError`` naming the modes (a bool is rejected: say which rows)."""
  if isinstance(stretch, bool) or stretch not in STRETCH_MODES:
    raise ValueError(f"stretch must be one of {STRETCH_MODES} (the rows whose per-feature std scales each side), got "
                     f"{stretch!r}")
  return stretch


def select_base(key: jax.Array | None, data: AlignData, *, base: Base, n_base: int | None,
                cluster_side: Literal["x", "y"] = "x", cluster_iter: int = 50, min_n: int = 1) -> AlignData:
  r"""``data`` with its pairs replaced by the base pairs (the unpaired rows are kept).

  ``base="all"``: every pair (``n_base`` must be ``None``). ``base="cluster"``: the ``min(n_base, p)`` pairs
  nearest to the centroids of ``k``-means on the pairs' ``cluster_side`` rows (the paper's clustered base set,
  :func:`sotalign_jax.matching.kmeans_base_selection`, Lloyd iterations from ``k`` random distinct pairs drawn with
  ``key``). ``n_base`` is capped at the number of pairs, so one setting works across a sweep over ``p``.

  Args:
    key: PRNG key of the k-means initialisation (needed for ``"cluster"``).
    data: checked :class:`AlignData`.
    base: ``"all"`` or ``"cluster"``.
    n_base: base pairs kept by ``"cluster"``, ``>= min_n``.
    cluster_side: which rows of the pairs k-means clusters, ``"x"`` (images, the paper's) or ``"y"``.
    cluster_iter: Lloyd iterations.
    min_n: fewest base pairs the method accepts.

  Returns:
    :class:`AlignData` whose pairs are the ``[m, d]`` base pairs.
  """
  if base not in BASE_MODES:
    raise ValueError(f"base must be one of {BASE_MODES}, got {base!r}")
  if base == "all":
    if n_base is not None:
      raise ValueError(f"n_base={n_base!r} is for base='cluster'; base='all' keeps every given pair")
    return data
  if isinstance(n_base, bool) or not isinstance(n_base, (int, np.integer)) or n_base < min_n:
    raise ValueError(f"base='cluster' needs n_base, an integer >= {min_n} (base pairs kept), got {n_base!r}")
  if cluster_side not in ("x", "y"):
    raise ValueError(f"cluster_side must be 'x' or 'y', got {cluster_side!r}")
  if key is None:
    raise ValueError("base='cluster' needs a PRNG key (jax.random.key(seed)) for the k-means initialisation")
  feats = data.pairs_x if cluster_side == "x" else data.pairs_y
  idx = match_lib.kmeans_base_selection(feats, min(int(n_base), data.n_pairs), key=key, n_iter=int(cluster_iter))
  return data._replace(pairs_x=data.pairs_x[idx], pairs_y=data.pairs_y[idx])


def _rows(unpaired, paired) -> jax.Array:
  if is_row_source(unpaired):
    unpaired = jnp.asarray(unpaired[0:unpaired.shape[0]], jnp.float32)
  return jnp.concatenate([unpaired, paired])


def _scale(rows: jax.Array) -> jax.Array:
  if rows.shape[0] < 2:
    return jnp.ones((rows.shape[1],), rows.dtype)
  sd = jnp.std(rows, axis=0, ddof=1)  # as sotalign_jax.matching.stretch
  return jnp.where(sd > 0, sd, 1.0)


def fit_scales(data: AlignData, stretch: Stretch) -> tuple[jax.Array, jax.Array]:
  """``[dx]``, ``[dy]`` per-feature scales fixed at fit time: standard deviations over the unpaired + paired rows
  of each side for ``stretch="fit"`` (constant features: 1), ones otherwise (``"queries"`` scales at scoring)."""
  check_stretch(stretch)
  if stretch != "fit":
    dx, dy = data.dims
    return jnp.ones((dx,), jnp.float32), jnp.ones((dy,), jnp.float32)
  return _scale(_rows(data.x, data.pairs_x)), _scale(_rows(data.y, data.pairs_y))


def stretch_with_queries(base: jax.Array, queries: jax.Array) -> tuple[jax.Array, jax.Array]:
  r"""The paper's stretching of one space: :func:`sotalign_jax.matching.stretch` of ``[base; queries]``, split
  back into ``([m, d], [q, d])`` (every feature divided by its std over base and queries together)."""
  s = match_lib.stretch(jnp.concatenate([base, queries]))
  return s[:base.shape[0]], s[base.shape[0]:]


# ----------------------------------------------------------------------------------------------------------------
# Alignments.
# ----------------------------------------------------------------------------------------------------------------
class Alignment:
  """A fitted aligner: maps x-queries and y-keys into a shared space and scores them.

  Subclasses are frozen dataclasses registered as pytrees (``jax.tree_util.register_dataclass``): arrays are
  leaves, options are static metadata, so an alignment passes through ``jit``, ``vmap`` and checkpointing like any
  pytree. A subclass implements ``_embed_x`` / ``_embed_y`` (and ``_similarity`` if it is not the cosine of the
  embeddings); the public ``embed_x`` / ``embed_y`` / ``similarity`` run them under ``jit`` (compiled once per
  shape, so a benchmark scoring fixed-size query chunks compiles once). A scorer without a shared space sets
  ``has_embeddings = False`` (a class attribute, or a property when an option decides it) and implements only
  ``_similarity``.
  """
  has_embeddings: ClassVar[bool] = True

  def embed_x(self, x) -> jax.Array:
    """``[n, dx] -> [n, k]`` embeddings of x-queries in the shared space."""
    self._require_embeddings()
    return _jit_embed_x(self, x)

  def embed_y(self, y) -> jax.Array:
    """``[m, dy] -> [m, k]`` embeddings of y-keys in the shared space."""
    self._require_embeddings()
    return _jit_embed_y(self, y)

  def similarity(self, qx, ky) -> jax.Array:
    """``[n, m]`` scores of x-queries against y-keys (larger = more similar)."""
    return _jit_similarity(self, qx, ky)

  def _require_embeddings(self):
    if not self.has_embeddings:
      raise NotImplementedError(f"{type(self).__name__} has no shared embedding space (a training-free scorer, a "
                                "transductive method, or stretch='queries'); call similarity(qx, ky) instead of "
                                "embed_x / embed_y")

  def _embed_x(self, x) -> jax.Array:
    raise NotImplementedError

  def _embed_y(self, y) -> jax.Array:
    raise NotImplementedError

  def _similarity(self, qx, ky) -> jax.Array:
    """Default score: cosine of the embeddings."""
    return cosine(self._embed_x(qx), self._embed_y(ky))


_jit_embed_x = jax.jit(lambda a, x: a._embed_x(x))  # pylint: disable=protected-access
_jit_embed_y = jax.jit(lambda a, y: a._embed_y(y))  # pylint: disable=protected-access
_jit_similarity = jax.jit(lambda a, qx, ky: a._similarity(qx, ky))  # pylint: disable=protected-access


# ----------------------------------------------------------------------------------------------------------------
# Registry.
# ----------------------------------------------------------------------------------------------------------------
class NeedsPairsError(ValueError):
  """The method was asked to fit on fewer pairs than it needs (a benchmark marks the cell 'needs pairs')."""


class AlignerSpec(NamedTuple):
  """A registered method.

  Attributes:
    name: registry key.
    fn: ``fit_fn(key, data, **hparams) -> Alignment``.
    needs_pairs: the method cannot run without pairs.
    uses_unpaired: the fit learns from the unpaired rows (beyond the centring statistics every method may use).
    min_pairs: fewest pairs the method accepts.
    defaults: the keyword-only hyperparameters of ``fn`` with their defaults (read from its signature).
    trained: fitted by gradient descent (False for closed-form and training-free methods).
    citation: where the method comes from.
    all_pairs: the protocol gives the method *every* training pair whatever p is (the all-pairs upper bound).
    transductive: ``similarity(qx, ky)`` solves one joint problem over the given sets (scores of a row depend on
      the other rows; e.g. ``qap`` matches equal-size sets): evaluators must call it on the exact evaluation
      sets, never chunked, and it has no ``embed_x`` / ``embed_y``. A per-method flag: an *option* can also make
      scores depend on the query sets (``stretch="queries"`` of ``relative``, ``local_cka``, ``ridge``), which
      the method's docstring says.
  """
  name: str
  fn: Callable[..., Alignment]
  needs_pairs: bool
  uses_unpaired: bool
  min_pairs: int
  defaults: Mapping[str, Any]
  trained: bool
  citation: str
  all_pairs: bool = False
  transductive: bool = False


INJECTED = ("loop", "mesh", "val")
"""Keyword arguments a caller provides rather than tunes: ``loop`` (the training loop: a checkpointed one in the
experiments), ``mesh`` (the devices to shard over) and ``val`` (held-out validation pairs, an :class:`AlignData`,
for methods that choose a hyperparameter). :func:`fit` passes each only to methods whose fit function declares it;
none of them is in ``AlignerSpec.defaults``."""

ALIGNERS: dict[str, AlignerSpec] = {}


def register(name: str, *, needs_pairs: bool, uses_unpaired: bool, min_pairs: int, citation: str,
             trained: bool = False, all_pairs: bool = False,
             transductive: bool = False) -> Callable[[Callable[..., Alignment]], Callable[..., Alignment]]:
  """Decorator adding ``fit_fn(key, data, *, **hparams)`` to :data:`ALIGNERS` under ``name``.

  The registered (and returned) function validates ``data`` and the number of pairs before calling ``fit_fn``, so
  the checks are the same whether a method is called directly or through :func:`fit`. Every hyperparameter is
  keyword-only with a default; the defaults are read from the signature into ``AlignerSpec.defaults``.
  """
  if needs_pairs and min_pairs < 1:
    raise ValueError(f"{name}: a method that needs pairs must have min_pairs >= 1, got {min_pairs}")

  def deco(fn):
    if name in ALIGNERS:
      raise ValueError(f"aligner {name!r} is already registered")
    params = inspect.signature(fn).parameters
    defaults = {k: p.default for k, p in params.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY and k not in INJECTED}
    missing = [k for k, v in defaults.items() if v is inspect.Parameter.empty]
    if missing:
      raise ValueError(f"{name}: every hyperparameter needs a default, {missing} have none")

    @functools.wraps(fn)
    def checked(key, data, **hparams):  # the same checks whether called directly or through fit()
      data = check_data(data)
      if data.n_pairs < min_pairs:
        raise NeedsPairsError(f"aligner {name!r} needs pairs: at least min_pairs={min_pairs}, got {data.n_pairs}")
      return fn(key, data, **hparams)

    checked.accepts = frozenset(k for k in INJECTED if k in params)
    ALIGNERS[name] = AlignerSpec(name, checked, needs_pairs, uses_unpaired, int(min_pairs),
                                 MappingProxyType(defaults), trained, citation, all_pairs, transductive)
    return checked

  return deco


def get(name: str) -> AlignerSpec:
  """The :class:`AlignerSpec` registered as ``name``."""
  if name not in ALIGNERS:
    raise ValueError(f"unknown aligner {name!r}; registered: {sorted(ALIGNERS)}")
  return ALIGNERS[name]


def resolved_options(name: str, options: Mapping[str, Any] = MappingProxyType({})) -> dict[str, Any]:
  """The options a fit of ``name`` runs with: the registry's defaults, ``options`` over them, and ``lap="auto"`` as
  the solver it stands for on this backend and core count (:func:`sotalign_jax.qap.resolve_lap`), so that results
  keyed by them change whenever the numbers can."""
  out = {**get(name).defaults, **options}
  if "lap" in out:
    out["lap"] = qap.resolve_lap(out["lap"])
  return out


def fit(name: str, key: jax.Array | None, data: AlignData, *, loop: Callable[..., Any] | None = None,
        mesh: Mesh | None = None, val: AlignData | None = None, **hparams: Any) -> Alignment:
  """Fits the registered method ``name`` on ``data`` with its defaults overridden by ``hparams``.

  Args:
    name: a key of :data:`ALIGNERS`.
    key: PRNG key (closed-form and training-free methods ignore it; ``None`` is accepted for them).
    data: :class:`AlignData`.
    loop, mesh, val: see :data:`INJECTED`; passed only to methods that take them (ignored by the others).
    **hparams: options of the method (see its ``fit_<name>`` docstring); unknown names raise ``ValueError``.

  Raises:
    NeedsPairsError: if ``data`` has fewer than ``spec.min_pairs`` pairs.
  """
  spec = get(name)
  unknown = sorted(set(hparams) - set(spec.defaults))
  if unknown:
    raise ValueError(f"unknown hyperparameter(s) {unknown} for aligner {name!r}; it takes {sorted(spec.defaults)}")
  if spec.trained and key is None:
    raise ValueError(f"aligner {name!r} is trained: give it a PRNG key (jax.random.key(seed))")
  injected = {k: v for k, v in dict(loop=loop, mesh=mesh, val=val).items() if v is not None and k in spec.fn.accepts}
  return spec.fn(key, data, **injected, **hparams)


def static_field(default=dataclasses.MISSING):
  """A dataclass field kept as static pytree metadata (hashable options, not arrays)."""
  return dataclasses.field(default=default, metadata=dict(static=True))
