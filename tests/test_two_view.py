"""Tests of the WordNet two-view cache (sotalign_jax.cli.two_view) with fake text encoders and a fake data.noun: no
real weights and no Debian package needed (except the one test of the real wordnet-base)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import importable_module

from sotalign_jax.cli import two_view
from sotalign_jax.data import MissingDataError, wordnet
from sotalign_jax.data.cache import load_cache
from sotalign_jax.data.protocol import Protocol

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Fake encoders, importable as `fake_tv:x` / `fake_tv:y` (also in a subprocess): a hash of each string alone, so
# rows do not depend on the batch. FAKE_TV_FAIL_X / _Y = N makes the encoder raise on its (N + 1)-th call.
FAKE_SRC = '''
import hashlib
import os
import numpy as np
from sotalign_jax.encoders import TextEncoder

CALLS = {"x": 0, "y": 0}

def vec(tag, t, d):
  return np.frombuffer(hashlib.sha256(f"{tag}:{t}".encode()).digest()[:d], np.uint8).astype(np.float32) / 255.0

def _encoder(tag, d):
  def encode(texts):
    CALLS[tag] += 1
    fail = os.environ.get(f"FAKE_TV_FAIL_{tag.upper()}")
    if fail is not None and CALLS[tag] > int(fail):
      raise RuntimeError(f"fake {tag} encoder killed")
    return np.stack([vec(tag, t, d) for t in texts])
  return TextEncoder(f"fake-{tag}", d, encode, {"kind": "fake"})

def x():
  return _encoder("x", 6)

def y():
  return _encoder("y", 10)

def not_text():
  return object()
'''

DATA_NOUN = (
    "  1 This software and database is being provided to you, the LICENSEE, by\n"
    "  2 Princeton University under the following license.\n"
    '00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 | that which is perceived; "an example"  \n'
    '00002000 17 n 01 bank 0 000 | sloping land beside a body of water; "they pulled the canoe up on the bank"  \n'
    "00002100 14 n 02 bank 1 depository_financial_institution 0 000 | a financial institution that accepts deposits  \n"
    "00002200 17 n 01 Bank 2 000 | a long ridge or pile  \n"
    "00002300 17 n 01 bank 3 000 | Sloping  land beside a body of water; the same gloss again  \n"
    "00002400 13 n 02 hotdog 0 hot_dog(a) 0 001 @ 07675627 n 0000 | a frankfurter served hot  \n"
    "00002500 17 n 01 Mercury 0 000 | the smallest planet  \n"
    "00002600 27 n 01 mercury 1 000 | a heavy silvery metallic element  \n"
    "00002700 20 n 01 aster_variety 0 000 | a variety of aster  \n"
    "00002800 20 n 02 michaelmas_daisy 0 aster 0 000 | a variety of aster  \n"
    '00002900 18 n 01 ghost 0 000 | ; "only an example"  \n'
    "00003000 18 n 01 ghost 1 000 | \n"
    "00003100 18 n 01 spirit 0 000 | \n"
    "00003200 18 n 01 spirit 1 000 | a ghost-like being  \n"
    + "".join(f"{4000 + 100 * k:08d} 04 n 01 word_{k} 0 000 | definition number {k}; an example  \n"
              for k in range(8)))
N_ITEMS = 15  # entity bank hotdog Mercury aster_variety michaelmas_daisy spirit word_0..7 (ghost has no gloss)


@pytest.fixture
def fake(tmp_path, monkeypatch):
  d = importable_module(tmp_path, monkeypatch, "fake_tv", FAKE_SRC)
  sys.modules.pop("fake_tv", None)
  import fake_tv  # pylint: disable=g-import-not-at-top
  yield d, fake_tv
  sys.modules.pop("fake_tv", None)


@pytest.fixture
def noun(tmp_path):
  root = tmp_path / "wn"
  root.mkdir()
  (root / "data.noun").write_text(DATA_NOUN)
  return str(root)


def plain_grouping(path):
  """The mapping rule written out plainly: ``[(image_id, lemma, [glosses])]`` in file order."""
  groups = {}
  for offset, lemmas, gloss in wordnet.parse_data_noun(path):
    entry = groups.setdefault(" ".join(lemmas[0].lower().split()), (f"n{offset}", lemmas[0], []))
    g = gloss.split(";")[0].strip()
    if g and " ".join(g.lower().split()) not in [" ".join(x.lower().split()) for x in entry[2]]:
      entry[2].append(g)
  return [e for e in groups.values() if e[2]]


def cache_grouping(cache):
  """``[(image_id, lemma, [captions])]`` per image row of a two-view cache, rows in order."""
  rows = {}
  for r in cache.index:
    rows.setdefault(r["image"], (r["image_id"], r["label"], []))[2].append(r["caption"])
  assert sorted(rows) == list(range(cache.image_emb.shape[0]))
  return [rows[k] for k in range(len(rows))]


def _build(noun, out, **kw):
  items, info = two_view.wordnet_items(noun, limit=kw.pop("limit", None))
  kw.setdefault("batch_size", 2)
  kw.setdefault("chunk_size", 2)
  return two_view.build_two_view(items, info, out_dir=out, x_encoder="fake_tv:x", y_encoder="fake_tv:y",
                                 progress=False, **kw)


def test_grouping_alignment_and_protocol(tmp_path, fake, noun):
  _, enc = fake
  out = tmp_path / "out"
  m = _build(noun, out)
  cache = load_cache(out)
  expected = plain_grouping(os.path.join(noun, "data.noun"))
  assert cache_grouping(cache) == expected and len(expected) == N_ITEMS
  by_lemma = {lemma: (i, g) for i, lemma, g in expected}
  assert by_lemma["bank"] == ("n00002000", ["sloping land beside a body of water",
                                            "a financial institution that accepts deposits", "a long ridge or pile"])
  assert by_lemma["Mercury"][1] == ["the smallest planet", "a heavy silvery metallic element"]
  assert by_lemma["spirit"] == ("n00003100", ["a ghost-like being"]) and "ghost" not in by_lemma
  assert by_lemma["aster variety"][1] == by_lemma["michaelmas daisy"][1] == ["a variety of aster"]
  # Rows: each caption's image row is its lemma's; embeddings are the fake encoders' outputs on those strings.
  assert cache.image_emb.shape == (N_ITEMS, 6) and cache.text_emb.shape == (len(cache.index), 10)
  assert cache.image_emb.dtype == cache.text_emb.dtype == np.float32
  lemma_of_row = [lemma for _, lemma, _ in expected]
  for r, t_row in zip(cache.index, cache.text_emb):
    assert r["label"] == lemma_of_row[r["image"]] and r["split"] == "train"
    np.testing.assert_array_equal(t_row, enc.vec("y", r["caption"], 10))
    np.testing.assert_array_equal(cache.image_emb[r["image"]], enc.vec("x", r["label"], 6))
  assert [r["synset"] for r in cache.index if r["label"] == "bank"] == ["n00002000", "n00002100", "n00002200"]
  # Manifest: both encoders, counts, the rule; the views are gone.
  assert m["x_encoder"]["name"] == "fake_tv:x" and m["y_encoder"]["dim"] == 10
  assert m["image_encoder"]["name"] == "fake_tv:x" and m["text_encoder"]["name"] == "fake_tv:y"
  info = m["dataset"]["info"]
  assert m["counts"]["images"] == N_ITEMS and m["counts"]["captions"] == len(cache.index) == 18
  assert (info["n_empty_glosses_dropped"], info["n_lemmas_without_gloss_dropped"],
          info["n_repeated_glosses_within_item_dropped"], info["n_glosses_shared_across_items"]) == (3, 1, 1, 2)
  assert info["mapping"] == two_view.MAPPING and "numpy" in m["versions"]
  assert sorted(os.listdir(out)) == ["image_embeddings.npy", "index.jsonl", "manifest.json", "text_embeddings.npy"]
  # Cache readers and the benchmark protocol take it as an image-caption cache.
  images, first = cache.first_captions()
  assert images.tolist() == list(range(N_ITEMS)) and cache.index[first[1]]["caption"] == by_lemma["bank"][1][0]
  np.testing.assert_array_equal(cache.caption_image_rows("train"), [r["image"] for r in cache.index])
  proto = Protocol.from_cache(cache, test_size=4, val_size=2, min_unpaired=2)
  assert (proto.roles == "test").sum() == 4 and len(proto.train_positions) == N_ITEMS - 6
  held = proto.held_out("test")
  assert len(held["caption_rows"]) >= 4 and proto.draw(0, proto.p_max)["pair_x"].shape == (proto.p_max,)
  assert sorted(proto.ids.tolist()) == sorted(i for i, _, _ in expected)


def test_kill_in_y_view_resumes_from_x_view_and_shards(tmp_path, fake, noun, monkeypatch, capsys):
  _, enc = fake
  ref = tmp_path / "ref"
  _build(noun, ref)
  out = tmp_path / "out"
  enc.CALLS.update(x=0, y=0)
  monkeypatch.setenv("FAKE_TV_FAIL_Y", "2")  # dies in the y view, after two of its shards
  with pytest.raises(RuntimeError, match="fake y encoder killed"):
    _build(noun, out)
  assert os.path.exists(out / "views" / "x" / "manifest.json")
  assert sorted(os.listdir(out / "views" / "y" / "shards")) == ["job.json", "texts-00000.npy", "texts-00001.npy"]
  assert not os.path.exists(out / "manifest.json") and not os.path.exists(out / "image_embeddings.npy")
  monkeypatch.delenv("FAKE_TV_FAIL_Y")
  monkeypatch.setenv("FAKE_TV_FAIL_X", "0")  # the rerun must not embed a single lemma again
  enc.CALLS.update(x=0, y=0)
  m = _build(noun, out)
  n_unique = m["counts"]["unique_captions"]
  assert enc.CALLS == {"x": 0, "y": -(-n_unique // 2) - 2}
  a, b = load_cache(ref), load_cache(out)
  np.testing.assert_array_equal(a.image_emb, b.image_emb)
  np.testing.assert_array_equal(a.text_emb, b.text_emb)
  assert a.index == b.index and a.manifest["job_id"] == b.manifest["job_id"]
  assert not os.path.exists(out / "views") and not [f for f in os.listdir(out) if f.startswith(".tmp")]
  # A finished cache: a rerun is a no-op (the encoders are loaded, never called); other arguments need overwrite.
  enc.CALLS.update(x=0, y=0)
  capsys.readouterr()
  assert _build(noun, out)["created"] == m["created"] and enc.CALLS == {"x": 0, "y": 0}
  assert "already complete" in capsys.readouterr().err
  monkeypatch.delenv("FAKE_TV_FAIL_X")
  with pytest.raises(FileExistsError, match="--overwrite"):
    _build(noun, out, batch_size=4)
  assert _build(noun, out, batch_size=4, overwrite=True)["preprocessing"]["batch_size"] == 4


def test_limit_is_a_stable_nested_subset(tmp_path, fake, noun):
  path = os.path.join(noun, "data.noun")
  full, _ = two_view.group_synsets(wordnet.parse_data_noun(path))
  small, stats = two_view.group_synsets(wordnet.parse_data_noun(path), limit=5)
  bigger, _ = two_view.group_synsets(wordnet.parse_data_noun(path), limit=6)
  assert len(small) == 5 and stats["n_items"] == 5 and stats["n_items_before_limit"] == N_ITEMS
  assert {i.image_id for i in small} < {i.image_id for i in bigger}
  order = [i.image_id for i in full]
  assert [i.image_id for i in small] == [i for i in order if i in {s.image_id for s in small}]  # file order kept
  assert all(s in full for s in small)  # whole items: every gloss of a kept lemma
  m = _build(noun, tmp_path / "out", limit=5)
  cache = load_cache(tmp_path / "out")
  assert m["counts"]["images"] == 5 and m["counts"]["limit"] == 5
  assert cache_grouping(cache) == [(i.image_id, i.lemma, i.glosses) for i in small]


def test_cli_and_bad_inputs(tmp_path, fake, noun, monkeypatch, capsys):
  fake_dir, _ = fake
  out = tmp_path / "cli"
  cmd = [sys.executable, "-m", "sotalign_jax.cli.two_view", "--x-encoder", "fake_tv:x", "--y-encoder", "fake_tv:y",
         "--root", noun, "--out", str(out), "--limit", "7", "--batch-size", "4", "--quiet"]
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([fake_dir, ROOT]), JAX_PLATFORMS="cpu")
  done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr
  assert json.loads(done.stdout.strip().splitlines()[-1]) == {"out": str(out), "lemmas": 7,
                                                               "glosses": len(load_cache(out).index),
                                                               "x_dim": 6, "y_dim": 10}
  again = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert again.returncode == 0 and "already complete" in again.stderr
  # Bad inputs: clear messages from the API, exit status 2 and the message from the CLI.
  items, info = two_view.wordnet_items(noun)
  build = lambda **kw: two_view.build_two_view(items, info, out_dir=tmp_path / "bad", progress=False,  # noqa: E731
                                               **{"x_encoder": "fake_tv:x", "y_encoder": "fake_tv:y", **kw})
  with pytest.raises(ValueError, match="--x-encoder: unknown text encoder 'no-such-encoder'"):
    build(x_encoder="no-such-encoder")
  with pytest.raises(ValueError, match="--y-encoder 'fake_tv:missing': cannot load"):
    build(y_encoder="fake_tv:missing")
  with pytest.raises(ValueError, match="not a text encoder"):
    build(x_encoder="fake_tv:not_text")
  with pytest.raises(ValueError, match="batch_size"):
    build(batch_size=0)
  with pytest.raises(ValueError, match="no items"):
    two_view.build_two_view([], info, out_dir=tmp_path / "bad", x_encoder="fake_tv:x", y_encoder="fake_tv:y")
  with pytest.raises(ValueError, match="limit must be positive"):
    two_view.wordnet_items(noun, limit=0)
  with pytest.raises(FileNotFoundError, match="wordnet-base"):
    two_view.wordnet_items(str(tmp_path))
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "data.noun").write_text("  1 a license header only\n")
  with pytest.raises(ValueError, match="no noun synsets"):
    two_view.wordnet_items(str(tmp_path / "empty"))
  monkeypatch.setattr(wordnet, "DEFAULT_ROOT", str(tmp_path / "nowhere"))
  with pytest.raises(MissingDataError, match="apt-get install -y wordnet-base"):
    two_view.wordnet_items(install=False)
  capsys.readouterr()
  assert two_view.main(["--x-encoder", "nope", "--y-encoder", "fake_tv:y", "--root", noun, "--out",
                        str(tmp_path / "bad"), "--quiet"]) == 2
  assert "error: --x-encoder: unknown text encoder 'nope'" in capsys.readouterr().err
  assert two_view.main(["--x-encoder", "fake_tv:x", "--y-encoder", "fake_tv:y", "--out", str(tmp_path / "bad"),
                        "--no-install"]) == 2
  assert "wordnet-base" in capsys.readouterr().err
  assert not os.path.exists(tmp_path / "bad" / "manifest.json")


def test_real_wordnet_base_gives_sane_counts():
  from conftest import require_asset  # pylint: disable=g-import-not-at-top
  # installs wordnet-base with apt-get (as root) if missing; else skips, or fails under CI=true
  items, info = require_asset("Debian wordnet-base", two_view.wordnet_items)
  assert 60_000 < info["n_items"] == len(items) < 75_000 and 80_000 < info["n_glosses"] <= info["n_synsets"]
  assert info["n_synsets"] > 80_000 and sum(len(i.glosses) for i in items) == info["n_glosses"]
  bank = next(i for i in items if i.lemma == "bank")
  assert len(bank.glosses) >= 5 and all(g and ";" not in g for g in bank.glosses)
  lemma_ids = [r.image_id for r in wordnet.load_wordnet(kind="lemmas").records]
  assert {i.image_id for i in items} <= set(lemma_ids)
  assert len(lemma_ids) - len(items) == info["n_lemmas_without_gloss_dropped"]


def test_same_text_reuses_the_source_rows_and_embeds_each_distinct_caption_once(tmp_path, fake, noun, capsys):
  _, enc = fake
  src = tmp_path / "src"
  _build(noun, src)
  source = load_cache(src)
  out = tmp_path / "same"
  m = two_view.build_same_text(src, out_dir=out, x_encoder="fake_tv:x", batch_size=2, chunk_size=2, progress=False)
  cache = load_cache(out)
  # Plainly: the distinct captions (case/space-insensitive, first kept) in source order, with their source rows.
  seen, expected = set(), []
  for row, r in enumerate(source.index):
    key = " ".join(r["caption"].lower().split())
    if key not in seen:
      seen.add(key)
      expected.append((row, r["caption"]))
  assert [r["caption"] for r in cache.index] == [c for _, c in expected]
  assert len(expected) < len(source.index)  # "a variety of aster" under two lemmas is kept once
  assert [r["image"] for r in cache.index] == list(range(len(expected)))
  for i, (row, caption) in enumerate(expected):
    np.testing.assert_array_equal(cache.text_emb[i], source.text_emb[row])  # y: the source's own row
    np.testing.assert_array_equal(cache.image_emb[i], enc.vec("x", caption, 6))  # x: the new encoder
  ids = [r["image_id"] for r in cache.index]
  assert len(set(ids)) == len(ids) and ids[0] == f"{source.index[0]['image_id']}/0"
  assert m["kind"] == "same_text" and m["y_encoder"] == source.manifest["text_encoder"]
  assert m["dataset"]["info"]["n_repeated_captions_dropped"] == len(source.index) - len(expected)
  # A rerun is a no-op; the benchmark protocol reads the result like any cache.
  assert two_view.build_same_text(src, out_dir=out, x_encoder="fake_tv:x", batch_size=2, chunk_size=2,
                                  progress=False)["job_id"] == m["job_id"]
  proto = Protocol.from_cache(cache, split="hash", test_size=3, val_size=2, split_seed="t", min_unpaired=2)
  assert proto.p_max == len(expected) - 3 - 2 - 2 * 2
  # Bad inputs: a missing source, and the CLI's flags that do not apply.
  with pytest.raises(FileNotFoundError, match="not a finished embedding cache"):
    two_view.build_same_text(tmp_path / "nothing", out_dir=tmp_path / "o2", x_encoder="fake_tv:x", progress=False)
  assert two_view.main(["--same-text-from", str(tmp_path / "nothing"), "--x-encoder", "fake_tv:x",
                        "--out", str(tmp_path / "o3"), "--quiet"]) == 2
  assert "not a finished embedding cache" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    two_view.main(["--same-text-from", str(src), "--x-encoder", "fake_tv:x", "--y-encoder", "fake_tv:y",
                   "--out", str(tmp_path / "o4")])
  assert not os.path.exists(tmp_path / "o2") and not os.path.exists(tmp_path / "o3")
