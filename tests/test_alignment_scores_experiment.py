"""experiments/alignment_scores.py: bad input leaves nothing behind; features and encoder pairs are keyed by their
settings (an unchanged rerun reuses them, a changed setting recomputes)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO

SCRIPT = os.path.join(REPO, "experiments", "alignment_scores.py")


def launch(workdir, arg, *overrides):
  return [sys.executable, SCRIPT, "--config", os.path.join(REPO, "configs", "alignment_scores.py") + f":{arg}",
          "--workdir", str(workdir), *overrides]


@pytest.mark.parametrize("arg, override, message", [
    ("smoke", "--config.primary=cknna", "config.primary='cknna' must be one of config.metrics"),
    ("smoke", "--config.n_perm=0", "config.n_perm must be a positive integer"),
    ("smoke", "--config.text_pooling=max", "config.text_pooling must be one of"),
    ("smoke", "--config.no_such_key=1", "no_such_key"),
    ("quick", "--config.dataset=no_such_dataset", "unknown dataset 'no_such_dataset'"),
])
def test_bad_input_exits_2_with_one_line_and_leaves_no_workdir(tmp_path, arg, override, message):
  out = subprocess.run(launch(tmp_path / "w", arg, override), capture_output=True, text=True, timeout=300, cwd=REPO)
  assert out.returncode == 2, out.stderr[-3000:]
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], out.stderr[-3000:]
  assert not (tmp_path / "w").exists()  # nothing written: no workdir, no config.json


def smoke(**overrides):
  from configs.alignment_scores import get_config  # pylint: disable=g-import-not-at-top
  cfg = get_config("smoke")
  cfg.unlock()
  for k, v in overrides.items():
    setattr(cfg, k, v)
  cfg.lock()
  return cfg


def test_reruns_reuse_unchanged_settings_and_recompute_changed_ones(tmp_path, capsys):
  from experiments import alignment_scores  # pylint: disable=g-import-not-at-top
  w = str(tmp_path)
  done = lambda: sorted(os.listdir(tmp_path / "done"))  # noqa: E731
  feats = lambda: sorted(os.listdir(tmp_path / "features"))  # noqa: E731

  first = alignment_scores.run(smoke(), w)
  assert "0 of 1 encoder pairs done before with these settings, 1 to run" in capsys.readouterr().out
  assert len(done()) == 1 and len(feats()) == 2
  key = json.load(open(tmp_path / "results.json"))["keys"]["syn0_x_syn1"]
  assert done() == [f"syn0_x_syn1__{key[:12]}.json"]

  again = alignment_scores.run(smoke(), w)  # unchanged: reused
  assert "1 of 1 encoder pairs done before with these settings, 0 to run" in capsys.readouterr().out
  assert again == first and len(done()) == 1 and json.load(open(tmp_path / "results.json"))["pairs_run_now"] == 0

  # more calibration permutations: the pair is computed anew on the same (reused) features; the old record stays
  more = alignment_scores.run(smoke(n_perm=199), w)
  assert "0 of 1 encoder pairs done before with these settings, 1 to run" in capsys.readouterr().out
  assert len(done()) == 2 and len(feats()) == 2
  assert more["syn0_x_syn1"]["best_p"] != first["syn0_x_syn1"]["best_p"]  # 1/(99+1) steps vs 1/(199+1)

  # other data (more images): new features and a new pair
  bigger = alignment_scores.run(smoke(n_images=150), w)
  assert "0 of 1 encoder pairs done before with these settings, 1 to run" in capsys.readouterr().out
  assert len(done()) == 3 and len(feats()) == 4
  assert bigger["syn0_x_syn1"]["n"] == 150 and first["syn0_x_syn1"]["n"] == 120

  # back to the first settings: found again
  assert alignment_scores.run(smoke(), w) == first
  assert "1 of 1 encoder pairs done before with these settings, 0 to run" in capsys.readouterr().out
  assert len(done()) == 3


def test_the_data_fingerprint_sees_ids_captions_and_image_content(tmp_path):
  from experiments import alignment_scores  # pylint: disable=g-import-not-at-top
  from sotalign_jax.data.core import Record  # pylint: disable=g-import-not-at-top
  paths = []
  for i in range(3):
    paths.append(str(tmp_path / f"{i}.png"))
    with open(paths[-1], "wb") as fh:
      fh.write(bytes([i]) * 10)
  records = [Record(f"id{i}", f"caption {i}", image_path=p) for i, p in enumerate(paths)]
  records.append(Record("id3", "caption 3", image=np.zeros((4, 4), np.uint8)))
  fp = alignment_scores.records_fingerprint
  base = fp(records)
  assert fp(list(records)) == base
  assert fp(records[:3] + [records[3]._replace(image=np.ones((4, 4), np.uint8))]) != base
  assert fp([records[0]._replace(caption="other")] + records[1:]) != base
  assert fp([records[0]._replace(image_id="other")] + records[1:]) != base
  with open(paths[1], "wb") as fh:  # same path, other content
    fh.write(b"changed")
  assert fp(records) != base
