"""`python -m sotalign_jax.cli.evaluate` on a folder, with fake encoders: it embeds the folder once with the run's
encoders and reports the same recalls as the run's heads applied by hand."""

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

from conftest import REPO
from test_embed import FAKE_SRC
from sotalign_jax import metrics
from sotalign_jax.data.cache import load_cache
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

  # the same numbers by hand: the run's sail heads on the folder's embeddings (same fake encoders)
  c = load_cache(cache)
  embed_x, embed_y = load_heads(str(wd / "runs" / "sail_n20"))
  imgs, owner = np.unique(c.caption_image_rows(), return_inverse=True)
  zx, zy = np.asarray(embed_x(c.image_emb[imgs])), np.asarray(embed_y(c.text_emb))
  ref = metrics.retrieval_recall(zy, zx, positives=owner)
  for k in ("r1", "r5", "r10"):
    np.testing.assert_allclose(got[f"t2i_{k}"], ref[k])
  assert len(os.listdir(wd / "eval_cache")) == 1

  bad = run("-m", "sotalign_jax.cli.evaluate", "--workdir", str(wd), "--folder", str(folder), "--method", "structure")
  assert bad.returncode == 2 and "structure" in bad.stderr
