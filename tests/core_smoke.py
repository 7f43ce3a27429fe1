"""The core install, alone: run with a Python whose environment holds only ``pip install sotalign-jax`` (no extras),
from outside the source tree (``make test-newest`` and ``make device-setup`` do). It imports the library's core
modules, checks that they loaded no optional dependency, fits and applies one aligner, and prints what it used.

Not collected by pytest (no ``test_`` prefix); ``tests/test_packaging.py`` runs it in the test venv as well.
"""

import importlib.metadata
import pathlib
import sys
import time

start = time.perf_counter()
import sotalign_jax.ot  # noqa: E402
ot_seconds = time.perf_counter() - start
import jax  # noqa: E402
import numpy as np  # noqa: E402

import sotalign_jax  # noqa: E402
from sotalign_jax import _extras, aligners, cka, metrics, qap, teachers  # noqa: E402,F401

# No optional dependency (nor torch / transformers / POT / scikit-learn) may be imported by the core modules.
FORBIDDEN = sorted(set(_extras.EXTRAS) | {"transformers", "torch", "sklearn", "ot"})
loaded = sorted(m for m in FORBIDDEN if m in sys.modules)
assert not loaded, f"the core import loaded optional packages: {loaded}"

rng = np.random.default_rng(0)
x = rng.normal(size=(64, 8)).astype(np.float32)
q = np.linalg.qr(rng.normal(size=(8, 8)))[0].astype(np.float32)
y = x @ q
data = aligners.AlignData.create(pairs_x=x, pairs_y=y)
sim = np.asarray(aligners.fit("procrustes", None, data).similarity(x, y))
assert (sim.argmax(1) == np.arange(64)).all(), "Procrustes did not recover a planted rotation"
k = jax.numpy.asarray(x @ x.T / 8)
value = float(sotalign_jax.ot.klot(k, k, eps_student=0.1, eps_teacher=0.1))
assert np.isfinite(value) and abs(value) < 1e-3, f"KLOT(K, K) should be ~0, got {value}"
assert abs(float(cka.linear_cka(x, y)) - 1.0) < 1e-4, "CKA of a rotated copy should be 1"

package_dir = pathlib.Path(sotalign_jax.__file__).parent
assert (package_dir / "py.typed").is_file(), f"py.typed missing from {package_dir}"
versions = {d: importlib.metadata.version(d) for d in ("jax", "jaxlib", "flax", "optax", "ott-jax", "numpy")}
print(f"core smoke OK: Python {sys.version.split()[0]}, {jax.default_backend()}, {versions}; "
      f"import sotalign_jax.ot {ot_seconds:.2f} s; package at {package_dir}")
