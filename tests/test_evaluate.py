"""`python -m sotalign_jax.cli.evaluate` on a folder, with fake encoders: it embeds the folder once with the run's
encoders and reports the same recalls as the run's heads applied by hand."""

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
from sotalign_jax.nn.heads import load_heads


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
  out = run("experiments/sotalign.py", "--config", "configs/sotalign.py:smoke", "--workdir", str(wd),
            f"--config.data.cache={cache}", "--config.methods=('ridge','sail')", "--config.data.n_pairs=20",
            "--config.teacher.cca_dim=8", "--config.eval.fashion_mnist_cache=", "--config.eval.tuxpaint_cache=")
  assert out.returncode == 0, out.stderr[-2000:]

  out = run("-m", "sotalign_jax.cli.evaluate", "--workdir", str(wd), "--folder", str(folder), "--method", "sail")
  assert out.returncode == 0, out.stderr[-2000:]
  got = json.loads(out.stdout.strip().splitlines()[-1])
  assert set(got) == {"i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"}

  # the same numbers by hand, from the folder itself: the fake encoders on every image and caption, the run's sail
  # heads, cosine scores, and for each query the rank of its best positive among the negatives (image k's
  # positives are its two captions, rows 2k and 2k + 1; caption l's positive is image l // 2)
  spec = importlib.util.spec_from_file_location("fake_enc_by_hand", tmp_path / "mods" / "fake_enc.py")
  fake_enc = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(fake_enc)
  raw_x = np.asarray(fake_enc.apply(np.stack([fake_enc.preprocess(Image.open(folder / f"{k}.png"))
                                              for k in range(120)])))
  raw_y = fake_enc.encode([line["caption"] for line in lines])
  (run_dir,) = [d for d in glob.glob(str(wd / "runs" / "sail_n20*")) if os.path.exists(os.path.join(d, "heads.json"))]
  embed_x, embed_y = load_heads(run_dir)
  zx, zy = np.asarray(embed_x(raw_x), np.float64), np.asarray(embed_y(raw_y), np.float64)
  s = (zx / np.linalg.norm(zx, axis=1, keepdims=True)) @ (zy / np.linalg.norm(zy, axis=1, keepdims=True)).T
  positive = np.arange(240)[None, :] // 2 == np.arange(120)[:, None]  # [image, caption]
  i2t = [np.sum(s[k][~positive[k]] > s[k][positive[k]].max()) for k in range(120)]
  t2i = [np.sum(s[:, j][~positive[:, j]] > s[j // 2, j]) for j in range(240)]
  for k in (1, 5, 10):
    np.testing.assert_allclose(got[f"i2t_r{k}"], np.mean(np.array(i2t) < k), atol=1e-12)
    np.testing.assert_allclose(got[f"t2i_r{k}"], np.mean(np.array(t2i) < k), atol=1e-12)
  assert 0 < got["i2t_r10"] < 1 and got["i2t_r1"] != got["t2i_r1"]  # informative numbers, not all 0 or 1
  assert len(os.listdir(wd / "eval_cache")) == 1

  bad = run("-m", "sotalign_jax.cli.evaluate", "--workdir", str(wd), "--folder", str(folder), "--method", "structure")
  assert bad.returncode == 2 and "structure" in bad.stderr
