# One entry point for a newcomer: `make demo` and `make test` set everything up themselves.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
WORKDIR ?= workdirs

.PHONY: demo caches example-files wordnet-cache glosses-cache assets match scores cmcr bench-align bench-wordnet \
        bench-zero-pair test test-all bench clean-venv

# The venv is rebuilt only when the pins change; a second run reuses it.
$(STAMP): setup.cfg constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (Python 3.11 is required; set PYTHON=/path/to/python3.11)"; exit 1; }
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	@touch $(STAMP)

$(VENV): $(STAMP)

# Embedding caches of the default encoders (resumable: an interrupted `make demo` continues where it stopped).
ENCODERS := --image-encoder efficientnet-lite0 --text-encoder all-MiniLM-L6-v2
CACHE    := data_cache
SUFFIX   := efficientnet-lite0__all-MiniLM-L6-v2

$(CACHE)/openclipart__$(SUFFIX)/manifest.json: | $(STAMP)
	$(PY) -m sotalign_jax.cli.embed --dataset openclipart $(ENCODERS) --out $(CACHE)/openclipart__$(SUFFIX)
$(CACHE)/tuxpaint__$(SUFFIX)/manifest.json: | $(STAMP)
	$(PY) -m sotalign_jax.cli.embed --dataset tuxpaint $(ENCODERS) --out $(CACHE)/tuxpaint__$(SUFFIX)
$(CACHE)/fashion_mnist__$(SUFFIX)/manifest.json: | $(STAMP)
	$(PY) -m sotalign_jax.cli.embed --dataset fashion_mnist --limit 2000 $(ENCODERS) --out $(CACHE)/fashion_mnist__$(SUFFIX)

DEMO_CACHES := $(CACHE)/openclipart__$(SUFFIX)/manifest.json $(CACHE)/tuxpaint__$(SUFFIX)/manifest.json \
               $(CACHE)/fashion_mnist__$(SUFFIX)/manifest.json

caches: $(DEMO_CACHES)

# An example set of embedding files (float32 .npy, sotalign_jax.data.files) from the openclipart cache, split by the
# benchmark's protocol at 1,000 pairs (seed 0): what experiments/sotalign.py reads with --config.data.pairs_x=... .
EXAMPLE_FILES := $(CACHE)/openclipart_files
example-files: $(EXAMPLE_FILES)/manifest.json
$(EXAMPLE_FILES)/manifest.json: $(CACHE)/openclipart__$(SUFFIX)/manifest.json | $(STAMP)
	$(PY) -m sotalign_jax.cli.convert to-files --cache $(CACHE)/openclipart__$(SUFFIX) --out $(EXAMPLE_FILES)

# WordNet two-view testbed: noun lemmas (MiniLM, the image side) vs their glosses (MPNet, the text side), resumable.
# WORDNET_LIMIT lemmas chosen by a stable hash (README, Datasets: ≈30 min on 2 cores at 20k; WORDNET_LIMIT= for all
# 67k lemmas and 82k glosses, 1–1.5 h).
WORDNET_LIMIT ?= 20000
WORDNET_CACHE := $(CACHE)/wordnet_two_view__all-MiniLM-L6-v2__all-mpnet-base-v2
wordnet-cache: $(WORDNET_CACHE)/manifest.json
$(WORDNET_CACHE)/manifest.json: | $(STAMP)
	$(PY) -m sotalign_jax.cli.two_view --x-encoder all-MiniLM-L6-v2 --y-encoder all-mpnet-base-v2 --out $(WORDNET_CACHE) \
	  $(if $(WORDNET_LIMIT),--limit $(WORDNET_LIMIT))

# The same WordNet glosses seen by two text encoders: MiniLM (embedded now, ≈ 3 min) vs the wordnet cache's MPNet rows.
GLOSSES_CACHE := $(CACHE)/wordnet_glosses__all-MiniLM-L6-v2__all-mpnet-base-v2
glosses-cache: $(GLOSSES_CACHE)/manifest.json
$(GLOSSES_CACHE)/manifest.json: $(WORDNET_CACHE)/manifest.json | $(STAMP)
	$(PY) -m sotalign_jax.cli.two_view --same-text-from $(WORDNET_CACHE) --x-encoder all-MiniLM-L6-v2 --out $(GLOSSES_CACHE)

