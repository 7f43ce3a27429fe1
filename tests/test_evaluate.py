"""`python -m sotalign_jax.cli.evaluate` on a cell of an experiment, with fake encoders: on a folder (embedded once
with the run's encoders), on row-aligned files and on the run's own test set, every route gives what a plain numpy
computation in this test gives from the saved alignment (cosine similarities, the rank of the true partner, R@1/5/10,
image→text and text→image), and the run's own numbers."""

import glob
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

from conftest import REPO
from test_embed import FAKE_SRC
from sotalign_jax.aligners import io


def _cosine(zx, zy):
  zx, zy = np.asarray(zx, np.float64), np.asarray(zy, np.float64)
  return (zx / np.linalg.norm(zx, axis=1, keepdims=True)) @ (zy / np.linalg.norm(zy, axis=1, keepdims=True)).T


def _by_hand(s, positive):
  """R@1/5/10, mean and median rank of both directions of the [image, caption] scores ``s``, ``positive`` the
  [image, caption] mask of true pairs: each query's rank is 1 + the keys that are not its partners scored above its
  best partner."""
  out = {}
  for d, (m, pos) in {"i2t": (s, positive), "t2i": (s.T, positive.T)}.items():
    rank = np.array([1 + np.sum(m[q][~pos[q]] > m[q][pos[q]].max()) for q in range(len(m))])
    out.update({f"{d}_r{k}": np.mean(rank <= k) for k in (1, 5, 10)})
    out.update({f"{d}_mean_rank": rank.mean(), f"{d}_median_rank": np.median(rank)})
  return out


def _check_retrieval(got, want, what):
  for d in ("i2t", "t2i"):
    for m in ("r1", "r5", "r10", "mean_rank", "median_rank"):
      np.testing.assert_allclose(got[f"{d}_{m}"], want[f"{d}_{m}"], atol=1e-12, err_msg=f"{what}: {d}_{m}")


def test_evaluate_folder_cli(tmp_path):
  (tmp_path / "mods").mkdir()
  (tmp_path / "mods" / "fake_enc.py").write_text(FAKE_SRC)
  env = dict(os.environ, PYTHONPATH=str(tmp_path / "mods"))
  folder = tmp_path / "pics"
  folder.mkdir()
  rng = np.random.default_rng(0)
  lines = []
  for k in range(120):
    Image.fromarray(rng.integers(0, 256, (9, 9, 3), dtype=np.uint8)).save(folder / f"{k}.png")
    lines += [{"image": f"{k}.png", "caption": f"picture {k}"}, {"image": f"{k}.png", "caption": f"view {k}"}]
  (folder / "captions.jsonl").write_text("\n".join(map(json.dumps, lines)))
  cache = tmp_path / "cache"
  run = lambda *a: subprocess.run([sys.executable, *a], env=env, cwd=REPO, capture_output=True, text=True,
                                  timeout=600)
  out = run("-m", "sotalign_jax.cli.embed", "--folder", str(folder), "--image-encoder", "fake_enc:image",
            "--text-encoder", "fake_enc:text", "--out", str(cache), "--quiet")
  assert out.returncode == 0, out.stderr[-2000:]
  wd = tmp_path / "run"
  out = run("experiments/sotalign.py", "--config", "configs/proj/sotalign/config.py:smoke", "--workdir", str(wd),
            f"--config.data.cache={cache}", "--config.methods=('ridge','sail')", "--config.n_pairs=20",
            "--config.hparams.sail.teacher_dim=8", "--config.evals.fashion_mnist.cache=",
            "--config.evals.tuxpaint.cache=")
  assert out.returncode == 0, out.stderr[-2000:]

  ev = lambda *a: run("-m", "sotalign_jax.cli.evaluate", *a)  # noqa: E731
  out = ev("--workdir", str(wd), "--folder", str(folder), "--method", "sail")
  assert out.returncode == 0, out.stderr[-2000:]
  got = json.loads(out.stdout.strip().splitlines()[-1])
  retrieval = {f"{d}_{m}" for d in ("i2t", "t2i") for m in ("r1", "r5", "r10", "mean_rank", "median_rank")}
  assert set(got) == retrieval | {"foscttm", "matching_acc"}  # the run's evaluators of the test set
  assert len(os.listdir(wd / "eval_cache")) == 1

  # the same numbers by hand, from the folder itself: the fake encoders on every image and caption, the saved sail
  # alignment of the cell (found through its record's run_dir) embedding both sides, numpy cosine scores; image
  # k's partners are its two captions, rows 2k and 2k + 1, caption l's partner is image l // 2
  spec = importlib.util.spec_from_file_location("fake_enc_by_hand", tmp_path / "mods" / "fake_enc.py")
  fake_enc = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(fake_enc)
  raw_x = np.asarray(fake_enc.apply(np.stack([fake_enc.preprocess(Image.open(folder / f"{k}.png"))
                                              for k in range(120)])))
  raw_y = fake_enc.encode([line["caption"] for line in lines])
  (record,) = [json.load(open(f)) for f in glob.glob(str(wd / "done" / "sail" / "p20_s0__*.json"))]
  alignment = io.load(wd / record["run_dir"] / "alignment")
  s = _cosine(alignment.embed_x(raw_x), alignment.embed_y(raw_y))
  positive = np.arange(240)[None, :] // 2 == np.arange(120)[:, None]  # [image, caption]
  want = _by_hand(s, positive)
  _check_retrieval(got, want, "--folder")
  assert 0 < got["i2t_r10"] < 1 and got["i2t_r1"] != got["t2i_r1"]  # informative numbers, not all 0 or 1

  # row-aligned files (each image with its first caption: one partner each), through --alignment
  np.save(tmp_path / "tx.npy", raw_x)
  np.save(tmp_path / "ty.npy", raw_y[::2])
  out = ev("--alignment", str(wd / record["run_dir"] / "alignment"), "--x", str(tmp_path / "tx.npy"), "--y",
           str(tmp_path / "ty.npy"), "--evals", "retrieval")
  assert out.returncode == 0, out.stderr[-2000:]
  got = json.loads(out.stdout.strip().splitlines()[-1])
  assert set(got) == retrieval
  _check_retrieval(got, _by_hand(s[:, ::2], np.eye(120, dtype=bool)), "--x/--y")

  # the run's own test set: exactly the numbers of the cell's record
  out = ev("--workdir", str(wd), "--method", "sail", "--p", "20", "--seed", "0")
  assert out.returncode == 0, out.stderr[-2000:]
  got = json.loads(out.stdout.strip().splitlines()[-1])
  assert got == {k: v for k, v in record["metrics"].items() if k != "fit_seconds"}

  bad = ev("--workdir", str(wd), "--folder", str(folder), "--method", "structure")
  assert bad.returncode == 2 and "no finished cell of 'structure'" in bad.stderr
  assert len(bad.stderr.strip().splitlines()) == 1
  bad = ev("--workdir", str(wd), "--method", "sail", "--x", str(tmp_path / "tx.npy"), "--y", str(tmp_path / "tx.npy"))
  assert bad.returncode == 2 and "are these embeddings from the encoders the run was trained on" in bad.stderr
