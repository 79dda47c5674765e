"""The shipped checkpoints: each loads, matches its checksum and its recorded test accuracy; bad files fail clearly.

The accuracy test evaluates every shipped checkpoint on the 10,000 test images on every backend (this file is
re-run on JAX and PyTorch by test_backends.py) and compares with the manifest, which was written by the
training run on its own backend.
"""

import dataclasses
import json
import pathlib
import shutil

import keras
import numpy as np
import pytest

from course_utils import pretrained
from course_utils.data import load_cifar10
from course_utils.models import token_learner
from course_utils.pretrained import CheckpointError, load_pretrained, pretrained_info, pretrained_names
from course_utils.runner import main
from course_utils.training import evaluate

SHIPPED = pretrained_names()
ACCURACY_TOLERANCE = 0.003  # 0.3 points: backends differ in float rounding, never by more
SIZE_BUDGET = 25 * 2**20
REQUIRED_FIELDS = (
    "module", "builder", "arguments", "notebook", "file", "sha256", "dtype", "parameters", "test_accuracy",
    "test_images", "epochs", "recipe", "seed", "command", "train_seconds", "hardware", "backend", "keras_version",
    "date", "commit", "history", "snapshots",
)


@pytest.fixture(scope="module")
def test_images():
    _, (x_test, y_test) = load_cifar10(verbose=False)
    return x_test, y_test


def test_checkpoints_are_shipped_and_each_has_a_recipe():
    assert SHIPPED, "no checkpoint in course_utils/checkpoints/manifest.json"
    assert set(SHIPPED) <= set(pretrained.RECIPES)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint_reaches_its_recorded_accuracy(name, test_images):
    entry = pretrained_info(name)
    model = load_pretrained(name)
    assert isinstance(model, keras.Model) and model.inputs[0].dtype == "uint8"
    assert model.count_params() == entry["parameters"]
    accuracy = evaluate(model, *test_images)
    assert len(test_images[0]) == entry["test_images"] == 10_000
    assert abs(accuracy - entry["test_accuracy"]) <= ACCURACY_TOLERANCE, (accuracy, entry["test_accuracy"])


@pytest.mark.parametrize("name", SHIPPED)
def test_manifest_entry_records_how_the_checkpoint_was_made(name):
    entry = pretrained_info(name)
    assert set(REQUIRED_FIELDS) <= set(entry)
    assert [row["epoch"] for row in entry["history"]] == list(range(1, entry["epochs"] + 1))
    assert all("val_accuracy" in row and row["seconds"] > 0 for row in entry["history"])
    assert entry["commit"] and "dirty" not in entry["commit"]
    files = [entry["file"], *(snapshot["file"] for snapshot in entry["snapshots"])]
    for file, record in zip(files, [entry, *entry["snapshots"]]):
        assert pretrained.sha256(pretrained.CHECKPOINT_DIR / file) == record["sha256"]
    # early, two in the middle, and the final weights
    epochs = [snapshot["epoch"] for snapshot in entry["snapshots"]]
    assert len(epochs) >= 3 and epochs == sorted(epochs) and epochs[-1] < entry["epochs"]


def test_shipped_files_fit_the_size_budget():
    files = list(pretrained.CHECKPOINT_DIR.glob("*.npz"))
    listed = {record["file"] for name in SHIPPED for record in (pretrained_info(name), *pretrained_info(name)["snapshots"])}
    assert {path.name for path in files} == listed, "files and manifest disagree"
    assert sum(path.stat().st_size for path in files) <= SIZE_BUDGET


# ------------------------------------------------------------------------------------------ error paths


@pytest.fixture(scope="module")
def tiny_model():
    keras.utils.set_random_seed(1)
    return token_learner.build_model(**token_learner.PROFILES["smoke"].model)


