r"""The alignment benchmark's data protocol: held-out test and validation images, nested pairs, unpaired pools.

Everything is decided by the image ids alone (:func:`sotalign_jax.data.splits.stable_uniform`), never by the row
order of a cache, so two caches of the same dataset embedded with other encoders get the same test set, the same
pairs and the same unpaired pools.

1. **Held out** (:func:`holdout_roles`). With ``split="hash"`` (default) the ``test_size`` images of lowest
   :math:`u(\mathrm{id})` (salt ``split_seed``) are the test set and the next ``val_size`` the validation set —
   :func:`~sotalign_jax.data.splits.assign_splits` with sizes, which takes ``test`` first, so the test set does not
   move when ``val_size`` changes. This ignores the cache's own ``split`` field on purpose: openclipart's default
   split puts only ≈460 images in ``test``, too few to tell methods apart. ``split="cache"`` keeps the cache's
   ``test`` and ``val`` splits. Every caption of a held-out image is held out with it; a method sees none of them.
2. **Per seed** ``s`` the remaining *training* images are put in the order :math:`\pi_s` of
   :math:`u(\mathrm{id})` salted ``"{split_seed}:pairs:{s}"``.
3. **Pairs at p** are the first ``p`` images of :math:`\pi_s` with their first caption (in cache order), so pairs
   are *nested*: the pairs at p = 30 contain those at p = 10, and every method of a seed gets the same ones.
4. **Unpaired pools at p** come from the remainder :math:`\pi_s[p:]`. ``unpaired_mode="disjoint"`` (default)
   splits it into two halves by the parity of the position in :math:`\pi_s`: even positions give the unpaired
   images, odd positions the unpaired texts (every caption of those images), so no unpaired image has a caption in
   the text pool. ``"shared"`` keeps the older mode of ``experiments/sotalign.py``: the images *and* all captions
   of the remainder, the pairing discarded. ``max_unpaired`` (> 0) keeps the first images of each half in
   :math:`\pi_s` order. The pools shrink as p grows (the pairs are taken from them), as for a practitioner who
   captions p of the images they have; the halves stay fixed, so the pools at a larger p are subsets of those at a
   smaller one.
5. **p = max** (``-1``) is the largest p that leaves ``min_unpaired`` images in each unpaired half (in the shared
   mode: in the remainder); larger requested values are capped to it.
"""

from __future__ import annotations

from typing import Literal, NamedTuple, Sequence

import numpy as np

from sotalign_jax.data.files import EmbeddingFiles
from sotalign_jax.data.splits import assign_splits, stable_uniform

__all__ = ["Draw", "Protocol", "FileProtocol", "stack_files", "holdout_roles", "pair_order", "max_pairs",
           "resolve_n_pairs", "draw_positions", "UNPAIRED_MODES", "SPLIT_MODES"]

UnpairedMode = Literal["disjoint", "shared"]
UNPAIRED_MODES = ("disjoint", "shared")
SPLIT_MODES = ("hash", "cache")


# ----------------------------------------------------------------------------------------------------------------
# Small pure pieces (positions and ids only, no cache).
# ----------------------------------------------------------------------------------------------------------------
def holdout_roles(ids: Sequence[str], *, test_size: int, val_size: int, split_seed: str = "benchmark",
                  cache_splits: Sequence[str] | None = None) -> np.ndarray:
  """``[n]`` role of each image, ``"test"``, ``"val"`` or ``"train"``.

  Args:
    ids: ``[n]`` distinct image ids.
    test_size: images in the test set (hash mode).
    val_size: images in the validation set (hash mode).
    split_seed: salt of the hash.
    cache_splits: ``[n]`` the cache's split of each image: given, its ``test`` / ``val`` are kept (cache mode) and
      the sizes are ignored.
  """
  if cache_splits is not None:
    s = np.asarray(cache_splits, dtype=object)
    return np.where(s == "test", "test", np.where(s == "val", "val", "train")).astype(str)
  if len(set(ids)) != len(ids):
    raise ValueError("image ids must be distinct")
  if test_size + val_size >= len(ids):
    raise ValueError(f"test_size + val_size = {test_size + val_size} leaves no training images of {len(ids)}")
  roles = assign_splits(list(ids), sizes={"test": int(test_size), "val": int(val_size)}, seed=split_seed)
  return np.array(["train" if r == "unpaired" else r for r in roles])


