r"""Which image layer aligns best with which text layer, and can the score be trusted?

  python experiments/alignment_scores.py --config configs/alignment_scores.py:quick --workdir workdirs/scores

Reads top to bottom: config → per-layer features of every encoder on the same openclipart images and their
captions (cached atomically in ``workdir/features/``, so a rerun skips them) → per (image, text) encoder pair
and metric: the layer × layer grid with a permutation null shared by all cells (:func:`sotalign_jax.scores.
score_grid`), then the best pair calibrated with more permutations and a bootstrap interval
(:func:`sotalign_jax.scores.calibrated`) → ``results.json`` (``{"methods": {"lite0_x_minilm": {...}}}``), the
markdown table, ``grids.json`` (every grid, z and p) and one heatmap png per encoder pair.

The config and the data are checked before anything is written: a user error (a bad key or value, an unknown
dataset) prints one line ``error: …``, exits with code 2 and leaves no workdir behind.

Every device of the host is used: each batch of permutations and bootstrap resamples is split over them (the
numbers do not depend on the device count; ``results.json`` records ``n_devices``). Launched on several hosts,
each host computes everything (the work is small) and process 0 alone writes files. The k-NN metrics use
L2-normalised features (cosine neighbourhoods, as in Huh et al., 2024); the CKA metrics use the raw features.

**Reruns are keyed by their settings.** An encoder's features are ``features/<encoder>__<key12>.npz``, keyed by
:func:`feature_settings` (the encoder, the data's fingerprint — dataset, the selected images' ids, captions and
image content — and the pooling and batch size; synthetic: ``n_images`` and ``seed``). An encoder pair's result is
``done/<pair>__<key12>.json``, keyed by :func:`pair_settings` (both encoders' feature settings, the metrics,
``primary``, ``k``, ``block_size``, ``n_perm_grid``, ``n_perm``, ``n_boot`` and ``seed``). A rerun reuses exactly
what was computed with the same settings and computes the rest; files of other settings stay on disk, unused.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import zlib

import jax
from jax.sharding import Mesh
import numpy as np

from sotalign_jax import scores
from sotalign_jax.runtime import config as cfg_lib
from sotalign_jax.runtime import io as sio, workdir as wd

CONFIG = cfg_lib.experiment_config(__file__)  # configs/alignment_scores.py: get_config, validate
SHORT = {"efficientnet-lite0": "lite0", "efficientnet-lite1": "lite1", "efficientnet-lite2": "lite2",
         "all-MiniLM-L6-v2": "minilm", "all-mpnet-base-v2": "mpnet"}


# ================================================================================================================
# Features: a list of [n, d_l] layers per encoder, cached in workdir/features/<encoder>.npz
# ================================================================================================================
def select_records(cfg) -> list:
  """The first caption of ``n_images`` images, chosen by a stable hash of the image id."""
  from sotalign_jax.data import load_dataset, stable_uniform  # pylint: disable=g-import-not-at-top
  first = {}
  for r in load_dataset(cfg.dataset).records:
    if r.has_image:
      first.setdefault(r.image_id, r)
  ids = list(first)
  order = np.argsort(stable_uniform(ids, seed="alignment_scores"), kind="stable")[:cfg.n_images]
  return [first[ids[i]] for i in sorted(order)]


def image_layers(name: str, records: list, cfg) -> tuple[list[np.ndarray], list[str], np.ndarray]:
  """Spatial means of the 7 stages and the pooled head of EfficientNet-Lite; rows of images that decoded."""
  from sotalign_jax.data import load_image  # pylint: disable=g-import-not-at-top
  from sotalign_jax.encoders import efficientnet  # pylint: disable=g-import-not-at-top
  enc = efficientnet.load(name, output="stages")
  ok, arrays = [], []
  for i, r in enumerate(records):
    try:
      src = r.image if r.image is not None else r.image_path
      arrays.append(np.asarray(enc.preprocess(load_image(src, max_side=2 * enc.resolution)), np.float32))
      ok.append(i)
    except (OSError, ValueError) as e:
      print(f"  skipping {r.image_id}: {type(e).__name__}: {e}")
  out = []
  for s in range(0, len(arrays), cfg.batch_size):
    batch = np.stack(arrays[s:s + cfg.batch_size])
    n = len(batch)
    batch = np.concatenate([batch, np.zeros((cfg.batch_size - n,) + batch.shape[1:], np.float32)])
    out.append(np.asarray(enc.apply(batch))[:n])
  feats = np.concatenate(out)
  dims = enc.info["stage_dims"]
  layers = np.split(feats, np.cumsum(dims)[:-1], axis=1)
  return layers, [f"stage{i + 1}" for i in range(len(dims) - 1)] + ["pooled"], np.array(ok)


def text_layers(name: str, records: list, cfg) -> tuple[list[np.ndarray], list[str]]:
  from sotalign_jax.encoders import text  # pylint: disable=g-import-not-at-top
  encode_layers = text.load_layers(name, batch_size=cfg.batch_size)
  out = encode_layers([r.caption for r in records], pooling=cfg.text_pooling)
  return list(out), ["embeddings"] + [f"layer{i}" for i in range(1, out.shape[0])]


def synthetic_layers(name: str, cfg) -> tuple[list[np.ndarray], list[str]]:
  """Smoke test data: layers sharing a latent factor with different noise levels (no encoder)."""
  z = np.random.default_rng(cfg.seed).normal(size=(cfg.n_images, 8))
  r = np.random.default_rng(zlib.crc32(name.encode()))
  noise = (3.0, 0.3, 1.0) if name == "syn0" else (0.5, 2.0)
  layers = [np.tanh(z @ r.normal(size=(8, 6 + 3 * i))) + s * r.normal(size=(cfg.n_images, 6 + 3 * i))
            for i, s in enumerate(noise)]
  return [a.astype(np.float32) for a in layers], [f"L{i}" for i in range(len(layers))]


def features(name: str, kind: str, records, cfg, workdir: str, *, key: str) -> dict:
  """``{"layers": [n, d_l] list, "names": [...], "rows": images kept}``, cached atomically in
  ``features/<name>__<key12>.npz`` (``key``: of :func:`feature_settings`)."""
  path = os.path.join(workdir, "features", f"{name}__{key[:12]}.npz")
  if os.path.exists(path):
    with np.load(path, allow_pickle=False) as z:
      n_layers = int(z["n_layers"])
      return {"layers": [z[f"layer{i}"] for i in range(n_layers)], "names": list(z["names"]), "rows": z["rows"]}
  t0 = time.time()
  if cfg.synthetic:
    layers, names = synthetic_layers(name, cfg)
    rows = np.arange(cfg.n_images)
  elif kind == "image":
    layers, names, rows = image_layers(name, records, cfg)
  else:
    layers, names = text_layers(name, records, cfg)
    rows = np.arange(len(records))
  if wd.is_primary():
    sio.save_npz(path, n_layers=len(layers), names=np.array(names), rows=rows,
                 **{f"layer{i}": a for i, a in enumerate(layers)})
  print(f"  {name}: {len(layers)} layers, widths {[a.shape[1] for a in layers]} ({time.time() - t0:.0f} s)")
  return {"layers": layers, "names": names, "rows": rows}


# ================================================================================================================
# Scores of one encoder pair
# ================================================================================================================
def unit(a: np.ndarray) -> np.ndarray:
  return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def score_pair(fx: dict, fy: dict, metrics: list[str], cfg, mesh=None) -> tuple[dict, dict]:
  """Grids (with null) and the calibrated best pair for every metric: (results row, grids for grids.json).

  Permutations and bootstrap resamples are split over ``mesh`` (``None``: one device); the numbers do not depend
  on it.
  """
  rows = np.intersect1d(fx["rows"], fy["rows"])  # samples whose image decoded
  pick = lambda f: [a[np.searchsorted(f["rows"], rows)] for a in f["layers"]]
  xs, ys = pick(fx), pick(fy)
  key = jax.random.key(cfg.seed)
  row, grids = {}, {}
  for m in metrics:
    a, b = (xs, ys) if m not in ("mutual_knn", "cknna") else ([unit(v) for v in xs], [unit(v) for v in ys])
    kg, kc = jax.random.split(jax.random.fold_in(key, scores.METRICS.index(m)))
    g = scores.score_grid(a, b, metric=m, k=cfg.k, block_size=cfg.block_size, n_perm=cfg.n_perm_grid, key=kg,
                          mesh=mesh)
    i, j = g.best
    c = scores.calibrated(m, a[i], b[j], n_perm=cfg.n_perm, n_boot=cfg.n_boot, key=kc, k=cfg.k,
                          block_size=cfg.block_size, mesh=mesh)
    grids[m] = {"scores": np.asarray(g.scores).tolist(), "best": [i, j],
                "z": None if g.z is None else np.asarray(g.z).tolist(),
                "p_value": None if g.p_value is None else np.asarray(g.p_value).tolist()}
    pair = f"{fx['names'][i]}|{fy['names'][j]}"
    if m == cfg.primary:
      row.update(best_cka=float(c.score), best_layer_pair=pair, best_z=float(c.z), best_p=float(c.p_value),
                 best_ci_low=float(c.ci_low), best_ci_high=float(c.ci_high), null_mean=float(c.null_mean))
    else:
      row.update({f"best_{m}": float(c.score), f"pair_{m}": pair, f"z_{m}": float(c.z)})
  row["n"] = int(len(rows))
  return row, {"x_layers": fx["names"], "y_layers": fy["names"], "n": int(len(rows)), "metrics": grids}


def plot_grids(method: str, grids: dict, path: str):
  plt = wd.pyplot()
  ms = list(grids["metrics"])
  fig, axes = plt.subplots(1, len(ms), figsize=(4.2 * len(ms), 0.35 * len(grids["x_layers"]) + 2.5), squeeze=False)
  for ax, m in zip(axes[0], ms):
    g = np.array(grids["metrics"][m]["scores"])
    im = ax.imshow(g, cmap="viridis", aspect="auto")
    z = grids["metrics"][m]["z"]
    if z is not None:
      for (a, b), v in np.ndenumerate(np.array(z)):
        ax.text(b, a, f"{v:.0f}", ha="center", va="center", fontsize=6, color="w")
    i, j = grids["metrics"][m]["best"]
    ax.scatter([j], [i], marker="s", s=120, facecolors="none", edgecolors="r")
    ax.set_xticks(range(len(grids["y_layers"])), grids["y_layers"], rotation=90, fontsize=7)
    ax.set_yticks(range(len(grids["x_layers"])), grids["x_layers"], fontsize=7)
    ax.set_title(f"{m} (numbers: z)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
  fig.suptitle(f"{method}, n={grids['n']}", fontsize=10)
  fig.tight_layout()
  wd.save_figure(fig, path, dpi=110)


# ================================================================================================================
# Keys: what determines the features and an encoder pair's scores
# ================================================================================================================
def records_fingerprint(records: list) -> dict:
  """What identifies the selected data: each record's image id, caption and image content (the file's size and
  hash, or the hash of the in-memory array)."""
  h = hashlib.sha256()
  for r in records:
    if r.image_path is not None:
      image = wd.file_fingerprint(r.image_path)
    elif r.image is not None:
      a = np.ascontiguousarray(r.image)
      image = {"shape": list(a.shape), "sha256": hashlib.sha256(a.tobytes()).hexdigest()}
    else:
      image = None
    h.update(json.dumps([r.image_id, r.caption, image], sort_keys=True).encode())
  return {"n": len(records), "sha256": h.hexdigest()}


def data_settings(cfg, records) -> dict:
  """The data part of every key: the dataset and the selected records' fingerprint; synthetic features are drawn
  from ``n_images`` and ``seed``."""
  if cfg.synthetic:
    return {"synthetic": True, "n_images": int(cfg.n_images), "seed": int(cfg.seed)}
  return {"dataset": cfg.dataset, "records": records_fingerprint(records)}


def feature_settings(name: str, kind: str, cfg, data: dict) -> dict:
  """What determines an encoder's layer features: the encoder, the data, and the forward options."""
  out = {"encoder": name, "kind": kind, "data": data}
  if not cfg.synthetic:
    out["batch_size"] = int(cfg.batch_size)
    if kind == "text":
      out["pooling"] = cfg.text_pooling
  return out


