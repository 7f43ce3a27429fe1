"""Tests of sotalign_jax.data: loaders on tiny synthetic folders, splits, openclipart caption rule."""

import gzip
import hashlib
import json
import os
import random

import numpy as np
import pytest
from PIL import Image

from sotalign_jax import data
from sotalign_jax.data import coco, fashion_mnist, folder, openclipart, splits, tuxpaint, wordnet


# ----------------------------------------------------------------------------- images


def test_load_image_composites_rgba_on_white(tmp_path):
  rgba = np.zeros((4, 6, 4), np.uint8)
  rgba[..., 0] = 200  # red channel everywhere
  rgba[:, :3, 3] = 0  # left half fully transparent
  rgba[:, 3:, 3] = 128  # right half half transparent
  p = tmp_path / "a.png"
  Image.fromarray(rgba, "RGBA").save(p)
  out = np.asarray(data.load_image(str(p)))
  assert out.shape == (4, 6, 3)
  np.testing.assert_array_equal(out[:, :3], 255)
  a = 128 / 255  # plain alpha blending on white: c * a + 255 * (1 - a)
  expected = np.array([200 * a + 255 * (1 - a), 255 * (1 - a), 255 * (1 - a)])
  np.testing.assert_allclose(out[:, 3:].astype(float), np.broadcast_to(expected, (4, 3, 3)), atol=1.5)


def test_load_image_palette_transparency_and_grey_array(tmp_path):
  im = Image.new("P", (5, 5), 0)
  im.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
  im.putpixel((0, 0), 1)
  im.info["transparency"] = 0
  p = tmp_path / "p.png"
  im.save(p, transparency=0)
  out = np.asarray(data.load_image(str(p)))
  np.testing.assert_array_equal(out[1, 1], [255, 255, 255])
  np.testing.assert_array_equal(out[0, 0], [10, 20, 30])
  grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
  np.testing.assert_array_equal(np.asarray(data.load_image(grey))[..., 1], grey)


def test_load_image_shrinks_and_refuses_huge_and_corrupt(tmp_path):
  p = tmp_path / "big.jpg"
  Image.fromarray(np.full((300, 200, 3), 90, np.uint8)).save(p, quality=95)
  im = data.load_image(str(p), max_side=50)
  assert max(im.size) == 50 and im.size[0] < im.size[1]
  q = tmp_path / "big.png"
  Image.fromarray(np.full((120, 60, 4), 255, np.uint8)).save(q)
  assert max(data.load_image(str(q), max_side=20).size) == 20
  with pytest.raises(ValueError, match="max_pixels"):
    data.load_image(str(q), max_pixels=100)
  bad = tmp_path / "bad.png"
  bad.write_bytes(b"\x89PNG not really")
  with pytest.raises(OSError):
    data.load_image(str(bad))
  with pytest.raises(ValueError, match="image array"):
    data.load_image(np.zeros((2, 2, 2), np.uint8))


# ----------------------------------------------------------------------------- folder


def _png(path, color, size=(6, 5), mode="RGB"):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.new(mode, size, color).save(path)


def test_load_folder(tmp_path):
  _png(tmp_path / "imgs/a.png", (255, 0, 0))
  _png(tmp_path / "imgs/b.png", (0, 0, 255, 0), mode="RGBA")
  lines = [{"image": "imgs/a.png", "caption": "a red square", "label": "red"},
           {"image": "imgs/a.png", "caption": " a crimson tile "},
           {"image": "imgs/b.png", "caption": "nothing"}]
  (tmp_path / "captions.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
  ds = folder.load_folder(tmp_path)
  assert [r.image_id for r in ds.records] == ["imgs/a.png", "imgs/a.png", "imgs/b.png"]
  assert [r.caption for r in ds.records] == ["a red square", "a crimson tile", "nothing"]
  assert [r.label for r in ds.records] == ["red", None, None]
  assert ds.info["n_images"] == 2
  assert np.asarray(data.load_image(ds.records[2].image_path)).min() == 255  # transparent -> white
  assert data.load_dataset(f"folder:{tmp_path}").records == ds.records


def test_load_folder_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="captions.jsonl"):
    folder.load_folder(tmp_path)
  (tmp_path / "captions.jsonl").write_text('{"image": "a.png"}\n')
  with pytest.raises(ValueError, match=":1:"):
    folder.load_folder(tmp_path)
  (tmp_path / "captions.jsonl").write_text('{"image": "a.png", "caption": "x"}\nnot json\n')
  with pytest.raises(ValueError, match=":2:"):
    folder.load_folder(tmp_path)


# ----------------------------------------------------------------------------- splits


