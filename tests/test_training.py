import json
import os
import pathlib
import shutil

import keras
import numpy as np
import pytest

from course_utils import training
from course_utils.constants import RESULT_MIMETYPE
from course_utils.profiles import Profile


def test_warmup_cosine_rises_linearly_then_decays_to_the_floor():
    schedule = training.warmup_cosine(1e-3, total_steps=100, warmup_steps=10, final_fraction=0.1)
    rates = np.array([float(keras.ops.convert_to_numpy(schedule(step))) for step in range(0, 101, 5)])
    np.testing.assert_allclose(rates[1], 0.5e-3, rtol=1e-5)  # half-way through the warmup
    np.testing.assert_allclose(rates[2], 1e-3, rtol=1e-5)  # peak at the end of warmup
    assert np.all(np.diff(rates[2:]) <= 1e-12)  # then never rises
    np.testing.assert_allclose(rates[-1], 1e-4, rtol=1e-4)  # final_fraction of the peak


def test_warmup_cosine_without_warmup_starts_at_peak():
    schedule = training.warmup_cosine(2e-3, total_steps=10)
    assert float(keras.ops.convert_to_numpy(schedule(0))) == pytest.approx(2e-3)


@pytest.mark.parametrize("kwargs", [dict(total_steps=0), dict(total_steps=10, warmup_steps=10)])
def test_warmup_cosine_rejects_bad_steps(kwargs):
    with pytest.raises(ValueError, match="steps"):
        training.warmup_cosine(1e-3, **kwargs)


def tiny_model():
    images = keras.Input((8, 8, 3), dtype="uint8")
    x = keras.layers.Rescaling(1 / 255)(images)
    logits = keras.layers.Dense(3)(keras.layers.Flatten()(x))
    return keras.Model(images, logits)


def test_train_resumes_from_backup_and_cleans_up(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
    y = rng.integers(0, 3, (16, 1))
    profile = Profile(name="smoke", epochs=3, batch_size=8, warmup_epochs=1)

    class StopAfterFirstEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                raise KeyboardInterrupt  # a disconnect in the middle of training

    model = tiny_model()
    with pytest.raises(KeyboardInterrupt):
        training.train(model, (x, y), (x, y), profile, "run", backup_root=tmp_path, callbacks=[StopAfterFirstEpoch()], verbose=0)
    assert os.listdir(training.backup_folder("run", profile, tmp_path)), "no backup was written after the first epoch"

    result = training.train(tiny_model(), (x, y), (x, y), profile, "run", backup_root=tmp_path, verbose=0)
    assert result.initial_epoch == 1 and result.epochs == 3  # resumed: only the two missing epochs ran
    assert len(result.history["loss"]) == 3  # ... but the history covers the whole run, epoch 0 from the backup
    assert result.seconds > 0
    assert not (tmp_path / "run").exists() or not os.listdir(training.backup_folder("run", profile, tmp_path))


class StopAfterEpoch(keras.callbacks.Callback):
    """A disconnect right after epoch ``stop``'s backup was written (callbacks run after train()'s backup)."""

    def __init__(self, stop):
        super().__init__()
        self.stop = stop

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.stop:
            raise KeyboardInterrupt


def interrupted_run(tmp_path, stop=0, epochs=2):
    x = np.random.default_rng(0).integers(0, 256, (8, 8, 8, 3), dtype=np.uint8)
    data, profile = (x, np.arange(8) % 3), Profile(name="smoke", epochs=epochs, batch_size=4)
    with pytest.raises(KeyboardInterrupt):
        training.train(tiny_model(), data, None, profile, "run", backup_root=tmp_path, callbacks=[StopAfterEpoch(stop)],
                       verbose=0)
    return data, profile, pathlib.Path(training.backup_folder("run", profile, tmp_path))


def test_a_run_cut_off_after_its_last_backup_returns_the_whole_history(tmp_path):
    data, profile, folder = interrupted_run(tmp_path, stop=1, epochs=2)
    assert sorted(os.listdir(folder)) == ["epoch-2.weights.h5", "state.json"]  # one epoch's files, nothing partial
    result = training.train(tiny_model(), data, None, profile, "run", backup_root=tmp_path, verbose=0)
    assert result.initial_epoch == 2 and len(result.history["loss"]) == 2 and len(result.history["accuracy"]) == 2
    assert not folder.exists()


def other_model():
    images = keras.Input((8, 8, 3), dtype="uint8")
    return keras.Model(images, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(images)))


