"""Re-run the layer and model tests on the two Keras backends this process is not using.

Keras fixes its backend when it is first imported, so each other backend gets a pytest subprocess with
``KERAS_BACKEND`` set. The subprocess's own summary is shown when it fails. Tests marked
``main_backend_only`` (the ``full`` profiles' one training step) are left out there.
"""

import os
import pathlib
import re
import subprocess
import sys

import keras
import pytest

from course_utils.runner import BACKENDS

TESTS = pathlib.Path(__file__).resolve().parent
# Tests that never touch a backend (data, plots, runner, notebooks, the benchmark CLI) or that need their own
# environment.
BACKEND_FREE = {
    "test_backends.py", "test_data.py", "test_viz.py", "test_runner.py", "test_notebooks.py", "test_benchmarks.py",
    "test_resilience.py", "test_distribution.py",  # these start their own subprocesses, with their own backends
    "test_tlb_benchmark.py",  # compiles five TLB variants (~2 min); its figures are TensorFlow's
    "test_imports.py", "test_validation.py", "test_packaging.py",  # read files, check arguments: no Keras at all
    # the docstring examples are documentation: they run on the main backend; the layers and builders they
    # show are tested on all three by the other files
    "test_docstrings.py",
}
UNIT_TESTS = sorted(
    path.name for path in TESTS.glob("test_*.py") if path.name not in BACKEND_FREE and not path.name.startswith("test_parity")
)
OTHER_BACKENDS = [backend for backend in BACKENDS if backend != keras.backend.backend()]
# Each backend's run is cut into parts of similar length (measured in CI: alternate files gave one part of
# 583 s and one of 206 s on JAX), so that `pytest -n 2` can spread the runs over both workers.
HEAVY_PARTS = (("test_protocol.py",), ("test_cait.py", "test_focal_modulation.py", "test_exercises.py"))
PARTS = tuple(list(part) for part in HEAVY_PARTS) + (
    [name for name in UNIT_TESTS if not any(name in part for part in HEAVY_PARTS)],
)


def test_unit_test_files_are_found():
    assert "test_blocks.py" in UNIT_TESTS and "test_token_learner.py" in UNIT_TESTS


def test_the_parts_cover_every_unit_test_file_once():
    assert sorted(name for part in PARTS for name in part) == UNIT_TESTS


@pytest.mark.parametrize("part", range(len(PARTS)), ids=[f"part-{index + 1}" for index in range(len(PARTS))])
@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_layer_and_model_tests_pass_on(backend, part):
    env = {**os.environ, "KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu"}
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", "-m", "not main_backend_only",
         *PARTS[part]],
        cwd=TESTS,
        env=env,
        capture_output=True,
        text=True,
    )
    summary = completed.stdout[-4000:]
    assert completed.returncode == 0, f"tests failed on {backend}:\n{summary}"
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) > 0, f"no test ran on {backend}:\n{summary}"
    assert "skipped" not in summary.splitlines()[-1], f"tests were skipped on {backend}:\n{summary}"
    print(f"{backend}: {summary.strip().splitlines()[-1]}")
