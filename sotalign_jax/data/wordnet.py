"""WordNet nouns (Debian ``wordnet-base``) as a large *unpaired* text pool of short noun phrases.

``kind="lemmas"``: the first lemma of every noun synset (``"hot dog"``, ≈82k texts);
``kind="glosses"``: the definitions (``"a smooth-textured sausage of minced beef or pork ..."``).
Text-only: records have no image. The id is ``n<offset>`` (the synset's offset in ``data.noun``).
"""

from __future__ import annotations

import os
import re

from sotalign_jax.data.core import Dataset, Record, dedupe_captions
from sotalign_jax.data.debian import require_package

__all__ = ["load_wordnet", "parse_data_noun", "DEFAULT_ROOT"]

DEFAULT_ROOT = "/usr/share/wordnet"


def parse_data_noun(path: str | os.PathLike) -> list[tuple[str, list[str], str]]:
  """Parses a WordNet ``data.noun`` file into ``(offset, lemmas, gloss)`` per synset."""
  out = []
  with open(path, encoding="utf-8", errors="replace") as f:
    for line in f:
      if not line or line[0] == " ":  # License header lines start with two spaces.
        continue
      head, _, gloss = line.partition(" | ")
      parts = head.split()
      if len(parts) < 6:
        continue
      n_words = int(parts[3], 16)
      lemmas = []
      for k in range(n_words):
        w = re.sub(r"\([a-z]+\)$", "", parts[4 + 2 * k]).replace("_", " ")
        lemmas.append(w)
      out.append((parts[0], lemmas, " ".join(gloss.split())))
  return out


def load_wordnet(root: str | None = None, *, kind: str = "lemmas", template: str = "{}",
                 install: bool = True) -> Dataset:
  """Loads WordNet noun lemmas or glosses as a text-only pool (duplicates removed).

  Args:
    root: directory holding ``data.noun``; default the Debian location (installing ``wordnet-base``
      if missing, when root).
    kind: ``"lemmas"`` or ``"glosses"``.
    template: format applied to each text, e.g. ``"a photo of a {}"``.
    install: allow ``apt-get install`` (only with the default ``root``).
  """
  if kind not in ("lemmas", "glosses"):
    raise ValueError(f"kind must be 'lemmas' or 'glosses', got {kind!r}")
  if "{}" not in template:
    raise ValueError(f"template must contain '{{}}', got {template!r}")
  if root is None:
    root = os.path.dirname(require_package("wordnet-base", os.path.join(DEFAULT_ROOT, "data.noun"),
                                           install=install))
  synsets = parse_data_noun(os.path.join(root, "data.noun"))
  records = []
  for offset, lemmas, gloss in synsets:
    text = lemmas[0] if kind == "lemmas" else gloss.split(";")[0].strip()
    if text:
      records.append(Record(image_id=f"n{offset}", caption=template.format(text)))
  records, n_dup = dedupe_captions(records)
  info = {"source": os.path.abspath(root), "packages": ["wordnet-base"], "license": "WordNet 3.0 license",
          "kind": kind, "template": template, "n_synsets": len(synsets), "n_duplicates_dropped": n_dup,
          "n_texts": len(records)}
  return Dataset(name="wordnet", records=records, info=info)