def pair_settings(image: dict, text: dict, cfg) -> dict:
  """What determines an encoder pair's row and grids: both encoders' feature settings and the score options."""
  return {"image": image, "text": text, "metrics": list(cfg.metrics), "primary": cfg.primary, "k": int(cfg.k),
          "block_size": int(cfg.block_size), "n_perm_grid": int(cfg.n_perm_grid), "n_perm": int(cfg.n_perm),
          "n_boot": int(cfg.n_boot), "seed": int(cfg.seed)}


def load_done(path: str, key: str) -> dict | None:
  """The finished pair at ``path`` if it was computed under the settings of ``key``."""
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as fh:
    saved = json.load(fh)
  return saved if saved.get("key") == key else None


# ================================================================================================================
# Main
# ================================================================================================================
def run(cfg, workdir: str) -> dict:
  # --- config and data, checked before anything is written (a user error leaves no workdir behind) -------------
  with cfg_lib.user_errors():
    CONFIG.validate(cfg)
    records = None if cfg.synthetic else select_records(cfg)
    if records is not None and len(records) < 4:
      raise ValueError(f"config.dataset={cfg.dataset!r} gives {len(records)} images with a caption (at least 4 are "
                       "needed)")
    data = data_settings(cfg, records)
  metrics, image_names, text_names = cfg.metrics, cfg.image_encoders, cfg.text_encoders
  feats = {(n, k): feature_settings(n, k, cfg, data)
           for names, k in ((image_names, "image"), (text_names, "text")) for n in names}
  pairs = {}
  for iname in image_names:
    for tname in text_names:
      method = f"{SHORT.get(iname, iname)}_x_{SHORT.get(tname, tname)}"
      settings = pair_settings(feats[iname, "image"], feats[tname, "text"], cfg)
      pairs[method] = (iname, tname, settings, wd.settings_key(settings))
  wd.save_config(workdir, cfg)
  t_start = time.time()
  devices = jax.local_devices()  # every host computes everything (small); its devices split the permutations
  mesh = Mesh(np.array(devices), ("data",)) if len(devices) > 1 else None
  print(f"devices: {len(devices)} x {devices[0].platform}" + (", permutations split over them" if mesh else ""))
  done_path = lambda method, key: os.path.join(workdir, "done", f"{method}__{key[:12]}.json")  # noqa: E731
  saved = {m: load_done(done_path(m, key), key) for m, (_, _, _, key) in pairs.items()}
  n_todo = sum(v is None for v in saved.values())
  print(f"{len(pairs) - n_todo} of {len(pairs)} encoder pairs done before with these settings, {n_todo} to run")
  results, all_grids = {}, {}
  for method, (iname, tname, settings, key) in pairs.items():
    if saved[method] is None:
      print(f"{method}:")
      fx = features(iname, "image", records, cfg, workdir, key=wd.settings_key(feats[iname, "image"]))
      fy = features(tname, "text", records, cfg, workdir, key=wd.settings_key(feats[tname, "text"]))
      row, grids = score_pair(fx, fy, metrics, cfg, mesh)
      plot_grids(method, grids, os.path.join(workdir, f"{method}.png"))
      saved[method] = {"key": key, "settings": settings, "row": row, "grids": grids}
      if wd.is_primary():
        sio.write_json(done_path(method, key), saved[method])
    results[method], all_grids[method] = saved[method]["row"], saved[method]["grids"]
    r = saved[method]["row"]
    print(f"  {method:16s} best {cfg.primary} {r['best_cka']:.4f} at {r['best_layer_pair']}  z {r['best_z']:.1f}"
          f"  p {r['best_p']:.4f}  CI [{r['best_ci_low']:.3f}, {r['best_ci_high']:.3f}]")
  if wd.is_primary():
    sio.write_json(os.path.join(workdir, "grids.json"), all_grids)
  table = wd.write_results(workdir, results, dataset=cfg.dataset, primary=cfg.primary, n_perm=cfg.n_perm,
                           n_devices=len(devices), pairs_run_now=n_todo,
                           keys={m: key for m, (_, _, _, key) in pairs.items()},
                           seconds=round(time.time() - t_start, 1))
  print(f"\nBest layer pairs ({cfg.dataset}, primary metric {cfg.primary}):\n\n{table}")
  return results


if __name__ == "__main__":
  cfg_lib.launch(run, "configs/alignment_scores.py")
