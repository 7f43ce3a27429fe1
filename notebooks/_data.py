"""Small embedding sets for the notebooks: the real openclipart cache if present, else a synthetic one.

The default cache is ``data_cache/openclipart__efficientnet-lite0__all-MiniLM-L6-v2`` under the repository root
(built by ``make demo``); the environment variable ``SOTALIGN_NOTEBOOK_CACHE`` overrides that path. When the
cache is missing (e.g. in CI) a small synthetic cache with a planted shared latent is written to a temporary
folder with :func:`sotalign_jax.data.fake.make_fake_cache`, so every notebook runs anywhere.
"""

from __future__ import annotations

import os
import pathlib
import tempfile

import numpy as np

from sotalign_jax.data.cache import Cache, load_cache
from sotalign_jax.data.fake import make_fake_cache

DEFAULT_CACHE = "data_cache/openclipart__efficientnet-lite0__all-MiniLM-L6-v2"
ENV_VAR = "SOTALIGN_NOTEBOOK_CACHE"


def repo_root(start: str | os.PathLike | None = None) -> pathlib.Path:
  """The first folder at or above ``start`` (default: the cwd) holding ``pyproject.toml`` and ``sotalign_jax/``."""
  here = pathlib.Path(start or os.getcwd()).resolve()
  for p in (here, *here.parents):
    if (p / "pyproject.toml").exists() and (p / "sotalign_jax").is_dir():
      return p
  raise FileNotFoundError(f"no sotalign-jax checkout found at or above {here}: run the notebook from the repo")


def open_cache(*, n_fake_images: int = 600) -> tuple[Cache, bool]:
  """Loads the notebook cache; returns ``(cache, is_real)`` and prints which one is used.

  Args:
    n_fake_images: images of the synthetic fallback (two captions each).
  """
  root = repo_root()
  path = pathlib.Path(os.environ.get(ENV_VAR) or root / DEFAULT_CACHE)
  if not path.is_absolute():
    path = root / path
  if (path / "manifest.json").exists():
    cache = load_cache(path)
    print(f"using the real cache {path} ({len(cache.index)} captions, {cache.image_emb.shape[0]} images)")
    return cache, True
  out = make_fake_cache(tempfile.mkdtemp(prefix="sotalign_nb_"), n_images=n_fake_images)
  cache = load_cache(out)
  print(f"no cache at {path}: using a SYNTHETIC cache ({n_fake_images} images, planted shared latent); "
        "run `make demo` for the real openclipart embeddings")
  return cache, False


def pairs(cache: Cache, split: str | None, n: int | None = None, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Up to ``n`` random images of ``split`` with one caption each, row-aligned: ``([n, d_img], [n, d_txt])``."""
  caps = cache.caption_rows(split)
  imgs = cache.caption_image_rows(split)
  _, first = np.unique(imgs, return_index=True)  # one caption per image: its first
  rng = np.random.default_rng(seed)
  keep = rng.permutation(first)[:n]
  return (np.asarray(cache.image_emb[imgs[keep]], np.float32), np.asarray(cache.text_emb[caps[keep]], np.float32))
