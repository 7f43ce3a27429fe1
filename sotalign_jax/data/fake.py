"""A small synthetic embedding cache in the format of `python -m sotalign_jax.cli.embed`, with a known structure.

Images and captions are noisy linear views of one shared latent per image, so alignment methods have
something real to recover; two captions per image.
"""

import os
from typing import Any, Sequence

import numpy as np

from sotalign_jax.runtime import io as sio


def make_fake_cache(out_dir: str | os.PathLike, *, n_images: int = 600, dx: int = 48, dy: int = 32, latent: int = 12,
                    noise: float = 0.6, seed: int = 0, splits: Sequence[str] | np.ndarray | None = None,
                    labels: Sequence[Any] | None = None, text_only: bool = False) -> str | os.PathLike:
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(n_images, latent))
  a = rng.normal(size=(latent, dx))
  b = rng.normal(size=(latent, dy))
  images = np.tanh(z @ a / np.sqrt(latent)) + noise * rng.normal(size=(n_images, dx))
  owner = np.repeat(np.arange(n_images), 2)
  texts = z[owner] @ b / np.sqrt(latent) + noise * rng.normal(size=(len(owner), dy))
  if splits is None:
    u = rng.uniform(size=n_images)
    splits = np.where(u < 0.25, "paired", np.where(u < 0.75, "unpaired", np.where(u < 0.87, "val", "test")))
  index = [{"caption": f"caption {i}", "image": None if text_only else int(o), "image_id": f"img{o}",
            "label": None if labels is None else labels[o], "split": str(splits[o])} for i, o in enumerate(owner)]
  os.makedirs(out_dir, exist_ok=True)
  if not text_only:
    sio.save_npy(os.path.join(out_dir, "image_embeddings.npy"), images.astype(np.float32))
  sio.save_npy(os.path.join(out_dir, "text_embeddings.npy"), texts.astype(np.float32))
  sio.write_jsonl(os.path.join(out_dir, "index.jsonl"), index)
  sio.write_json(os.path.join(out_dir, "manifest.json"), {"fake": True, "n_images": n_images})
  return out_dir