def _oracle_u(s, seed=""):
  return int(hashlib.sha256(f"{seed}:{s}".encode()).hexdigest()[:16], 16) / 2**64


def test_splits_match_hash_oracle_and_are_order_independent():
  ids = [f"img{i}" for i in range(2000)]
  fr = {"paired": 0.2, "unpaired": 0.5, "val": 0.1, "test": 0.2}
  got = splits.assign_splits(ids, fractions=fr, seed="s")
  edges = np.cumsum([0.2, 0.5, 0.1, 0.2])
  for i in ids[:50]:
    u = _oracle_u(i, "s")
    assert got[ids.index(i)] == splits.SPLITS[int(np.sum(u >= edges[:-1]))]
  shuffled = ids[:]
  random.Random(0).shuffle(shuffled)
  again = dict(zip(shuffled, splits.assign_splits(shuffled, fractions=fr, seed="s")))
  assert again == dict(zip(ids, got))
  counts = {s: got.count(s) for s in splits.SPLITS}
  for s, f in fr.items():  # binomial: 4 sigma
    assert abs(counts[s] - 2000 * f) < 4 * np.sqrt(2000 * f * (1 - f))
  assert splits.assign_splits(ids, fractions=fr, seed="other") != got


def test_split_sizes_exact_disjoint_and_eval_sets_stable():
  ids = [f"x{i}" for i in range(300)] + ["x0", "x1"]  # duplicates follow their id
  a = splits.assign_splits(ids, sizes={"test": 30, "val": 20, "paired": 10})
  by_id = dict(zip(ids, a))
  assert a[-2:] == [by_id["x0"], by_id["x1"]]
  counts = {s: list(by_id.values()).count(s) for s in splits.SPLITS}
  assert counts == {"test": 30, "val": 20, "paired": 10, "unpaired": 240}
  ranked = sorted(set(ids), key=_oracle_u)
  assert {i for i in by_id if by_id[i] == "test"} == set(ranked[:30])
  b = dict(zip(ids, splits.assign_splits(ids, sizes={"test": 30, "val": 20, "paired": 100})))
  assert {i for i in b if b[i] == "test"} == {i for i in by_id if by_id[i] == "test"}
  assert {i for i in by_id if by_id[i] == "paired"} <= {i for i in b if b[i] == "paired"}


def test_split_bad_input():
  with pytest.raises(ValueError, match="sum to 1"):
    splits.assign_splits(["a"], fractions={"paired": 0.5, "test": 0.2})
  with pytest.raises(ValueError, match="unknown split"):
    splits.assign_splits(["a"], fractions={"train": 1.0})
  with pytest.raises(ValueError, match="more than"):
    splits.assign_splits(["a", "b"], sizes={"test": 3})
  assert splits.parse_split_spec("paired=0.1, test=0.9") == {"paired": 0.1, "test": 0.9}


# ----------------------------------------------------------------------------- openclipart

_SVG = """<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<svg xmlns="http://www.w3.org/2000/svg" xmlns:cc="{cc}" xmlns:dc="http://purl.org/dc/elements/1.1/"
     xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <metadata><rdf:RDF><cc:Work rdf:about="">
    <dc:title>{title}</dc:title><dc:description>{desc}</dc:description>
    <dc:subject><rdf:Bag>{kws}</rdf:Bag></dc:subject>
    <dc:creator><cc:Agent><dc:title>{creator}</dc:title></cc:Agent></dc:creator>
  </cc:Work></rdf:RDF></metadata>
  <rect width="10" height="10"/>
</svg>"""
_CC_OLD = "http://web.resource.org/cc/"
_CC_NEW = "http://creativecommons.org/ns#"


def _clip(root, rel, title, kws=(), creator="Some Body", cc=_CC_OLD, color=None, desc=""):
  os.makedirs(os.path.dirname(root / "svg" / rel), exist_ok=True)
  (root / "svg" / f"{rel}.svg").write_text(_SVG.format(
      cc=cc, title=title, desc=desc, creator=creator, kws="".join(f"<rdf:li>{k}</rdf:li>" for k in kws)))
  color = color or tuple(hashlib.md5(rel.encode()).digest()[:3])
  _png(root / "png" / f"{rel}.png", color)


