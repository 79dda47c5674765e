"""Re-run the layer and model tests on the two Keras backends this process is not using.

Keras fixes its backend when it is first imported, so each other backend gets a pytest subprocess with
``KERAS_BACKEND`` set. The subprocess's own summary is shown when it fails.
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
    "test_imports.py", "test_validation.py",  # read source files and check arguments: no Keras at all
}
UNIT_TESTS = sorted(
    path.name for path in TESTS.glob("test_*.py") if path.name not in BACKEND_FREE and not path.name.startswith("test_parity")
)
OTHER_BACKENDS = [backend for backend in BACKENDS if backend != keras.backend.backend()]
# Each backend's run is cut in two halves of the files, so that `pytest -n 2` can spread the four runs
# over two workers instead of waiting for two long ones.
HALVES = (UNIT_TESTS[0::2], UNIT_TESTS[1::2])


def test_unit_test_files_are_found():
    assert "test_blocks.py" in UNIT_TESTS and "test_token_learner.py" in UNIT_TESTS


def test_the_halves_cover_every_unit_test_file_once():
    assert sorted(HALVES[0] + HALVES[1]) == UNIT_TESTS


@pytest.mark.parametrize("half", [0, 1], ids=["first-half", "second-half"])
@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_layer_and_model_tests_pass_on(backend, half):
    env = {**os.environ, "KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu"}
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", *HALVES[half]],
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
