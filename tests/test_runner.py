"""The runner on small stand-in notebooks (no training), so its behaviour is checked in seconds."""

import datetime
import json
import os

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from course_utils import runner
from course_utils.constants import RESULT_MIMETYPE


def write_notebook(path, body):
    parameters = new_code_cell('profile = "workshop"')
    parameters.metadata["tags"] = ["parameters"]
    notebook = new_notebook(cells=[parameters, *(new_code_cell(source) for source in body)])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, path)
    return path


def reporting_cell(accuracy):
    record = {"notebook": "x", "profile": "{profile}", "backend": "numpy", "device": "CPU", "test_accuracy": accuracy,
              "train_seconds": 1.5, "parameters": 123}
    return (
        "from IPython.display import display\n"
        f"record = {json.dumps(record)}\n"
        "record['profile'] = profile\n"
        f"display({{'{RESULT_MIMETYPE}': record, 'text/plain': str(record)}}, raw=True)"
    )


@pytest.fixture
def notebooks(tmp_path):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    good = write_notebook(folder / "01_good.ipynb", [reporting_cell(0.5)])
    bad = write_notebook(folder / "02_bad.ipynb", ["x = 1", "raise RuntimeError('the data is missing')"])
    later = write_notebook(folder / "03_later.ipynb", [reporting_cell(0.75)])
    return folder, (good, bad, later)


def test_runner_reports_failures_and_runs_the_rest(notebooks, tmp_path, capsys):
    folder, (good, bad, later) = notebooks
    rows, run_folder = runner.run([str(folder)], profile="smoke", backend="jax", output_root=tmp_path / "runs")
    assert [row["status"] for row in rows][0] == "ok" and rows[2]["status"] == "ok"
    assert "cell In [4]" in rows[1]["status"]  # parameters, injected parameters, x = 1, raise and "RuntimeError: the data is missing" in rows[1]["status"]
    assert rows[0]["test_accuracy"] == 0.5 and rows[0]["profile"] == "smoke" and rows[2]["test_accuracy"] == 0.75
    assert rows[0]["backend"] == "numpy"  # what the notebook reported wins over what was asked
    assert run_folder.name.endswith("-smoke-jax")
    table = (run_folder / "summary.md").read_text()
    assert "| 01_good | smoke | numpy | CPU | 50.0% | 1.5 s | 123 |" in table
    assert json.loads((run_folder / "summary.json").read_text())[1]["notebook"] == "02_bad"
    printed = capsys.readouterr().out
    assert "[2/3] 02_bad.ipynb ... failed at cell In [4]" in printed
    # The committed notebooks are never overwritten: outputs go to the run folder only.
    assert not nbformat.read(good, as_version=4).cells[1].outputs
    assert nbformat.read(run_folder / "01_good.ipynb", as_version=4).cells[-1].outputs


def test_main_exits_non_zero_when_a_notebook_fails(notebooks, tmp_path):
    folder, (good, bad, later) = notebooks
    assert runner.main(["run", "--profile", "smoke", "--output", str(tmp_path / "a"), str(good)]) == 0
    assert runner.main(["run", "--profile", "smoke", "--output", str(tmp_path / "b"), str(good), str(bad)]) == 1


def test_bad_arguments_are_explained(tmp_path, capsys):
    assert runner.main(["run", str(tmp_path / "missing.ipynb")]) == 2
    assert "No notebook at" in capsys.readouterr().err
    with pytest.raises(ValueError, match="Unknown profile"):
        runner.run([], profile="huge")
    with pytest.raises(ValueError, match="Unknown backend"):
        runner.run([], backend="mxnet")


