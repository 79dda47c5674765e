"""Profiles, the learning-rate schedule, the fit helper and result reporting.

Every notebook trains with the same few lines::

    profile = select_profile(token_learner.PROFILES, "workshop")
    result = train(model, (x_train, y_train), (x_val, y_val), profile, run_name="vit")
    test_accuracy = evaluate(model, x_test, y_test, profile)
"""

import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import time

import keras
import numpy as np

from course_utils import distribute
from course_utils.constants import RESULT_MIMETYPE
from course_utils.data import load_cifar10, subset, train_val_split
from course_utils.models.common import require_pixel_values
from course_utils.profiles import Profile


def profile_data(profile, source=None):
    """Load CIFAR-10 and cut it as ``profile`` says: ``(train, validation, test)`` pairs of uint8 arrays.

    The validation set is the last 10,000 training images, as in the reference examples; ``train_samples``,
    ``eval_samples`` and ``test_samples`` then take the first images of each part.
    """
    (x_train, y_train), (x_test, y_test) = load_cifar10(source)
    train, val = train_val_split(x_train, y_train)
    cuts = (profile.train_samples, profile.eval_samples, profile.test_samples)
    return tuple(
        part if size is None else subset(*part, size) for part, size in zip((train, val, (x_test, y_test)), cuts)
    )


