"""Writes the reference sentence embeddings used by tests/test_text_encoders.py.

Runs the ORIGINAL PyTorch models (transformers ``BertModel`` / ``MPNetModel``) with the
sentence-transformers head written out (tokenizer with ``truncation=True, max_length=max_seq_length``,
masked mean pooling, ``F.normalize``). Run it ONCE, in a throw-away venv outside the repo (this
project's code never imports torch)::

  python3.11 -m venv /tmp/torchref_text
  /tmp/torchref_text/bin/pip install torch==2.13.0 transformers==4.57.6 safetensors numpy
  /tmp/torchref_text/bin/python scripts/make_text_reference.py \
      --minilm $(.venv/bin/python -c "from sotalign_jax.encoders import text; print(text.model_dir('all-MiniLM-L6-v2'))") \
      --mpnet $(.venv/bin/python -c "from sotalign_jax.encoders import text; print(text.model_dir('all-mpnet-base-v2'))")

Outputs (tests/fixtures/): ``text_reference.json`` (sentences, token ids, MPNet relative position
buckets from torch), ``text_reference_<model>.npy`` ``[6, d]`` and ``text_reference_minilm_layers.npy``
``[7, 3, 384]`` (mean-pooled hidden states of every layer for the first three sentences).
"""

import argparse
import json
import pathlib

import numpy as np
import torch
import transformers

SENTENCES = [
    "A man is eating food.",
    "  Two dogs run across a snowy field, chasing a red ball!  ",
    "Un café très noir à Zürich — naïve façade.",
    "",
    "the",
    " ".join(["the quick brown fox jumps over the lazy dog"] * 50),  # > 384 tokens: truncated
]


def embed(directory: str, max_len: int, sentences: list[str]) -> tuple[np.ndarray, list, np.ndarray]:
  tok = transformers.AutoTokenizer.from_pretrained(directory, local_files_only=True)
  model = transformers.AutoModel.from_pretrained(directory, local_files_only=True).eval()
  texts = [s.strip() for s in sentences]  # sentence_transformers.models.Transformer.tokenize
  enc = tok(texts, padding=True, truncation="longest_first", max_length=max_len, return_tensors="pt")
  with torch.no_grad():
    out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], output_hidden_states=True)
  m = enc["attention_mask"].unsqueeze(-1).float()
  pooled = lambda h: (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
  emb = torch.nn.functional.normalize(pooled(out.last_hidden_state), p=2, dim=1)
  layers = torch.stack([pooled(h) for h in out.hidden_states])
  ids = [row[row_mask.bool()].tolist() for row, row_mask in zip(enc["input_ids"], enc["attention_mask"])]
  return emb.numpy().astype(np.float32), ids, layers.numpy().astype(np.float32)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--minilm", required=True)
  parser.add_argument("--mpnet", required=True)
  parser.add_argument("--out", default=str(pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures"))
  args = parser.parse_args()
  torch.manual_seed(0)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  meta = dict(sentences=SENTENCES, torch=torch.__version__, transformers=transformers.__version__)
  for key, directory, max_len in (("minilm", args.minilm, 256), ("mpnet", args.mpnet, 384)):
    emb, ids, layers = embed(directory, max_len, SENTENCES)
    np.save(out / f"text_reference_{key}.npy", emb)
    meta[f"{key}_input_ids"] = ids
    if key == "minilm":
      np.save(out / "text_reference_minilm_layers.npy", layers[:, :3])
  rel = torch.arange(-600, 601)
  buckets = transformers.models.mpnet.modeling_mpnet.MPNetEncoder.relative_position_bucket(rel)
  meta["mpnet_buckets"] = dict(relative_position=[-600, 600], bucket=buckets.tolist())
  (out / "text_reference.json").write_text(json.dumps(meta))
  print("wrote", sorted(p.name for p in out.glob("text_reference*")))


if __name__ == "__main__":
  main()