def test_runner_runs_every_backend_in_its_own_folder_and_restores_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    monkeypatch.delenv("COURSE_BACKUP_DIR", raising=False)
    folder = tmp_path / "notebooks"
    folder.mkdir()
    # The notebook reports the backend and backup folder its kernel was started with.
    write_notebook(folder / "01_env.ipynb", [
        "import os, json\n"
        "from IPython.display import display\n"
        f"display({{'{RESULT_MIMETYPE}': {{'notebook': 'x', 'backend': os.environ['KERAS_BACKEND'], "
        "'device': os.environ['COURSE_BACKUP_DIR'], 'test_accuracy': 0.5, 'train_seconds': 1, 'parameters': 1}, "
        "'text/plain': ''}, raw=True)"
    ])
    rows, run_folder = runner.run([str(folder)], profile="smoke", backend="all", output_root=tmp_path / "runs")
    assert run_folder.name.endswith("-smoke-all")
    assert [row["backend"] for row in rows] == list(runner.BACKENDS)
    assert all(row["status"] == "ok" for row in rows)
    for row, backend in zip(rows, runner.BACKENDS):
        assert (run_folder / backend / "01_env.ipynb").exists()
        # Backups never shared across backends, and outside the run folder, so the next run resumes them.
        assert row["device"] == str(tmp_path / "runs" / "backup" / backend / "01_env")
    assert os.environ["KERAS_BACKEND"] == "tensorflow"  # the caller's setting is back
    assert "COURSE_BACKUP_DIR" not in os.environ


def test_runner_rejects_an_unknown_backend(tmp_path):
    with pytest.raises(ValueError, match="all"):
        runner.run([], profile="smoke", backend="numpy", output_root=tmp_path)


def test_the_next_run_finds_the_backups_and_relative_paths_are_read_from_where_the_runner_started(
        tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "cifar-10-python.tar.gz").write_bytes(b"stand-in")
    monkeypatch.setenv("COURSE_CIFAR10", "data/cifar-10-python.tar.gz")  # what a workshop README would say
    monkeypatch.delenv("COURSE_BACKUP_DIR", raising=False)
    write_notebook(tmp_path / "01_resume.ipynb", [
        "import os, pathlib\n"
        "from IPython.display import display\n"
        "marker = pathlib.Path(os.environ['COURSE_BACKUP_DIR']) / 'run-smoke' / 'state.json'\n"
        "resumed = marker.exists()  # what train() would resume from\n"
        "marker.parent.mkdir(parents=True, exist_ok=True)\n"
        "marker.touch()\n"
        f"display({{'{RESULT_MIMETYPE}': {{'notebook': 'x', 'backend': 'numpy', "
        "'device': f\"resumed={resumed} data={os.path.exists(os.environ['COURSE_CIFAR10'])}\", 'test_accuracy': 0.5, "
        "'train_seconds': 1, 'parameters': 1}, 'text/plain': ''}, raw=True)"
    ])
    first, _ = runner.run(["01_resume.ipynb"], profile="smoke", backend="jax", output_root="runs")
    second, _ = runner.run(["01_resume.ipynb"], profile="smoke", backend="jax", output_root="runs")
    assert [first[0]["device"], second[0]["device"]] == ["resumed=False data=True", "resumed=True data=True"]


def test_an_output_folder_under_a_file_is_explained(notebooks, tmp_path, capsys):
    folder, (good, _, _) = notebooks
    (tmp_path / "a-file").write_text("")
    assert runner.main(["run", "--output", str(tmp_path / "a-file" / "runs"), str(good)]) == 2
    assert "Cannot create the run folder" in capsys.readouterr().err


def test_two_runs_in_the_same_second_get_their_own_folders(notebooks, tmp_path, monkeypatch):
    folder, (good, _, _) = notebooks

    class FrozenClock(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.datetime(2026, 12, 3, 12, 0, 0)

    monkeypatch.setattr(runner.datetime, "datetime", FrozenClock)
    monkeypatch.setattr(runner, "run_notebook", lambda *args, **kwargs: {"status": "ok", "wall_seconds": 0.0})
    _, first = runner.run([str(good)], profile="smoke", backend="jax", output_root=tmp_path / "runs")
    _, second = runner.run([str(good)], profile="smoke", backend="jax", output_root=tmp_path / "runs")
    assert first != second and first.name.endswith("-smoke-jax") and second.name.endswith("-smoke-jax")
