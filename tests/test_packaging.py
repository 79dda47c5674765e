"""What the README's install commands promise: the extras and the conda environment bring what they say."""

import pathlib
import shutil
import subprocess
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_the_notebook_extra_installs_jupyterlab_with_prebuilt_widgets():
    extra = PYPROJECT["project"]["optional-dependencies"]["notebooks"]
    assert any(requirement.startswith("jupyterlab>=4") for requirement in extra)
    assert any(requirement.startswith("ipywidgets>=8") for requirement in extra)
    assert "course_utils[notebooks]" in PYPROJECT["project"]["optional-dependencies"]["test"]
    assert "-e .[test]" in (ROOT / "environment.yml").read_text(encoding="utf-8")


def test_jupyter_lab_runs_where_the_extra_was_installed():
    # CI installs ".[test]" (which includes ".[notebooks]") into a fresh environment, as a learner would.
    jupyter = shutil.which("jupyter", path=str(pathlib.Path(sys.executable).parent))
    assert jupyter, "no `jupyter` command next to this Python: is the notebooks extra installed?"
    completed = subprocess.run([jupyter, "lab", "--version"], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert int(completed.stdout.strip().split(".")[0]) >= 4


def test_the_checkpoints_are_package_data():
    package_data = PYPROJECT["tool"]["setuptools"]["package-data"]["course_utils"]
    assert {"checkpoints/*.npz", "checkpoints/manifest.json"} <= set(package_data)


def test_a_built_wheel_carries_every_shipped_checkpoint(tmp_path):
    # What Colab's `pip install git+...` and Binder get: the wheel, not the checkout.
    import zipfile

    from course_utils.pretrained import CHECKPOINT_DIR, MANIFEST_NAME

    completed = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    (wheel,) = tmp_path.glob("course_utils-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"course_utils/checkpoints/{path.name}" for path in CHECKPOINT_DIR.glob("*.npz")}
    assert shipped and shipped <= names
    assert f"course_utils/checkpoints/{MANIFEST_NAME}" in names