@pytest.fixture
def checkpoint_folder(tmp_path, tiny_model):
    """A checkpoint folder holding one tiny checkpoint, ``tiny``, and a snapshot at epoch 1."""
    arguments = token_learner.PROFILES["smoke"].model
    digest = pretrained.save_weights(tiny_model, tmp_path / "tiny.npz")
    snapshot_digest = pretrained.save_weights(tiny_model, tmp_path / "tiny-epoch001.npz")
    entry = {"module": "token_learner", "builder": "build_model", "arguments": arguments, "file": "tiny.npz",
             "sha256": digest, "epochs": 2, "snapshots": [{"epoch": 1, "file": "tiny-epoch001.npz",
                                                            "sha256": snapshot_digest}]}
    manifest = {"format": pretrained.FORMAT_VERSION, "checkpoints": {"tiny": entry}}
    (tmp_path / pretrained.MANIFEST_NAME).write_text(json.dumps(manifest))
    return tmp_path


def test_loaded_checkpoint_computes_what_was_saved(checkpoint_folder, tiny_model):
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype="uint8")
    loaded = load_pretrained("tiny", directory=checkpoint_folder)
    expected = keras.ops.convert_to_numpy(tiny_model(images))
    # float16 storage: the logits agree to float16's precision, not float32's
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(images)), expected, atol=2e-2)
    assert loaded is not tiny_model
    snapshot = load_pretrained("tiny", epoch=1, directory=checkpoint_folder)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(snapshot(images)),
                                  keras.ops.convert_to_numpy(loaded(images)))


def test_missing_file_names_it_and_the_fix(checkpoint_folder):
    (checkpoint_folder / "tiny.npz").unlink()
    with pytest.raises(CheckpointError, match=r"tiny\.npz is missing.*pretrain tiny --install"):
        load_pretrained("tiny", directory=checkpoint_folder)


def test_corrupted_file_fails_its_checksum(checkpoint_folder):
    path = checkpoint_folder / "tiny.npz"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"tiny\.npz is corrupt: its SHA-256 differs"):
        load_pretrained("tiny", directory=checkpoint_folder)


def test_wrong_checksum_in_the_manifest_is_reported(checkpoint_folder):
    path = checkpoint_folder / pretrained.MANIFEST_NAME
    manifest = json.loads(path.read_text())
    manifest["checkpoints"]["tiny"]["sha256"] = "0" * 64
    path.write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="SHA-256 differs"):
        load_pretrained("tiny", directory=checkpoint_folder)


def test_unreadable_file_with_a_matching_checksum_is_reported(checkpoint_folder):
    path = checkpoint_folder / "tiny.npz"
    path.write_bytes(path.read_bytes()[:100])
    manifest_path = checkpoint_folder / pretrained.MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    manifest["checkpoints"]["tiny"]["sha256"] = pretrained.sha256(path)
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"tiny\.npz cannot be read"):
        load_pretrained("tiny", directory=checkpoint_folder)


def test_architecture_mismatch_is_reported_before_anything_is_assigned(checkpoint_folder, tiny_model):
    manifest_path = checkpoint_folder / pretrained.MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    manifest["checkpoints"]["tiny"]["arguments"]["embed_dim"] = 48
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="different architecture"):
        load_pretrained("tiny", directory=checkpoint_folder)
    # assign_weights checks every shape before it assigns: a late mismatch leaves the model untouched
    before = [keras.ops.convert_to_numpy(variable.value).copy() for variable in tiny_model.weights]
    arrays = [np.ones_like(value) for value in before]
    arrays[-1] = np.ones(arrays[-1].shape + (2,), "float32")
    with pytest.raises(CheckpointError, match="has shape"):
        pretrained.assign_weights(tiny_model, arrays)
    for variable, value in zip(tiny_model.weights, before):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable.value), value)


def test_unknown_names_and_epochs_list_the_choices(checkpoint_folder):
    with pytest.raises(CheckpointError, match=r"No shipped checkpoint named 'nope' \(shipped: tiny\)"):
        load_pretrained("nope", directory=checkpoint_folder)
    with pytest.raises(CheckpointError, match=r"no snapshot at epoch 7: choose one of \[1\]"):
        load_pretrained("tiny", epoch=7, directory=checkpoint_folder)


def test_unreadable_manifest_is_reported(tmp_path):
    (tmp_path / pretrained.MANIFEST_NAME).write_text("{ not json")
    with pytest.raises(CheckpointError, match="manifest .* cannot be read"):
        pretrained_names(tmp_path)


