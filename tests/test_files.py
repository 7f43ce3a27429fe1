"""Embedding files (sotalign_jax.data.files): the checks, the converter both ways, experiments/sotalign.py (the engine's
SOTAlign preset) on them."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from sotalign_jax.cli import convert
from sotalign_jax.data.cache import load_cache
from sotalign_jax.data.fake import make_fake_cache
from sotalign_jax.data.files import FILE_KEYS, first_nonfinite_row, open_embedding_files
from sotalign_jax.data.protocol import Protocol
from sotalign_jax.runtime import config as cfg_lib

ROWS = {"pairs": 10, "unpaired_x": 7, "unpaired_y": 9, "val": 5, "test": 8}
DX, DY = 6, 4


def rows_of(key):
  return ROWS.get(key, ROWS.get(key.rsplit("_", 1)[0]))


@pytest.fixture
def files(tmp_path, rng):
  """A valid set of the eight files: key → path."""
  paths = {}
  for key in FILE_KEYS:
    paths[key] = str(tmp_path / f"{key}.npy")
    np.save(paths[key], rng.normal(size=(rows_of(key), DX if key.endswith("_x") else DY)).astype(np.float32))
  return paths


def test_valid_files_open_as_memory_maps(files):
  f = open_embedding_files(files)
  for key in FILE_KEYS:
    a = getattr(f, key)
    assert isinstance(a, np.memmap) and a.dtype == np.float32, key  # not read into memory
    np.testing.assert_array_equal(a, np.load(files[key]))
  assert f.n_pairs == 10 and f.sizes["unpaired_y"] == [9, DY] and f.paths == files


def test_only_the_test_files_are_required(files):
  f = open_embedding_files({"test_x": files["test_x"], "test_y": files["test_y"], "pairs_x": ""})
  assert f.n_pairs == 0 and f.pairs_x is None and f.unpaired_y is None and set(f.paths) == {"test_x", "test_y"}
  f = open_embedding_files({k: files[k] for k in ("test_x", "test_y", "unpaired_y")})  # one unpaired side is fine
  assert f.unpaired_x is None and len(f.unpaired_y) == 9


def _replace(path, content):
  if isinstance(content, bytes):
    with open(path, "wb") as fh:
      fh.write(content)
  elif isinstance(content, dict):
    np.savez(path, **content)
    os.replace(path + ".npz", path)
  else:
    np.save(path, content)


def _truncated():
  import io
  buf = io.BytesIO()
  np.save(buf, np.zeros((8, DX), np.float32))
  return buf.getvalue()[:-40]


@pytest.mark.parametrize("key, content, error, words", [
    ("pairs_x", np.zeros((10, DX), np.float64), ValueError, ["dtype float64", "float32", "astype(np.float32)"]),
    ("val_y", np.zeros(5, np.float32), ValueError, ["shape (5,)", "2-D"]),
    ("test_x", np.zeros((0, DX), np.float32), ValueError, ["empty", "shape (0, 6)"]),
    ("unpaired_x", b"not an array\n", ValueError, ["is not a .npy file"]),
    ("unpaired_y", {"a": np.zeros((3, DY), np.float32)}, ValueError, ["is not a .npy file", ".npz"]),
    ("test_y", _truncated(), ValueError, ["is not a readable .npy file", "truncated"]),
    ("pairs_y", np.zeros((11, DY), np.float32), ValueError, ["has 11 rows", "config.data.pairs_x", "row-aligned"]),
    ("val_x", np.zeros((5, DX + 1), np.float32), ValueError, ["one dimension", "has 7", "config.data.pairs_x"]),
    ("unpaired_y", np.full((9, DY), np.inf, np.float32), ValueError, ["NaN/Inf in row 0"]),
])
def test_a_bad_file_is_rejected_naming_its_key_and_path(files, key, content, error, words):
  _replace(files[key], content)
  with pytest.raises(error) as e:
    open_embedding_files(files)
  for w in [f"config.data.{key}", files[key], *words]:
    assert w in str(e.value), (w, str(e.value))


def test_a_missing_file_is_a_file_not_found_error_naming_the_key(files, tmp_path):
  files["unpaired_x"] = str(tmp_path / "nope.npy")
  with pytest.raises(FileNotFoundError, match=r"config\.data\.unpaired_x: .*nope\.npy not found"):
    open_embedding_files(files)


@pytest.mark.parametrize("drop, words", [
    (("val_y",), ["config.data.val_x is set", "config.data.val_y is not", "both"]),
    (("pairs_x",), ["config.data.pairs_y is set", "config.data.pairs_x is not"]),
    (("test_x", "test_y"), ["config.data.test_x and config.data.test_y not set", "required"]),
])
def test_half_a_couple_or_no_test_files_is_rejected(files, drop, words):
  for k in drop:
    files[k] = ""
  with pytest.raises(ValueError) as e:
    open_embedding_files(files)
  for w in words:
    assert w in str(e.value), (w, str(e.value))


def test_an_unknown_key_is_rejected(files):
  with pytest.raises(ValueError, match="unknown embedding file key.*pair_x"):
    open_embedding_files({**files, "pair_x": files["pairs_x"]})


def test_the_nan_scan_goes_block_by_block_and_reports_the_first_bad_row(tmp_path, files, rng):
  big = rng.normal(size=(40, DX)).astype(np.float32)
  big[29, 2], big[13, 0] = np.inf, np.nan
  np.save(files["unpaired_x"], big)
  with pytest.raises(ValueError, match=r"config\.data\.unpaired_x: .*unpaired_x\.npy has NaN/Inf in row 13 "):
    open_embedding_files(files, block_rows=4)  # row 13 is in the 4th block
  assert open_embedding_files(files, check_values=False).unpaired_x.shape == (40, DX)

  class Recorder:  # a stand-in for a memory map that records every read
    def __init__(self, a):
      self.a, self.reads = a, []

    def __len__(self):
      return len(self.a)

    def __getitem__(self, rows):
      self.reads.append((rows.start, rows.stop))
      return self.a[rows]
  r = Recorder(big)
  assert first_nonfinite_row(r, block_rows=4) == 13
  assert r.reads == [(0, 4), (4, 8), (8, 12), (12, 16)]  # stopped at the bad block, never more than 4 rows at once
  big[13, 0] = 0
  r = Recorder(big)
  assert first_nonfinite_row(r, block_rows=16) == 29 and max(b - a for a, b in r.reads) == 16
  assert first_nonfinite_row(big, rows=slice(0, 20), block_rows=16) is None  # one host's block (scan_rows)


def test_errors_name_the_given_names(files):
  np.save(files["test_x"], np.zeros((8, DX), np.float64))
  with pytest.raises(ValueError, match=r"^--test-x: "):
    open_embedding_files(files, names=convert.flag_names())


# ------------------------------------------------------------------------------------------------------------
# The converter: cache → files → cache → files.
# ------------------------------------------------------------------------------------------------------------
TO_FILES = ["--n-pairs", "64", "--test-size", "60", "--val-size", "40"]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  root = tmp_path_factory.mktemp("convert")
  cache = make_fake_cache(str(root / "cache"), n_images=400)
  assert convert.main(["to-files", "--cache", cache, "--out", str(root / "files"), *TO_FILES]) == 0
  return cache, str(root / "files")


def file_flags(directory, keys=FILE_KEYS):
  return [a for k in keys for a in (convert.flag_names()[k], os.path.join(directory, f"{k}.npy"))]


def test_to_files_writes_the_rows_the_protocol_names(converted):
  cache_dir, out = converted
  cache = load_cache(cache_dir)
  proto = Protocol.from_cache(cache, test_size=60, val_size=40)
  d = proto.draw(0, 64)
  want = {"pairs_x": cache.image_emb[d["pair_x"]], "pairs_y": cache.text_emb[d["pair_y"]],
          "unpaired_x": cache.image_emb[d["unp_x"]], "unpaired_y": cache.text_emb[d["unp_y"]]}
  for role in ("val", "test"):
    h = proto.held_out(role)
    want[f"{role}_x"] = cache.image_emb[h["image_rows"]]
    want[f"{role}_y"] = cache.text_emb[h["caption_rows"][h["first"]]]
    owner = np.array([cache.index[r]["image"] for r in h["caption_rows"][h["first"]]])
    np.testing.assert_array_equal(owner, h["image_rows"])  # caption i is a caption of image i
  for key in FILE_KEYS:
    a = np.load(os.path.join(out, f"{key}.npy"))
    assert a.dtype == np.float32
    np.testing.assert_array_equal(a, want[key], err_msg=key)
  m = json.load(open(os.path.join(out, "manifest.json")))
  assert m["source"]["cache"] == os.path.abspath(cache_dir) and "job_id" in m["source"]
  assert m["sizes"]["pairs_x"] == [64, 48] and m["sizes"]["test_y"] == [60, 32]
  assert m["protocol"]["n_pairs"] == 64 and m["protocol"]["split"] == "hash"
  assert m["command"].startswith("python -m sotalign_jax.cli.convert to-files --cache ")


def test_to_cache_and_back(converted, tmp_path, capsys):
  _, out = converted
  assert convert.main(["to-cache", *file_flags(out), "--out", str(tmp_path / "cache")]) == 0
  assert "--unpaired-x, --unpaired-y checked but not written" in capsys.readouterr().err
  back = load_cache(str(tmp_path / "cache"))
  load = lambda k: np.load(os.path.join(out, f"{k}.npy"))  # noqa: E731
  np.testing.assert_array_equal(back.image_emb, np.concatenate([load(k) for k in ("pairs_x", "val_x", "test_x")]))
  np.testing.assert_array_equal(back.text_emb, np.concatenate([load(k) for k in ("pairs_y", "val_y", "test_y")]))
  assert [r["image"] for r in back.index] == list(range(164))
  assert [r["split"] for r in back.index] == ["paired"] * 64 + ["val"] * 40 + ["test"] * 60
  assert set(back.manifest["unpaired_not_written"]) == {"unpaired_x", "unpaired_y"}
  # and back to files with the cache's own splits: val and test row for row, the pairs as a permutation
  again = str(tmp_path / "again")
  assert convert.main(["to-files", "--cache", str(tmp_path / "cache"), "--out", again, "--split", "cache",
                       "--n-pairs", "-1", "--min-unpaired", "0", "--quiet"]) == 0
  for key in ("val_x", "val_y", "test_x", "test_y"):
    np.testing.assert_array_equal(np.load(os.path.join(again, f"{key}.npy")), load(key), err_msg=key)
  px, py = np.load(os.path.join(again, "pairs_x.npy")), np.load(os.path.join(again, "pairs_y.npy"))
  order = [np.flatnonzero((load("pairs_x") == row).all(1))[0] for row in px]
  assert sorted(order) == list(range(64))
  np.testing.assert_array_equal(py, load("pairs_y")[order])  # still row-aligned
  assert not os.path.exists(os.path.join(again, "unpaired_x.npy"))  # no unpaired images: no file


def test_bad_input_exits_2_naming_the_flag_and_file(converted, tmp_path, capsys):
  cache_dir, out = converted
  bad = str(tmp_path / "test_x.npy")
  np.save(bad, np.load(os.path.join(out, "test_x.npy")).astype(np.float64))
  flags = file_flags(out, ("test_y",)) + ["--test-x", bad]
  assert convert.main(["to-cache", *flags, "--out", str(tmp_path / "c")]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: --test-x: ") and bad in err and "float32" in err
  assert not os.path.exists(tmp_path / "c" / "manifest.json")
  assert convert.main(["to-cache", *file_flags(out, ("test_x", "test_y", "val_x")), "--out", str(tmp_path)]) == 2
  assert "--val-x is set" in capsys.readouterr().err
  assert convert.main(["to-files", "--cache", str(tmp_path / "nope"), "--out", str(tmp_path / "f")]) == 2
  assert "error: --cache: " in capsys.readouterr().err
  assert convert.main(["to-files", "--cache", cache_dir, "--out", cache_dir, *TO_FILES]) == 2  # never over a cache
  assert "would overwrite the input" in capsys.readouterr().err
  assert os.path.exists(os.path.join(cache_dir, "manifest.json"))
  assert convert.main(["to-files", "--cache", cache_dir, "--out", str(tmp_path / "f"), "--test-size", "1000"]) == 2
  assert "lower --test-size" in capsys.readouterr().err


def test_python_dash_m_runs_the_converter(converted, tmp_path):
  _, out = converted
  res = subprocess.run([sys.executable, "-m", "sotalign_jax.cli.convert", "to-cache", *file_flags(out),
                        "--out", str(tmp_path / "c"), "--quiet"], capture_output=True, text=True, cwd=REPO,
                       timeout=120)
  assert res.returncode == 0, res.stderr
  assert json.loads(res.stdout)["splits"] == {"paired": 64, "val": 40, "test": 60} and not res.stderr


# ------------------------------------------------------------------------------------------------------------
# experiments/sotalign.py (the engine's SOTAlign preset) in file mode.
# ------------------------------------------------------------------------------------------------------------
SCRIPT = os.path.join(REPO, "experiments", "sotalign.py")
CONFIG = os.path.join(REPO, "configs", "proj", "sotalign", "config.py")


def launch(workdir, directory, *overrides, keys=FILE_KEYS):
  return [sys.executable, SCRIPT, "--config", CONFIG + ":smoke", "--workdir", str(workdir),
          "--config.methods=cca,sotalign", *[f"--config.data.{k}={os.path.join(directory, k + '.npy')}" for k in keys],
          *overrides]


def test_sotalign_runs_on_the_files_and_a_rerun_resumes(converted, tmp_path):
  _, out = converted
  argv = launch(tmp_path, out, "--config.n_pairs=-1", "--config.data.cache=/no/such/cache")
  first = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=REPO)
  assert first.returncode == 0, first.stderr[-3000:]
  res = json.load(open(tmp_path / "results.json"))
  assert res["protocol"]["files"] == {k: os.path.join(out, f"{k}.npy") for k in FILE_KEYS}
  assert res["protocol"]["n_test_images"] == 60 and res["p_values"] == [64]
  assert [c["sizes"] for c in res["cells"]] == [{"pairs": 64, "unpaired_x": 118, "unpaired_y": 236}] * 2
  assert set(res["methods"]) == {"cca", "sotalign"}
  for m, r in res["methods"].items():
    assert r["p64/i2t_r10"] > 3 * 10 / 60, (m, r)  # far above chance on the fake cache's planted structure
    assert "p64/tuxpaint_i2t_r1" not in r and "p64/zeroshot_fashion_mnist" not in r  # not evaluated (NaN)
  again = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=REPO)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "2 of 2 cells done before with these settings, 0 to run" in again.stdout, again.stdout[-3000:]
  assert json.load(open(tmp_path / "results.json"))["summary"] == res["summary"]  # read back from done/, not refitted

  # the evaluation CLI on the run's own test files gives the run's numbers; a folder is refused (no encoders)
  evaluate = [sys.executable, "-m", "sotalign_jax.cli.evaluate", "--workdir", str(tmp_path), "--method", "sotalign"]
  got = subprocess.run(evaluate + ["--x", os.path.join(out, "test_x.npy"), "--y", os.path.join(out, "test_y.npy")],
                       capture_output=True, text=True, timeout=300, cwd=REPO)
  assert got.returncode == 0, got.stderr[-3000:]
  got = json.loads(got.stdout.strip().splitlines()[-1])
  for k in ("i2t_r1", "i2t_r10", "t2i_r1", "t2i_r10"):
    np.testing.assert_allclose(got[k], res["methods"]["sotalign"][f"p64/{k}"], atol=1e-6)
  refused = subprocess.run(evaluate + ["--x", os.path.join(out, "test_x.npy"), "--y", os.path.join(out, "pairs_x.npy")],
                           capture_output=True, text=True, timeout=300, cwd=REPO)
  assert refused.returncode == 2 and "--x" in refused.stderr and "rows" in refused.stderr, refused.stderr[-2000:]
  refused = subprocess.run(evaluate + ["--folder", str(tmp_path)], capture_output=True, text=True, timeout=300,
                           cwd=REPO)
  assert refused.returncode == 2 and "trained from embedding files" in refused.stderr, refused.stderr[-2000:]


def test_a_bad_file_stops_the_experiment_at_start_up(converted, tmp_path):
  _, out = converted
  bad = tmp_path / "files"
  bad.mkdir()
  for k in FILE_KEYS:
    a = np.load(os.path.join(out, f"{k}.npy"))
    np.save(bad / f"{k}.npy", a[:-1] if k == "val_y" else a)
  res = subprocess.run(launch(tmp_path / "w", str(bad)), capture_output=True, text=True, timeout=300, cwd=REPO)
  assert res.returncode != 0
  assert f"config.data.val_x ({bad}/val_x.npy) has 40 rows but config.data.val_y" in res.stderr, res.stderr[-2000:]
  assert not (tmp_path / "w" / "results.json").exists()


@pytest.mark.parametrize("overrides, message", [
    ({"pairs_x": "a.npy"}, "a.npy) but config.data.pairs_y is not"),
    ({"test_x": "a.npy"}, "config.data.test_x is set ("),
    ({"pairs_x": "c", "pairs_y": "d"}, "config.data.test_x and config.data.test_y"),
    ({**{k: "f" for k in FILE_KEYS}, "extra_unpaired_text": ("c",)}, "config.data.extra_unpaired_text reads caches"),
    ({**{k: "f" for k in FILE_KEYS}, "n_pairs": (-2,)}, "config.n_pairs must be a tuple of which every entry is -1"),
])
def test_file_mode_config_errors_name_the_key(overrides, message):
  module = cfg_lib.config_module(CONFIG)
  cfg = module.get_config("smoke")
  for k, v in overrides.items():
    if k == "n_pairs":
      cfg.n_pairs = v
    else:
      cfg.data[k] = v
  with pytest.raises(ValueError) as e:
    module.validate(cfg)
  assert message in str(e.value), str(e.value)


def test_n_pairs_minus_one_is_the_largest_p_in_both_modes():
  module = cfg_lib.config_module(CONFIG)
  cfg = module.get_config("smoke")
  cfg.n_pairs = (-1,)
  module.validate(cfg)  # cache mode: the largest p leaving data.min_unpaired images unpaired (engine protocol)