def test_parse_svg_metadata_both_cc_namespaces(tmp_path):
  for cc, name in ((_CC_OLD, "old"), (_CC_NEW, "new")):
    _clip(tmp_path, f"animals/{name}", "2 dead frogs", ["frog", "swamp"], creator="Lumen Design Studio", cc=cc,
          desc="nothing more")
    m = openclipart.parse_svg_metadata(tmp_path / "svg" / f"animals/{name}.svg")
    assert m == openclipart.SvgMeta("2 dead frogs", "nothing more", ("frog", "swamp"), "Lumen Design Studio")
  (tmp_path / "plain.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"><rect/></svg>')
  assert openclipart.parse_svg_metadata(tmp_path / "plain.svg").title == ""


def test_openclipart_caption_rule(tmp_path):
  # A near-identical collection: same title on many files, file names give the same words.
  for k in range(4):
    _clip(tmp_path, f"shapes/stars/star_{k}pt{k}step", "gramastar", ["stars", "shapes", "magick"],
          cc=_CC_NEW if k % 2 else _CC_OLD)
  # A collection whose members have distinct file names; the author suffix is removed.
  _clip(tmp_path, "computer/icons/help_index_jane_doe_01", "Lemon SVG theme",
        ["icon", "hash", "application", "help", "manual"], creator="Jane Doe")
  _clip(tmp_path, "computer/icons/kmenu", "Lemon SVG theme", ["icon", "computer"])
  _clip(tmp_path, "computer/icons/x", "Lemon SVG theme", ["icon"])  # no usable words: dropped
  # Singular titles are used as they are (Italian kept; "Clipart by X - name" reduced).
  _clip(tmp_path, "science/barattolo_di_pillole_arc_01", "Barattolo di pillole", ["unsorted"], cc=_CC_NEW)
  _clip(tmp_path, "shapes/jigsaw_red", "Clipart by Nicu Buculei - jigsaw red", ["jigsaw"])
  # The same title on two files is below collection_min_count=3: both keep the title, then dedupe.
  _clip(tmp_path, "animals/frog_a", "A frog", ["frog"])
  _clip(tmp_path, "animals/frog_b", "a  FROG", ["frog"])
  # Byte-identical PNG filed twice.
  _clip(tmp_path, "animals/cow", "Spotted cow", color=(1, 2, 3))
  _clip(tmp_path, "food/cow", "Spotted cow again", color=(1, 2, 3))

  ds = openclipart.load_openclipart(str(tmp_path))
  caps = {r.image_id: r.caption for r in ds.records}
  assert caps == {
      "animals/cow": "Spotted cow",
      "animals/frog_a": "A frog",
      "computer/icons/help_index_jane_doe_01": "help index, manual",
      "computer/icons/kmenu": "kmenu",
      "science/barattolo_di_pillole_arc_01": "Barattolo di pillole",
      "shapes/jigsaw_red": "jigsaw red",
      "shapes/stars/star_0pt0step": "star step, stars, magick",
  }
  info = ds.info
  assert info["n_files"] == 13 and info["n_duplicate_images_dropped"] == 1
  assert info["n_no_caption_dropped"] == 1 and info["n_duplicate_captions_dropped"] == 4
  assert info["n_pairs"] == info["n_unique_captions"] == 7
  assert {r.label for r in ds.records} == {"animals", "computer", "science", "shapes"}


def test_openclipart_missing_root(tmp_path):
  with pytest.raises(FileNotFoundError, match="openclipart-png"):
    openclipart.load_openclipart(str(tmp_path))


def test_openclipart_real_package_has_unique_test_captions():
  from conftest import require_asset
  # installs openclipart-png / openclipart-svg with apt-get (as root) if missing; else skips, or fails under CI=true
  ds = require_asset("Debian openclipart-png / openclipart-svg", openclipart.load_openclipart)
  assert ds.info["n_pairs"] > 3000
  caps = [" ".join(r.caption.lower().split()) for r in ds.records]
  assert len(set(caps)) == len(caps)
  split = splits.assign_splits([r.image_id for r in ds.records])
  test_caps = [c for c, s in zip(caps, split) if s == "test"]
  assert len(test_caps) > 200 and len(set(test_caps)) == len(test_caps)
  assert sum("star" in c for c in caps) < 50  # the 1,375 "gramastar" stars do not flood the data


# ----------------------------------------------------------------------------- other Debian datasets


def test_tuxpaint(tmp_path):
  d = tmp_path / "animals" / "frogs"
  _png(d / "frog.png", (0, 200, 0))
  (d / "frog.txt").write_text("A green frog.\nfr.utf8=Une grenouille verte.\nen_GB.utf8=A green frog.\n")
  _png(d / "calc.png", (0, 0, 0))
  (d / "calc.txt").write_text("de.utf8=Ein Rechner.\nA calculator.  6x7=42\n")
  (d / "svgonly.txt").write_text("Only an SVG.\n")
  (d / "svgonly.svg").write_text("<svg/>")
  ds = tuxpaint.load_tuxpaint(str(tmp_path))
  assert [(r.image_id, r.caption, r.label) for r in ds.records] == [
      ("animals/frogs/calc", "A calculator. 6x7=42", "animals"), ("animals/frogs/frog", "A green frog.", "animals")]
  assert ds.info["n_svg_only_skipped"] == 1


def _idx(path, arr):
  arr = np.asarray(arr, np.uint8)
  header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + arr.tobytes())