# ---------------------------------------------------------------------------------------- the pretrain run


@pytest.fixture
def tiny_recipe(monkeypatch):
    """A recipe small enough for a test: the smoke TokenLearner on 256 images, 2 epochs, tested on 500."""
    smoke = token_learner.PROFILES["smoke"]
    profile = pretrained._checkpoint_profile(epochs=2, learning_rate=1e-3, weight_decay=0.0, warmup_epochs=0,
                                             model=smoke.model, note="test", batch_size=64)
    profile = dataclasses.replace(profile, train_samples=256, eval_samples=128, test_samples=500)
    recipe = pretrained.Recipe(module="token_learner", builder="build_model", notebook="01_token_learner",
                               profile=profile, snapshot_epochs=(1, 2))
    monkeypatch.setitem(pretrained.RECIPES, "tiny", recipe)
    return recipe


def test_pretrain_writes_a_checkpoint_that_installs_and_loads(tiny_recipe, tmp_path):
    run_folder, shipped = tmp_path / "run", tmp_path / "shipped"
    entry = pretrained.pretrain("tiny", output=run_folder, verbose=0)
    assert json.loads((run_folder / "entry.json").read_text()) == entry
    assert [row["epoch"] for row in entry["history"]] == [1, 2]
    assert [snapshot["epoch"] for snapshot in entry["snapshots"]] == [1]
    assert entry["test_images"] == 500 and entry["backend"] == keras.backend.backend()
    assert not shipped.exists(), "pretrain must not install unless asked"
    pretrained.install_checkpoint("tiny", run_folder, directory=shipped)
    assert pretrained_names(shipped) == ["tiny"]
    model = load_pretrained("tiny", directory=shipped)
    _, _, (x_test, y_test) = pretrained.profile_data(tiny_recipe.profile)
    assert abs(evaluate(model, x_test, y_test) - entry["test_accuracy"]) <= ACCURACY_TOLERANCE
    early = load_pretrained("tiny", epoch=1, directory=shipped)
    assert abs(evaluate(early, x_test, y_test) - entry["snapshots"][0]["test_accuracy"]) <= ACCURACY_TOLERANCE


def test_install_refuses_a_file_changed_after_the_run(tiny_recipe, tmp_path):
    run_folder = tmp_path / "run"
    pretrained.pretrain("tiny", output=run_folder, epochs=1, verbose=0)
    shutil.copyfile(run_folder / "run-epoch001.npz", run_folder / "tiny.npz")
    with pytest.raises(CheckpointError, match="changed since the run wrote it"):
        pretrained.install_checkpoint("tiny", run_folder, directory=tmp_path / "shipped")
    assert not (tmp_path / "shipped" / pretrained.MANIFEST_NAME).exists()


def test_pretrain_command_rejects_unknown_names_and_epochs(capsys):
    assert main(["pretrain", "nope"]) == 2
    assert "No recipe named 'nope'" in capsys.readouterr().err
    assert main(["pretrain", "patch_convnet", "--epochs", "0", "--output", "unused"]) == 2
    assert "epochs must be an integer" in capsys.readouterr().err


def test_recipes_keep_the_workshop_architecture():
    for name, recipe in pretrained.RECIPES.items():
        module = __import__(f"course_utils.models.{recipe.module}", fromlist=["PROFILES"])
        workshop = module.PROFILES["workshop"].model
        changed = {key for key in set(workshop) | set(recipe.profile.model)
                   if workshop.get(key) != recipe.profile.model.get(key)}
        assert changed <= {"resize_to"}, f"{name} changes {changed}: say so in the notebook, then allow it here"
        assert pathlib.Path(pretrained.__file__).parent.joinpath("..", "notebooks").resolve().joinpath(
            f"{recipe.notebook}.ipynb").exists()


def test_readme_results_table_shows_every_shipped_checkpoint():
    readme = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    for name in SHIPPED:
        assert pretrained.result_cell(name) in readme, f"README's results table lacks {name}: {pretrained.result_cell(name)}"