def pair_order(ids: Sequence[str], seed: int, *, split_seed: str = "benchmark") -> np.ndarray:
  """``[n]`` permutation :math:`\\pi_s` of the training images for seed ``seed`` (positions into ``ids``)."""
  return np.argsort(stable_uniform(list(ids), seed=f"{split_seed}:pairs:{int(seed)}"), kind="stable")


def max_pairs(n_train: int, *, unpaired_mode: UnpairedMode = "disjoint", min_unpaired: int = 100) -> int:
  """The largest p that leaves ``min_unpaired`` images in each unpaired half (shared mode: in the remainder)."""
  if unpaired_mode not in UNPAIRED_MODES:
    raise ValueError(f"unpaired_mode must be one of {UNPAIRED_MODES}, got {unpaired_mode!r}")
  keep = 2 * min_unpaired if unpaired_mode == "disjoint" else min_unpaired
  return max(int(n_train) - int(keep), 0)


def resolve_n_pairs(n_pairs: Sequence[int], p_max: int) -> tuple[tuple[int, ...], dict[int, str]]:
  """Sorted distinct sweep values with ``-1`` → ``p_max`` and values above ``p_max`` capped to it.

  Returns:
    ``(values, labels)``: the p values and, for each, its label (``"max"`` for ``p_max`` when ``-1`` or a capped
    value asked for it, else ``str(p)``).
  """
  values, labels = set(), {}
  for p in n_pairs:
    p = int(p)
    if p < -1:
      raise ValueError(f"n_pairs entries must be >= 0 or -1 (max), got {p}")
    q = p_max if p == -1 or p >= p_max else p
    values.add(q)
    if q == p_max and p != p_max:
      labels[q] = "max"
  out = tuple(sorted(values))
  return out, {p: labels.get(p, str(p)) for p in out}


class Draw(NamedTuple):
  """Positions (into the training images) of one seed's data at one p.

  Attributes:
    pairs: ``[p]`` paired images, the first p of :math:`\\pi_s`.
    unpaired_x: images whose embeddings form the unpaired image pool.
    unpaired_y: images whose captions form the unpaired text pool.
  """
  pairs: np.ndarray
  unpaired_x: np.ndarray
  unpaired_y: np.ndarray


def draw_positions(order: np.ndarray, p: int, *, unpaired_mode: UnpairedMode = "disjoint",
                   max_unpaired: int = -1) -> Draw:
  """Pairs and unpaired pools at ``p`` for the seed whose permutation is ``order`` (see the module docstring)."""
  if unpaired_mode not in UNPAIRED_MODES:
    raise ValueError(f"unpaired_mode must be one of {UNPAIRED_MODES}, got {unpaired_mode!r}")
  order = np.asarray(order)
  if not 0 <= p <= len(order):
    raise ValueError(f"p={p} must lie in [0, {len(order)}]")
  rest = order[p:]
  if unpaired_mode == "disjoint":
    even = (np.arange(p, len(order)) % 2) == 0
    ux, uy = rest[even], rest[~even]
  else:
    ux = uy = rest
  if max_unpaired > 0:
    ux, uy = ux[:max_unpaired], uy[:max_unpaired]
  return Draw(order[:p], ux, uy)


