"""Every notebook: valid and clean as committed, and executed end to end on the smoke profile on every
backend: through nbval *twice in one kernel* on the default backend (``$KERAS_BACKEND``, else TensorFlow), as
a learner pressing Run all a second time would (cells marked NBVAL_CHECK_OUTPUT must reproduce their
committed output in both passes), and through the course runner (papermill) on the two other backends."""

import copy
import os
import pathlib
import re
import subprocess
import sys

import nbformat
import papermill
import pytest

from course_utils import runner
from course_utils.constants import RESULT_MIMETYPE

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
by_name = pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
# The nbval test runs the notebooks on the default backend; the runner covers the other two.
DEFAULT_BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")
RUNNER_BACKENDS = [backend for backend in runner.BACKENDS if backend != DEFAULT_BACKEND]


def code_cells(notebook):
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def test_the_course_has_notebooks():
    assert NOTEBOOKS, "no notebooks found in notebooks/"


@by_name
def test_committed_notebook_is_valid_and_holds_a_real_run(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    assert "widgets" not in notebook.metadata, "saved widget state makes GitHub show 'Invalid Notebook'"
    cells = code_cells(notebook)
    setup = cells[0].source
    for needle in ("google.colab", "pip install", "KERAS_BACKEND", "course_utils.setup("):
        assert needle in setup, f"the first code cell should be the setup cell and contain {needle!r}"
    parameters = [cell for cell in cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(parameters) == 1, "exactly one cell must be tagged 'parameters' for papermill"
    assert re.search(r'^profile = "(smoke|workshop|full)"', parameters[0].source, re.M)
    outputs = [output for cell in cells for output in cell.get("outputs", [])]
    assert not [output for output in outputs if output.output_type == "error"], "committed outputs contain an error"
    records = [output.data[RESULT_MIMETYPE] for output in outputs if RESULT_MIMETYPE in output.get("data", {})]
    assert records, "the committed notebook should hold the outputs of a real run, including its report()"
    assert records[-1]["profile"] == "workshop", "commit the outputs of a workshop run"


def checkpoint_notebooks():
    """Notebook stem -> the shipped checkpoints made for it (course_utils.pretrained's manifest)."""
    from course_utils.pretrained import pretrained_info, pretrained_names

    found = {}
    for name in pretrained_names():
        found.setdefault(pretrained_info(name)["notebook"], []).append(name)
    return found


@by_name
def test_a_notebook_with_a_checkpoint_explores_it_by_default(path):
    names = checkpoint_notebooks().get(path.stem, [])
    notebook = nbformat.read(path, as_version=4)
    sources = "\n".join(cell.source for cell in code_cells(notebook))
    parameters = next(cell for cell in code_cells(notebook) if "parameters" in cell.metadata.get("tags", []))
    if names:
        assert re.search(r"^pretrained = True\b", parameters.source, re.M), "add `pretrained = True` to the parameters"
        for name in names:
            assert f'load_pretrained("{name}"' in sources, f"{path.name} never loads its checkpoint {name!r}"
    else:
        assert "load_pretrained(" not in sources, f"{path.name} loads a checkpoint that is not shipped"


@pytest.mark.notebook
def test_every_backend_runs_the_notebooks():
    assert sorted(RUNNER_BACKENDS + [DEFAULT_BACKEND]) == sorted(runner.BACKENDS)


@pytest.mark.parametrize("backend", RUNNER_BACKENDS)
@by_name
def test_notebook_runs_through_the_runner_on_smoke(path, backend, tmp_path):
    rows, folder = runner.run([str(path)], profile="smoke", backend=backend, output_root=tmp_path)
    row = rows[0]
    assert row["status"] == "ok", row["status"]
    assert row["backend"] == backend, "the notebook should report the backend the runner asked for"
    assert 0.0 <= row["test_accuracy"] <= 1.0 and row["parameters"] > 0
    executed = nbformat.read(folder / path.name, as_version=4)
    assert "widgets" not in executed.metadata
    assert (folder / "summary.md").read_text().count(path.stem) == 1


def doubled(notebook):
    """A copy of ``notebook`` whose cells are its cells twice (fresh ids for the second copy)."""
    twice = copy.deepcopy(notebook)
    again = copy.deepcopy(notebook.cells)
    for index, cell in enumerate(again):
        cell["id"] = f"again-{index}"
    twice.cells = notebook.cells + again
    return twice


@pytest.mark.notebook
@by_name
def test_notebook_passes_nbval_twice_in_one_kernel_on_smoke(path, tmp_path):
    prepared = tmp_path / f"prepared_{path.name}"
    papermill.execute_notebook(
        str(path), str(prepared), parameters={"profile": "smoke"}, prepare_only=True, progress_bar=False
    )
    twice = tmp_path / path.name
    nbformat.write(doubled(nbformat.read(prepared, as_version=4)), twice)
    env = {**os.environ, "COURSE_UTILS_STATIC": "1", "COURSE_BACKUP_DIR": str(tmp_path / "backup")}
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", "-p", "no:cacheprovider", "-q", str(twice)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert completed.returncode == 0, completed.stdout[-6000:]
    passed = re.search(r"(\d+) passed", completed.stdout)
    cells = len(code_cells(nbformat.read(prepared, as_version=4)))
    # nbval runs one kernel per notebook file: every cell passed in both passes, in that one kernel.
    assert passed and int(passed.group(1)) == 2 * cells, completed.stdout[-2000:]