# Every asset up front (make demo installs only what it needs; the rest otherwise installs on first use).
assets: $(STAMP)
	$(PY) -c "from sotalign_jax.encoders import IMAGE_ENCODERS, TEXT_ENCODERS, load_image_encoder, load_text_encoder; \
	  [load_image_encoder(n) for n in IMAGE_ENCODERS]; [load_text_encoder(n) for n in TEXT_ENCODERS]"
	$(PY) -c "from sotalign_jax.data import load_dataset; \
	  [load_dataset(n) for n in ('openclipart', 'tuxpaint', 'fashion_mnist', 'wordnet')]"

# SOTAlign vs its teachers, SAIL and the upper bound at 1,000 pairs: 3 seeds, 1,000 test images, intervals.
demo: $(STAMP) $(DEMO_CACHES)
	$(PY) experiments/benchmark.py --config configs/benchmark.py:demo --workdir $(WORKDIR)/demo

# Alignment benchmark, quick variant: closed-form and training-free aligners × p ∈ {0,10,100,1000} × 3 seeds with
# intervals (README, Alignment benchmark); `configs/benchmark.py:full` is the whole sweep.
bench-align: $(STAMP) $(DEMO_CACHES)
	$(PY) experiments/benchmark.py --config configs/benchmark.py:quick --workdir $(WORKDIR)/bench_align_quick

# The benchmark on the WordNet two-view testbed at three unpaired pool sizes (README, Alignment benchmark).
bench-wordnet: $(STAMP) $(WORDNET_CACHE)/manifest.json
	for pool in 1000 3000 -1; do \
	  $(PY) experiments/benchmark.py --config configs/benchmark.py:wordnet,pool=$$pool \
	    --workdir $(WORKDIR)/bench_wordnet_pool$$pool || exit 1; done

# Alignment with zero pairs (Wasserstein–Procrustes, mini-vec2vec) against few-pair methods at p ∈ {0, 10, 100}: on
# openclipart (image vs text) and on the same glosses seen by MiniLM and MPNet (README, Alignment with zero pairs).
bench-zero-pair: $(STAMP) $(DEMO_CACHES) $(GLOSSES_CACHE)/manifest.json
	$(PY) experiments/benchmark.py --config configs/benchmark.py:zero_pair --workdir $(WORKDIR)/bench_zero_pair
	$(PY) experiments/benchmark.py --config configs/benchmark.py:text_pair --workdir $(WORKDIR)/bench_text_pair

# Training-free matching (Maniparambil et al.), quick variant: a few minutes on 2 CPU cores.
match: $(STAMP) $(CACHE)/openclipart__$(SUFFIX)/manifest.json
	$(PY) experiments/match.py --config configs/match.py:quick --workdir $(WORKDIR)/match_quick

# C-MCR offline demo: connects (Lite0, MiniLM) and (MPNet, Lite2) spaces through openclipart captions.
$(CACHE)/openclipart__efficientnet-lite2__all-mpnet-base-v2/manifest.json: | $(STAMP)
	$(PY) -m sotalign_jax.cli.embed --dataset openclipart --image-encoder efficientnet-lite2 \
	  --text-encoder all-mpnet-base-v2 --out $(CACHE)/openclipart__efficientnet-lite2__all-mpnet-base-v2
cmcr: $(STAMP) $(CACHE)/openclipart__$(SUFFIX)/manifest.json \
      $(CACHE)/openclipart__efficientnet-lite2__all-mpnet-base-v2/manifest.json
	$(PY) experiments/cmcr.py --config configs/cmcr.py:demo --workdir $(WORKDIR)/cmcr_demo

# Calibrated layer × layer alignment grids (EfficientNet-Lite0 stages × MiniLM layers), quick variant.
scores: $(STAMP)
	$(PY) experiments/alignment_scores.py --config configs/alignment_scores.py:quick --workdir $(WORKDIR)/scores_quick

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -rs -m "not slow" -n 2 --dist loadfile --nbmake tests notebooks

test-all: $(STAMP)
	$(PY) -m pytest -q -rs -n 2 --dist loadfile --nbmake tests notebooks

bench: $(STAMP)
	for b in cka encoders text_encoders sotalign_step qap local_cka scores zero_pair assignment; do \
	  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PY) benchmarks/bench_$$b.py || exit 1; done

clean-venv:
	rm -rf $(VENV)