@pytest.mark.parametrize("damage, problem", [
    (lambda folder: None, "different model"),
    (lambda folder: (folder / "state.json").write_text(""), "unreadable"),
    (lambda folder: (folder / "epoch-1.weights.h5").write_bytes(b"half a file"), "damaged"),
    (lambda folder: (folder / "epoch-1.weights.h5").unlink(), "damaged"),
], ids=["other-model", "empty-state", "half-written-weights", "missing-weights"])
def test_a_backup_that_cannot_be_resumed_names_the_folder_to_delete(tmp_path, damage, problem):
    data, profile, folder = interrupted_run(tmp_path)
    damage(folder)
    model = other_model() if problem == "different model" else tiny_model()
    with pytest.raises(training.BackupError, match=problem) as raised:
        training.train(model, data, None, profile, "run", backup_root=tmp_path, verbose=0)
    assert "Delete that folder" in str(raised.value) and str(folder) in str(raised.value)
    shutil.rmtree(folder)  # what the message says to do: then the run starts over
    assert training.train(model, data, None, profile, "run", backup_root=tmp_path, verbose=0).initial_epoch == 0


def test_train_checks_its_arguments(tmp_path):
    x, y = np.zeros((4, 8, 8, 3), np.uint8), np.zeros((4, 1))
    profile = Profile(name="smoke", epochs=1, batch_size=2)
    with pytest.raises(TypeError, match="Profile"):
        training.train(tiny_model(), (x, y), (x, y), "smoke", "run", backup_root=tmp_path)
    with pytest.raises(ValueError, match="run_name"):
        training.train(tiny_model(), (x, y), (x, y), profile, "", backup_root=tmp_path)
    fresh = training.train(tiny_model(), (x, y), None, profile, "run", backup_root=tmp_path, verbose=0)
    assert fresh.initial_epoch == 0 and len(fresh.history["loss"]) == 1


def test_train_keeps_the_last_partial_batch_and_shuffles_every_epoch(tmp_path, monkeypatch):
    """The TLB keras.io example dropped the last partial batch and shuffled once; train() must do neither."""
    x = np.zeros((10, 8, 8, 3), np.uint8)
    y = np.zeros((10, 1))
    profile = Profile(name="smoke", epochs=2, batch_size=4)

    class CountSteps(keras.callbacks.Callback):
        steps = []

        def on_epoch_begin(self, epoch, logs=None):
            self.steps.append(0)

        def on_train_batch_end(self, batch, logs=None):
            self.steps[-1] += 1

    model = tiny_model()
    fit = model.fit
    seen = {}

    def recording_fit(*args, **kwargs):
        seen.update(kwargs, samples=len(args[0]))
        return fit(*args, **kwargs)

    monkeypatch.setattr(model, "fit", recording_fit)
    training.train(model, (x, y), None, profile, "steps", backup_root=tmp_path, callbacks=[CountSteps()], verbose=0)
    assert CountSteps.steps == [3, 3], "10 images at batch 4 are 3 steps an epoch: the last, partial batch counts"
    assert seen["samples"] == 10 and seen.get("shuffle", True) is True, "fit must reshuffle the arrays every epoch"


def test_evaluate_is_top1_accuracy():
    model = tiny_model()
    images = np.zeros((4, 8, 8, 3), np.uint8)
    predicted = int(np.argmax(model.predict(images, verbose=0)[0]))
    labels = np.array([[predicted], [predicted], [(predicted + 1) % 3], [predicted]])
    assert training.evaluate(model, images, labels) == pytest.approx(0.75)


def test_report_publishes_a_record_the_runner_can_read(capsys, monkeypatch):
    shown = []
    import IPython.display

    monkeypatch.setattr(IPython.display, "display", lambda obj, raw=False: shown.append(obj))
    record = training.report("01_x", Profile(name="smoke", epochs=1, batch_size=2), 0.4321, 12.34, 1000, extra_metric=1)
    assert record["profile"] == "smoke" and record["backend"] == keras.backend.backend()
    assert shown and json.loads(json.dumps(shown[0][RESULT_MIMETYPE])) == record
    assert "0.4321" in shown[0]["text/plain"]


def test_classification_loss_reads_logits():
    """Models end in a plain Dense layer: the loss must apply the softmax, so uniform logits give log(10)."""
    loss = training.classification_loss()
    value = loss(np.array([3]), np.zeros((1, 10), dtype="float32"))
    np.testing.assert_allclose(float(keras.ops.convert_to_numpy(value)), np.log(10.0), rtol=1e-6)


def test_a_backup_from_keras_backup_and_restore_is_resumed(tmp_path):
    """What train() wrote before its own Backup: a run killed then resumes after the update too."""
    x = np.random.default_rng(0).integers(0, 256, (8, 8, 8, 3), dtype=np.uint8)
    data, profile = (x, np.arange(8) % 3), Profile(name="smoke", epochs=2, batch_size=4)
    folder = training.backup_folder("run", profile, tmp_path)
    model = tiny_model()
    training.compile_for_profile(model, profile, len(x))
    model.fit(*data, epochs=1, verbose=0, callbacks=[StopAfterEpoch(-1),
              keras.callbacks.BackupAndRestore(folder, delete_checkpoint=False)])
    result = training.train(tiny_model(), data, None, profile, "run", backup_root=tmp_path, verbose=0)
    assert result.initial_epoch == 1 and len(result.history["loss"]) == 1
    assert not os.path.exists(folder)
