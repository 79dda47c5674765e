"""Training survives what happens in a course: a killed kernel.

A real training run in a subprocess is killed with SIGKILL in the middle of an epoch, then the same command
is started again: it must resume from ``train``'s backup, finish, clean up and save a model that loads and
predicts.

(Each notebook run twice in one kernel is tests/test_notebooks.py's nbval test; the runner surviving a
notebook that raises is covered by ``test_runner.py``.)
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading

import keras
import numpy as np
import pytest


EPOCHS, STEPS = 4, 32
KILL_AT = (1, 5)  # (epoch, batch): the first run is killed here, after epoch 0 was backed up

# The training script: a tiny model, course_utils.training.train with a backup in argv[1], and markers on
# stdout. While the file argv[3] exists it stops at KILL_AT and waits to be killed there, so the kill
# lands in the middle of an epoch whatever the machine's speed; the test removes the file before the restart.
CHILD = textwrap.dedent(
    f'''
    import json, os, sys, time
    import keras
    import numpy as np
    from course_utils import profiles, training

    backup_root, model_path, pause_file = sys.argv[1:4]

    def checksum(model):
        return float(sum(np.abs(keras.ops.convert_to_numpy(w)).sum() for w in model.weights))

    class Markers(keras.callbacks.Callback):
        # Runs after train()'s BackupAndRestore callback: on_train_begin sees the restored state, and
        # "end" is printed only once the epoch's backup is on disk.
        def on_train_begin(self, logs=None):
            steps = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
            print("begin", checksum(self.model), steps, flush=True)

        def on_epoch_begin(self, epoch, logs=None):
            self.current = epoch
            print("epoch", epoch, flush=True)

        def on_train_batch_end(self, batch, logs=None):
            print("batch", self.current, batch, flush=True)
            if (self.current, batch) == {KILL_AT} and os.path.exists(pause_file):
                print("waiting to be killed", flush=True)
                time.sleep(300)

        def on_epoch_end(self, epoch, logs=None):
            print("end", epoch, checksum(self.model), flush=True)

    keras.utils.set_random_seed(0)
    images = keras.Input((8, 8, 3), dtype="uint8")
    hidden = keras.layers.Dense(16, activation="relu")(keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(images)))
    model = keras.Model(images, keras.layers.Dense(3)(hidden))
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, ({STEPS * 4}, 8, 8, 3), dtype=np.uint8)
    y = rng.integers(0, 3, ({STEPS * 4}, 1))
    profile = profiles.Profile(name="smoke", epochs={EPOCHS}, batch_size=4, warmup_epochs=1)
    result = training.train(model, (x, y), (x[:16], y[:16]), profile, "killed", backup_root=backup_root,
                            callbacks=[Markers()], verbose=0)
    model.save(model_path)
    np.save(model_path + ".x.npy", x[:8])
    np.save(model_path + ".logits.npy", model.predict(x[:8], verbose=0))
    print("result", json.dumps({{"initial_epoch": result.initial_epoch, "epochs": result.epochs,
                                "history": len(result.history["loss"])}}), flush=True)
    '''
)


def start(command, tmp_path, name):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "JAX_PLATFORMS": "cpu"}
    with open(tmp_path / f"{name}.stderr", "w") as stderr:  # the child keeps its own copy of the file
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
    watchdog = threading.Timer(400, process.kill)  # a hung child fails the test instead of hanging it
    watchdog.start()
    return process, watchdog


def read_lines(process, until=None):
    """Lines of the child's stdout, up to and including the first one equal to ``until`` (or to the end)."""
    lines = []
    for line in process.stdout:
        lines.append(line.strip())
        if line.strip() == until:
            break
    return lines


def marks(lines, kind):
    return [line.split()[1:] for line in lines if line.split()[:1] == [kind]]