# ----------------------------------------------------------------------------------------------------------------
# The protocol on a cache: cache rows of every set.
# ----------------------------------------------------------------------------------------------------------------
class Protocol(NamedTuple):
  """The benchmark's sets on one cache, as cache rows.

  Attributes:
    image_rows: ``[n]`` distinct image rows of the cache (sorted).
    ids: ``[n]`` their image ids.
    first_caption: ``[n]`` the first caption row (cache order) of each image.
    captions: ``[n]`` list of the caption rows of each image.
    roles: ``[n]`` ``"test"`` | ``"val"`` | ``"train"``.
    split_seed: salt of every hash.
    unpaired_mode: ``"disjoint"`` | ``"shared"``.
    max_unpaired: cap on each unpaired pool (-1: none).
    p_max: the largest p (:func:`max_pairs`).
  """
  image_rows: np.ndarray
  ids: np.ndarray
  first_caption: np.ndarray
  captions: list
  roles: np.ndarray
  split_seed: str
  unpaired_mode: str
  max_unpaired: int
  p_max: int

  @classmethod
  def from_cache(cls, cache, *, split: str = "hash", test_size: int = 1000, val_size: int = 500,
                 split_seed: str = "benchmark", unpaired_mode: UnpairedMode = "disjoint", max_unpaired: int = -1,
                 min_unpaired: int = 100) -> "Protocol":
    """The protocol on ``cache`` (:class:`sotalign_jax.data.cache.Cache`); arguments as in the module docstring."""
    if split not in SPLIT_MODES:
      raise ValueError(f"split must be one of {SPLIT_MODES}, got {split!r}")
    if cache.image_emb is None:
      raise ValueError("the benchmark needs a cache with both sides (image_embeddings.npy is missing)")
    img_of = np.array([r["image"] for r in cache.index], np.int64)
    rows, first = np.unique(img_of, return_index=True)
    ids = np.array([str(cache.index[i]["image_id"]) for i in first])
    order = np.argsort(img_of, kind="stable")  # caption rows grouped by image, cache order inside a group
    bounds = np.searchsorted(img_of[order], rows, side="left").tolist() + [len(order)]
    captions = [order[bounds[k]:bounds[k + 1]] for k in range(len(rows))]
    cache_splits = [cache.index[i]["split"] for i in first] if split == "cache" else None
    roles = holdout_roles(ids.tolist(), test_size=test_size, val_size=val_size, split_seed=split_seed,
                          cache_splits=cache_splits)
    n_train = int((roles == "train").sum())
    p_max = max_pairs(n_train, unpaired_mode=unpaired_mode, min_unpaired=min_unpaired)
    return cls(rows, ids, first.astype(np.int64), captions, roles, split_seed, unpaired_mode, int(max_unpaired),
               p_max)

  def held_out(self, role: str) -> dict:
    """The images of ``role`` (``"test"`` / ``"val"``) with all their captions.

    Returns:
      ``{"image_rows": [n], "caption_rows": [m], "owner": [m] (position of each caption's image),
      "positives": n lists of caption positions, "first": [n] position of each image's first caption}``.
    """
    pos = np.where(self.roles == role)[0]
    caps = [self.captions[k] for k in pos]
    owner = np.concatenate([np.full(len(c), i, np.int64) for i, c in enumerate(caps)]) if caps else np.zeros(0, int)
    offsets = np.cumsum([0] + [len(c) for c in caps])
    return {"image_rows": self.image_rows[pos], "caption_rows": np.concatenate(caps) if caps else np.zeros(0, int),
            "owner": owner, "positives": [list(range(offsets[i], offsets[i + 1])) for i in range(len(caps))],
            "first": offsets[:-1].astype(np.int64)}

  @property
  def train_positions(self) -> np.ndarray:
    return np.where(self.roles == "train")[0]

  def all_pairs(self) -> dict[str, np.ndarray]:
    """Cache rows of every training image with its first caption, as pairs, and empty unpaired pools: the data of
    the all-pairs upper bound (the same for every seed and p)."""
    train = self.train_positions
    empty = np.zeros(0, np.int64)
    return {"pair_x": self.image_rows[train], "pair_y": self.first_caption[train], "unp_x": empty, "unp_y": empty}

  def draw(self, seed: int, p: int) -> dict[str, np.ndarray]:
    """Cache rows of seed ``seed``'s data at ``p``.

    Returns:
      ``{"pair_x": [p] image rows, "pair_y": [p] caption rows (first caption), "unp_x": image rows,
      "unp_y": caption rows}``.
    """
    if p > self.p_max:
      raise ValueError(f"p={p} exceeds the largest p of this protocol, {self.p_max}")
    train = self.train_positions
    d = draw_positions(pair_order(self.ids[train].tolist(), seed, split_seed=self.split_seed), p,
                       unpaired_mode=self.unpaired_mode, max_unpaired=self.max_unpaired)
    img = lambda pos: self.image_rows[train[pos]]  # noqa: E731
    caps = [self.captions[k] for k in train[d.unpaired_y]]
    return {"pair_x": img(d.pairs), "pair_y": self.first_caption[train[d.pairs]], "unp_x": img(d.unpaired_x),
            "unp_y": np.concatenate(caps) if caps else np.zeros(0, np.int64)}