def warmup_cosine(learning_rate, total_steps, warmup_steps=0, final_fraction=0.0):
    """Linear warmup from 0 to ``learning_rate``, then cosine decay to ``final_fraction * learning_rate``.

    This is Keras's own ``CosineDecay`` with its built-in warmup; the arguments are just named the way the
    papers describe their schedules.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}.")
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(f"warmup_steps={warmup_steps} must be in [0, total_steps={total_steps}).")
    if warmup_steps == 0:
        return keras.optimizers.schedules.CosineDecay(learning_rate, total_steps, alpha=final_fraction)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        decay_steps=total_steps - warmup_steps,
        alpha=final_fraction,
        warmup_target=learning_rate,
        warmup_steps=warmup_steps,
    )


def steps_per_epoch(num_samples, batch_size):
    return math.ceil(num_samples / batch_size)


def classification_loss():
    """The loss every course model trains with: cross-entropy between integer class labels and logits.

    The models end in a Dense layer without softmax, so the loss applies the softmax itself
    (``from_logits=True``), which is also the numerically stable way to compute it.
    """
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def compile_for_profile(model, profile, num_samples):
    """Compile ``model`` (which outputs logits) with AdamW and the warmup-cosine schedule of ``profile``."""
    per_epoch = steps_per_epoch(num_samples, profile.batch_size)
    total = per_epoch * profile.epochs
    warmup = min(int(profile.warmup_epochs * per_epoch), total - 1)
    schedule = warmup_cosine(profile.learning_rate, total, warmup)
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=schedule, weight_decay=profile.weight_decay),
        loss=classification_loss(),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    return model


@dataclasses.dataclass
class TrainingResult:
    """What ``train`` returns: the per-epoch history and the wall-clock training time.

    Attributes:
        history: metric name -> one value per epoch of the whole run (``epochs`` values): the epochs of an
            earlier, interrupted call come from the backup, so a resumed run has the same history.
        seconds: wall-clock time of this call's ``fit``.
        epochs: the profile's total number of epochs.
        initial_epoch: epochs already done by an earlier, interrupted call (restored from the backup);
            0 for a fresh run.
    """

    history: dict
    seconds: float
    epochs: int
    initial_epoch: int = 0


def backup_folder(run_name, profile, backup_root=None):
    """Where :func:`train` keeps the backup of ``run_name`` on ``profile``: ``backup_root/<run_name>-<profile>``.

    One folder per run *and* profile, so an interrupted smoke run is never restored into a workshop run.
    ``backup_root`` defaults to env ``COURSE_BACKUP_DIR``, else ``./backup``.
    """
    backup_root = backup_root or os.environ.get("COURSE_BACKUP_DIR", "backup")
    return os.path.join(backup_root, f"{run_name}-{profile.name}")


class BackupError(RuntimeError):
    """A training backup cannot be resumed; the message names the folder to delete."""


class Backup(keras.callbacks.Callback):
    """Saves the training state after every epoch and restores it when the same run starts again.

    Each epoch's weights go to a new file; ``state.json`` (epoch, history, the file's SHA-256 and the
    model's weight shapes) is written after it and renamed into place last, so the state on disk is always
    a finished epoch: a kill at any moment leaves the previous epoch (or nothing) to resume from. Files no
    state names (a kill's leftovers) are deleted on start; the folder is deleted when training completes.
    A backup written by ``keras.callbacks.BackupAndRestore`` (what ``train`` used before) is resumed too.
    """

    STATE = "state.json"
    PARTIAL = "partial.weights.h5"  # save_weights insists on the .weights.h5 suffix
    KERAS_FILES = ("latest.weights.h5", "training_metadata.json")  # keras.callbacks.BackupAndRestore's

    def __init__(self, folder):
        super().__init__()
        self.folder = folder
        self.history = {}

    def on_train_begin(self, logs=None):
        state = self._read_state()
        self._remove_leftovers(state["weights"] if state else None)
        if state is None:
            self.model._initial_epoch = None  # a model trained before must not skip epochs now
            return
        if state["shapes"] is not None and state["shapes"] != _weight_shapes(self.model):
            raise self._error("was made by a different model (its weights have other shapes)")
        optimizer = self.model.optimizer
        if optimizer is not None and not optimizer.built:
            optimizer.build(self.model.trainable_variables)  # so that load_weights restores its state too
        try:
            self.model.load_weights(os.path.join(self.folder, state["weights"]))
        except Exception as error:
            raise self._error(f"could not be loaded ({type(error).__name__}: {error})") from error
        self.model._initial_epoch = state["epoch"]  # what keras.callbacks.BackupAndRestore sets, too
        self.history = state["history"]

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            self.history.setdefault(key, [])[epoch:] = [float(value)]
        os.makedirs(self.folder, exist_ok=True)
        partial, weights = os.path.join(self.folder, self.PARTIAL), f"epoch-{epoch + 1}.weights.h5"
        self.model.save_weights(partial, overwrite=True)
        _flush_to_disk(partial)
        os.replace(partial, os.path.join(self.folder, weights))
        state = {"epoch": epoch + 1, "weights": weights, "sha256": _sha256(os.path.join(self.folder, weights)),
                 "shapes": _weight_shapes(self.model), "history": self.history}
        _write_atomically(os.path.join(self.folder, self.STATE), json.dumps(state))
        self._remove_leftovers(weights)

    def on_train_end(self, logs=None):
        shutil.rmtree(self.folder, ignore_errors=True)

    def _read_state(self):
        path = os.path.join(self.folder, self.STATE)
        if not os.path.exists(path):
            return self._read_keras_state()
        try:
            with open(path, encoding="utf-8") as file:
                state = json.load(file)
            weights = os.path.join(self.folder, state["weights"])
            intact = os.path.exists(weights) and _sha256(weights) == state["sha256"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise self._error(f"is unreadable ({type(error).__name__}: {error})") from error
        if not intact:
            raise self._error(f"is damaged: {state['weights']} is missing or does not match its checksum")
        return state

    def _read_keras_state(self):
        weights, metadata = (os.path.join(self.folder, name) for name in self.KERAS_FILES)
        if not (os.path.exists(weights) and os.path.exists(metadata)):
            return None
        try:
            with open(metadata, encoding="utf-8") as file:
                epoch = json.load(file)["epoch"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise self._error(f"is unreadable ({type(error).__name__}: {error})") from error
        return {"epoch": epoch, "weights": self.KERAS_FILES[0], "shapes": None, "history": {}}

    def _remove_leftovers(self, keep):
        """Delete this class's files that no state names: a kill's partial or superseded files."""
        if not os.path.isdir(self.folder):
            return
        for name in os.listdir(self.folder):
            ours = name == self.PARTIAL or name.endswith(".partial") or re.fullmatch(r"epoch-\d+\.weights\.h5", name)
            if ours and name != keep:
                os.remove(os.path.join(self.folder, name))

    def _error(self, problem):
        return BackupError(
            f"The training backup in {self.folder} {problem}, so this run cannot resume from it. Delete that "
            f"folder to start the run over (its finished epochs are lost), or give train() another run_name."
        )


def _weight_shapes(model):
    # Shapes, not names: a model built again in the same kernel gets new layer names (dense_1, dense_2).
    return [list(weight.shape) for weight in model.weights]


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _flush_to_disk(path):
    with open(path, "rb+") as file:
        os.fsync(file.fileno())


def _write_atomically(path, text):
    """Write ``text`` to ``path`` through a temporary file and a rename: readers see the old or the new file."""
    partial = f"{path}.partial"
    with open(partial, "w", encoding="utf-8") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(partial, path)


def train(model, train_data, val_data, profile, run_name, backup_root=None, callbacks=(), verbose="auto"):
    """Compile and fit ``model`` on uint8 arrays according to ``profile``.

    :class:`Backup` keeps a backup (:func:`backup_folder`) after every epoch, so re-running this call after a
    disconnect (a Colab session that dropped, a killed process) resumes from the last finished epoch instead
    of starting over; ``TrainingResult.initial_epoch`` says where it resumed. The backup is deleted when
    training completes. A backup that cannot be resumed (made by another model, damaged) raises
    :class:`BackupError`, which names the folder to delete.

    A model built inside :func:`course_utils.distribute.distribution_scope` is compiled and trained
    data-parallel on the devices it was built on (``profile.batch_size`` is the global batch); on JAX the
    last ``len(images) % devices`` training and validation samples are then dropped, because every batch
    must split evenly.

    Args:
        model: a model that maps uint8 images ``(batch, height, width, 3)`` to logits ``(batch, classes)``.
        train_data, val_data: ``(images, labels)`` tuples of numpy arrays, ``(n, height, width, 3)`` and
            ``(n,)`` or ``(n, 1)``; ``val_data`` may be ``None``.
        profile: a :class:`Profile`.
        run_name: names the backup folder; use one per model in a notebook.
        backup_root: where backups live (default: env ``COURSE_BACKUP_DIR`` or ``./backup``).
        callbacks: extra Keras callbacks (they run after the backup callback).
    """
    if not isinstance(profile, Profile):
        raise TypeError(f"profile must be a Profile (see select_profile), got {type(profile).__name__}.")
    if not isinstance(run_name, str) or not run_name.strip() or os.sep in run_name:
        raise ValueError(f"run_name must be a non-empty folder name (no {os.sep!r}), got {run_name!r}.")
    require_pixel_values(model, train_data[0])  # here too: a model of the learner's own is not an ImageModel
    if val_data is not None:
        require_pixel_values(model, val_data[0])
    plan = distribute.plan_of(model)
    plan.per_device_batch(profile.batch_size)  # raises if the global batch does not split evenly
    (x_train, y_train), dropped = plan.even_split(*train_data)
    if val_data is not None:
        val_data, dropped_val = plan.even_split(*val_data)
        dropped += dropped_val
    if dropped:
        print(f"{plan.describe()}: dropped {dropped} sample(s) so that every batch splits evenly")
    backup = Backup(backup_folder(run_name, profile, backup_root))
    start = time.perf_counter()
    with plan.scope():  # TensorFlow needs compile (optimizer, metrics) in the strategy's scope; JAX needs fit in it
        compile_for_profile(model, profile, len(x_train))
        history = model.fit(
            x_train,
            y_train,
            batch_size=profile.batch_size,
            epochs=profile.epochs,
            validation_data=val_data,
            callbacks=[backup, *callbacks],
            verbose=verbose,
        )
    seconds = time.perf_counter() - start
    # fit starts at the epoch the backup restored; if the backup already held every epoch, none ran.
    initial_epoch = history.epoch[0] if history.epoch else profile.epochs
    return TrainingResult(history={key: list(values) for key, values in backup.history.items()}, seconds=seconds,
                          epochs=profile.epochs, initial_epoch=initial_epoch)


def evaluate(model, images, labels, batch_size=256):
    """Top-1 accuracy of a logits model on uint8 ``images``, as a float in [0, 1]."""
    logits = model.predict(require_pixel_values(model, images), batch_size=batch_size, verbose=0)
    return float(np.mean(np.argmax(logits, axis=-1) == np.asarray(labels).reshape(-1)))


def report(notebook, profile, test_accuracy, train_seconds, parameters, **extra):
    """Publish a notebook's headline numbers so the course runner can put them in its summary table.

    Displays a small table and attaches the same numbers as a machine-readable output
    (mimetype ``application/vnd.course-utils.result+json``) that the runner reads back.
    """
    record = {
        "notebook": notebook,
        "profile": profile.name if isinstance(profile, Profile) else str(profile),
        "backend": keras.backend.backend(),
        "device": distribute.describe_device(),
        "test_accuracy": round(float(test_accuracy), 4),
        "train_seconds": round(float(train_seconds), 1),
        "parameters": int(parameters),
        **extra,
    }
    text = "\n".join(f"{key:15s} {value}" for key, value in record.items())
    try:
        from IPython.display import display

        display({RESULT_MIMETYPE: record, "text/plain": text}, raw=True)
    except ImportError:
        print(text)
    return record