def test_a_killed_training_run_resumes_from_its_backup(tmp_path):
    backup_root, model_path, pause = tmp_path / "backup", tmp_path / "model.keras", tmp_path / "pause"
    script = tmp_path / "train_child.py"
    script.write_text(CHILD)
    command = [sys.executable, str(script), str(backup_root), str(model_path), str(pause)]

    pause.touch()
    first, watchdog = start(command, tmp_path, "first")
    before = read_lines(first, until="waiting to be killed")
    assert before and before[-1] == "waiting to be killed", (
        f"the first run never reached epoch {KILL_AT[0]}, batch {KILL_AT[1]}:\n" + "\n".join(before[-20:])
        + (tmp_path / "first.stderr").read_text()[-3000:]
    )
    first.send_signal(signal.SIGKILL)
    before += read_lines(first)
    assert first.wait() == -signal.SIGKILL
    watchdog.cancel()

    done_before = [int(epoch) for epoch, _ in marks(before, "end")]
    assert done_before == [0], f"epoch 0 only should have finished before the kill, got {done_before}"
    assert [e for e, in marks(before, "epoch")] == ["0", "1"] and ["1", str(KILL_AT[1])] in marks(before, "batch")
    backup = backup_root / "killed-smoke"  # training.backup_folder: <run_name>-<profile>
    assert backup.is_dir() and sorted(os.listdir(backup)), "the killed run left no backup to resume from"
    assert "model.keras" not in os.listdir(tmp_path), "the killed run must not have saved a final model"

    pause.unlink()
    second, watchdog = start(command, tmp_path, "second")
    after = read_lines(second)
    assert second.wait() == 0, "\n".join(after[-20:]) + (tmp_path / "second.stderr").read_text()[-4000:]
    watchdog.cancel()

    # Resumed where the backup was: epochs 1..3 ran now, each epoch ran exactly once over the two runs.
    ran_after = [int(e) for e, in marks(after, "epoch")]
    assert ran_after == list(range(1, EPOCHS))
    assert sorted(done_before + [int(epoch) for epoch, _ in marks(after, "end")]) == list(range(EPOCHS))
    # ... with the weights and optimizer state of the end of epoch 0, not fresh ones.
    (fresh_sum, fresh_steps), = [(float(s), int(i)) for s, i in marks(before, "begin")]
    (restored_sum, restored_steps), = [(float(s), int(i)) for s, i in marks(after, "begin")]
    epoch0_sum = float(marks(before, "end")[0][1])
    assert fresh_steps == 0 and restored_steps == STEPS, "the optimizer's step count was not restored"
    assert restored_sum == pytest.approx(epoch0_sum, rel=1e-6) and restored_sum != pytest.approx(fresh_sum, rel=1e-6)

    summary, = [json.loads(line.split(" ", 1)[1]) for line in after if line.startswith("result ")]
    assert summary == {"initial_epoch": 1, "epochs": EPOCHS, "history": EPOCHS}  # epoch 0's from the backup
    assert not backup.exists() or not os.listdir(backup), "the backup should be deleted once training finished"

    restored = keras.saving.load_model(model_path)
    x = np.load(f"{model_path}.x.npy")
    logits = keras.ops.convert_to_numpy(restored.predict(x, verbose=0))
    assert logits.shape == (8, 3) and np.all(np.isfinite(logits))
    np.testing.assert_allclose(logits, np.load(f"{model_path}.logits.npy"), rtol=1e-5, atol=1e-5)


# A kill in the middle of writing a backup: the child trains, and at epoch argv[3] its hook writes part of
# the file (the weights, or the state that commits them) and kills the process with SIGKILL right there.
KILL_WHILE_WRITING = textwrap.dedent(
    '''
    import os, signal, sys
    import keras
    import numpy as np
    from course_utils import profiles, training

    backup_root, where, kill_epoch = sys.argv[1], sys.argv[2], int(sys.argv[3])
    epoch = -1

    class Epochs(keras.callbacks.Callback):
        def on_epoch_begin(self, number, logs=None):
            global epoch
            epoch = number

    def killed_midway(path):
        with open(path, "r+b") as file:
            file.truncate(os.path.getsize(path) // 2)  # what a kill halfway through the write leaves
        print("killing", epoch, sorted(os.listdir(os.path.dirname(path))), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    save_weights, replace = keras.Model.save_weights, os.replace

    def save_weights_then_die(self, path, *args, **kwargs):
        save_weights(self, path, *args, **kwargs)
        if where == "weights" and epoch == kill_epoch:
            killed_midway(path)

    def replace_then_die(source, target):
        if where == "state" and epoch == kill_epoch and str(target).endswith("state.json"):
            killed_midway(source)
        replace(source, target)

    keras.Model.save_weights, os.replace = save_weights_then_die, replace_then_die
    keras.utils.set_random_seed(0)
    images = keras.Input((8, 8, 3), dtype="uint8")
    model = keras.Model(images, keras.layers.Dense(3)(keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(images))))
    x = np.random.default_rng(0).integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
    profile = profiles.Profile(name="smoke", epochs=3, batch_size=8, warmup_epochs=1)
    training.train(model, (x, x[:, 0, 0, :1] % 3), None, profile, "killed", backup_root=backup_root,
                   callbacks=[Epochs()], verbose=0)
    print("finished without being killed", flush=True)
    '''
)


@pytest.mark.parametrize("where, kill_epoch", [("weights", 0), ("state", 0), ("weights", 1), ("state", 1)])
def test_a_kill_while_a_backup_is_written_resumes_or_starts_over_cleanly(tmp_path, where, kill_epoch):
    from course_utils import profiles, training

    script = tmp_path / "child.py"
    script.write_text(KILL_WHILE_WRITING)
    child, watchdog = start([sys.executable, str(script), str(tmp_path), where, str(kill_epoch)], tmp_path, "child")
    lines = read_lines(child)
    assert child.wait() == -signal.SIGKILL, "\n".join(lines) + (tmp_path / "child.stderr").read_text()[-3000:]
    watchdog.cancel()
    (left,) = [line for line in lines if line.startswith("killing")]
    assert left.startswith(f"killing {kill_epoch} ")  # the kill came mid-write: a half-written file is on disk

    # The rerun of the same cell, in this process: it resumes from the last committed epoch (none when the
    # first epoch's backup was cut off), runs the rest, returns the whole history and leaves nothing behind.
    keras.utils.set_random_seed(0)
    images = keras.Input((8, 8, 3), dtype="uint8")
    model = keras.Model(images, keras.layers.Dense(3)(keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(images))))
    x = np.random.default_rng(0).integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
    profile = profiles.Profile(name="smoke", epochs=3, batch_size=8, warmup_epochs=1)
    result = training.train(model, (x, x[:, 0, 0, :1] % 3), None, profile, "killed", backup_root=tmp_path, verbose=0)
    assert result.initial_epoch == kill_epoch
    assert len(result.history["loss"]) == 3 and all(np.isfinite(result.history["loss"]))
    assert not (tmp_path / "killed-smoke").exists()