# ----------------------------------------------------------------------------------------------------------------
# The same protocol on embedding files (sotalign_jax.data.files): the sets are the files.
# ----------------------------------------------------------------------------------------------------------------
class FileProtocol(NamedTuple):
  """The benchmark's sets on embedding files, as rows of the stacked arrays of :func:`stack_files`.

  The test and validation sets are the ``test_*`` / ``val_*`` files (image ``i`` ↔ caption ``i``, one positive
  each). Per seed ``s`` the pair rows are put in the order of :math:`u(\\text{"pair:}i\\text{"})` salted
  ``"{split_seed}:pairs:{s}"`` and the pairs at p are the first p of that order (nested, shared by every method
  of a seed). The unpaired pools are the ``unpaired_*`` files, the same at every p and seed (the first
  ``max_unpaired`` rows of each if > 0); pair rows beyond p are *not* added to them, so a method sees exactly the
  files' unpaired data. ``p_max`` is the number of pair rows.

  Attributes:
    offsets_x, offsets_y: ``{"pairs" | "unpaired" | "val" | "test": (start, rows)}`` in the stacked arrays.
    roles: ``[n_pairs]`` ``"train"`` (what the benchmark counts as training images).
    split_seed, max_unpaired, p_max: as in :class:`Protocol`.
  """
  offsets_x: dict
  offsets_y: dict
  roles: np.ndarray
  split_seed: str
  max_unpaired: int
  p_max: int

  def _rows(self, side: str, part: str, positions=None) -> np.ndarray:
    start, n = (self.offsets_x if side == "x" else self.offsets_y)[part]
    return start + (np.arange(n, dtype=np.int64) if positions is None else np.asarray(positions, np.int64))

  def held_out(self, role: str) -> dict:
    """As :meth:`Protocol.held_out`, one caption per image."""
    n = self.offsets_x[role][1]
    return {"image_rows": self._rows("x", role), "caption_rows": self._rows("y", role),
            "owner": np.arange(n, dtype=np.int64), "positives": [[i] for i in range(n)],
            "first": np.arange(n, dtype=np.int64)}

  def _unpaired(self, side: str) -> np.ndarray:
    n = (self.offsets_x if side == "x" else self.offsets_y)["unpaired"][1]
    keep = n if self.max_unpaired < 0 else min(n, self.max_unpaired)
    return self._rows(side, "unpaired", np.arange(keep))

  def all_pairs(self) -> dict[str, np.ndarray]:
    empty = np.zeros(0, np.int64)
    return {"pair_x": self._rows("x", "pairs"), "pair_y": self._rows("y", "pairs"), "unp_x": empty, "unp_y": empty}

  def draw(self, seed: int, p: int) -> dict[str, np.ndarray]:
    if p > self.p_max:
      raise ValueError(f"p={p} exceeds the {self.p_max} rows of the pair files")
    n = self.p_max
    order = pair_order([f"pair:{i}" for i in range(n)], seed, split_seed=self.split_seed)[:p]
    return {"pair_x": self._rows("x", "pairs", order), "pair_y": self._rows("y", "pairs", order),
            "unp_x": self._unpaired("x"), "unp_y": self._unpaired("y")}


def stack_files(files: EmbeddingFiles, *, split_seed: str = "benchmark",
                max_unpaired: int = -1) -> tuple[np.ndarray, np.ndarray, FileProtocol]:
  """``(image_emb, text_emb, FileProtocol)``: the files of ``files`` (:class:`~sotalign_jax.data.files.EmbeddingFiles`)
  stacked in memory as float32 (pairs, unpaired, val, test; a part not given has 0 rows) and the protocol that names
  their rows."""
  parts = ("pairs", "unpaired", "val", "test")
  out, offsets = {}, {}
  for side in ("x", "y"):
    arrays = [getattr(files, f"{part}_{side}") for part in parts]
    dim = next(a.shape[1] for a in arrays if a is not None)
    arrays = [np.zeros((0, dim), np.float32) if a is None else np.asarray(a, np.float32) for a in arrays]
    starts = np.cumsum([0] + [len(a) for a in arrays])
    offsets[side] = {part: (int(starts[i]), len(arrays[i])) for i, part in enumerate(parts)}
    out[side] = np.concatenate(arrays)
  n_pairs = offsets["x"]["pairs"][1]
  proto = FileProtocol(offsets["x"], offsets["y"], np.array(["train"] * n_pairs), split_seed, int(max_unpaired),
                       n_pairs)
  return out["x"], out["y"], proto