def test_fashion_mnist(tmp_path):
  rng = np.random.default_rng(0)
  tr, te = rng.integers(0, 256, (5, 28, 28)), rng.integers(0, 256, (3, 28, 28))
  _idx(tmp_path / "train-images-idx3-ubyte.gz", tr)
  _idx(tmp_path / "train-labels-idx1-ubyte.gz", [0, 9, 3, 3, 1])
  _idx(tmp_path / "t10k-images-idx3-ubyte.gz", te)
  _idx(tmp_path / "t10k-labels-idx1-ubyte.gz", [8, 0, 5])
  ds = fashion_mnist.load_fashion_mnist(str(tmp_path))
  assert len(ds.records) == 8
  np.testing.assert_array_equal(ds.records[1].image, tr[1])
  np.testing.assert_array_equal(ds.records[7].image, te[2])
  assert ds.records[1].caption == "a photo of a ankle boot" and ds.records[1].label == "ankle boot"
  assert [r.split for r in ds.records] == [None] * 5 + ["test"] * 3
  assert ds.records[5].image_id == "test/00000"
  assert fashion_mnist.prompts("{}s")[1] == "trousers"
  (tmp_path / "bad.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x05ab"))
  with pytest.raises(ValueError, match="header"):
    fashion_mnist.read_idx(tmp_path / "bad.gz")


def test_wordnet(tmp_path):
  (tmp_path / "data.noun").write_text(
      "  1 This software and database is being provided\n"
      "00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 | that which is perceived; \"an example\"  \n"
      "07697100 13 n 02 hotdog 0 hot_dog(a) 0 001 @ 07675627 n 0000 | a frankfurter served hot  \n"
      "09999999 13 n 01 Entity 0 000 | duplicate lemma  \n")
  ds = wordnet.load_wordnet(str(tmp_path))
  assert [(r.image_id, r.caption) for r in ds.records] == [("n00001740", "entity"), ("n07697100", "hotdog")]
  assert ds.text_only and ds.info["n_duplicates_dropped"] == 1
  g = wordnet.load_wordnet(str(tmp_path), kind="glosses", template="{}.")
  assert g.records[0].caption == "that which is perceived."
  assert wordnet.parse_data_noun(tmp_path / "data.noun")[1][1] == ["hotdog", "hot dog"]


def test_missing_debian_data_names_the_package(tmp_path):
  with pytest.raises(data.MissingDataError, match=r"apt-get install -y some-pkg"):
    data.require_package("some-pkg", str(tmp_path / "nothing"), install=False)
  assert data.require_package("x", str(tmp_path), install=False) == str(tmp_path)
  with pytest.raises(ValueError, match="unknown dataset"):
    data.load_dataset("imagenet")


# ----------------------------------------------------------------------------- coco (tfds-shaped examples)


def _coco_examples(n, offset=0):
  rng = np.random.default_rng(offset)
  return [{"image": rng.integers(0, 256, (4 + k, 5, 3), dtype=np.uint8), "image/id": np.int64(100 + offset + k),
           "image/filename": f"COCO_{k}.jpg".encode(),
           "captions": {"text": np.array([f"a cat {k}".encode(), f"  another  cat {k} ".encode()], dtype=object),
                        "id": np.array([1, 2])}} for k in range(n)]


def test_coco_adapter_and_wrapper():
  recs = coco.records_from_examples(_coco_examples(2), split="test")
  assert [(r.image_id, r.caption, r.split) for r in recs] == [
      ("coco/100", "a cat 0", "test"), ("coco/100", "another cat 0", "test"),
      ("coco/101", "a cat 1", "test"), ("coco/101", "another cat 1", "test")]
  assert recs[2].image.shape == (5, 5, 3)
  with pytest.raises(ValueError, match="split"):
    coco.records_from_examples([], split="validation")
  calls = []

  def read(s):
    calls.append(s)
    return _coco_examples(1, offset=10 * len(calls))

  ds = coco.load_coco_captions(splits=("train", "val"), read=read)
  assert calls == ["train", "val"] and [r.split for r in ds.records] == [None, None, "val", "val"]
  assert ds.info["n_images"] == 2
