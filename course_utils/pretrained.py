"""Trained checkpoints that ship with the package, and the one command that makes each of them.

A notebook's own training run lasts a few minutes, too short for maps worth reading. The course therefore
ships, for the model of every notebook and for the baselines the notebooks compare against, a checkpoint of
the same architecture trained far longer on all 40,000 training images::

    from course_utils import describe_pretrained, load_pretrained, pretrained_names, pretrained_info
    pretrained_names()                         # ['patch_convnet', ...]
    model = load_pretrained("patch_convnet")   # uint8 images -> logits, an ordinary keras.Model
    early = load_pretrained("patch_convnet", epoch=5)   # a snapshot from along the run
    pretrained_info("patch_convnet")["test_accuracy"]
    print(describe_pretrained("patch_convnet"))   # how it was trained, its test accuracy

Each checkpoint is a ``.npz`` file of the model's weights (float16 where that costs at most 0.2 points of
test accuracy) in ``course_utils/checkpoints``, next to ``manifest.json``, which records how it was made:
the builder and its arguments, the recipe and the command, the per-epoch history, the wall time, hardware,
backend, Keras version, date and commit, its accuracy on the 10,000 test images, and a SHA-256 of the file.
:func:`load_pretrained` builds the model from the manifest's builder and arguments and assigns the weights
only after checking the checksum and every weight's shape, so a bad file raises a :class:`CheckpointError`
that names the file and the fix, and never returns a half-loaded model.

``python -m course_utils pretrain NAME`` reproduces a checkpoint from its recipe in :data:`RECIPES`, into a
folder of its own (``runs/pretrain/NAME`` unless ``--output`` says otherwise); a killed run resumes when the
same command runs again, and only ``--install`` copies the result over the shipped files.
"""

import dataclasses
import datetime
import hashlib
import importlib
import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import time
import zipfile

import keras
import numpy as np

from course_utils import distribute
from course_utils.profiles import CHECKPOINT_PROFILE, Profile
from course_utils.training import evaluate, profile_data, train

CHECKPOINT_DIR = pathlib.Path(__file__).resolve().parent / "checkpoints"
MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
FLOAT16_TOLERANCE = 0.002
"""Largest loss of test accuracy (a fraction) for which a checkpoint is stored in float16."""


class CheckpointError(RuntimeError):
    """A shipped checkpoint is missing, corrupt, or does not fit the architecture it claims."""


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How one checkpoint is trained.

    Attributes:
        module: the model module, a name in ``course_utils.models.MODEL_MODULES``.
        builder: the module's function that builds the model (``build_model`` or ``build_baseline``).
        notebook: the notebook that uses the checkpoint.
        profile: the training run, a :class:`~course_utils.profiles.Profile` named ``checkpoint`` (its
            ``model`` entry holds the builder's arguments).
        snapshot_epochs: the epochs after which a snapshot is kept; the last is the final checkpoint.
        seed: passed to ``keras.utils.set_random_seed`` before the model is built.
        note: why this configuration.
    """

    module: str
    builder: str
    notebook: str
    profile: Profile
    snapshot_epochs: tuple
    seed: int = 0
    note: str = ""

    def __post_init__(self):
        if self.profile.name != CHECKPOINT_PROFILE:
            raise ValueError(f"A recipe's profile must be named {CHECKPOINT_PROFILE!r}, got {self.profile.name!r}.")
        epochs = tuple(self.snapshot_epochs)
        if list(epochs) != sorted(set(epochs)) or epochs[0] < 1 or epochs[-1] != self.profile.epochs:
            raise ValueError(
                f"snapshot_epochs must increase from at least 1 to the last epoch ({self.profile.epochs}), got {epochs}."
            )

    def build(self):
        """Build the recipe's model, untrained."""
        return _build_from(self.module, self.builder, self.profile.model)


def _build_from(module, builder, arguments):
    """``course_utils.models.<module>.<builder>(**arguments)``: how a manifest entry names its model."""
    return getattr(importlib.import_module(f"course_utils.models.{module}"), builder)(**arguments)


def _checkpoint_profile(epochs, learning_rate, weight_decay, warmup_epochs, model, note, batch_size=128):
    return Profile(
        name=CHECKPOINT_PROFILE,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        warmup_epochs=warmup_epochs,
        model=model,
        note=note,
    )


def _workshop_model(module, **changes):
    """The workshop profile's model arguments of ``module`` (the learner's model), with ``changes``."""
    profiles = importlib.import_module(f"course_utils.models.{module}").PROFILES
    return {**profiles["workshop"].model, **changes}


# Every recipe keeps the architecture of the notebook's workshop model, so the learner's few-minute model
# and the trained one can be drawn side by side; it trains on all 40,000 training images with random
# 32 px crops of 36 px resizes and flips (the models' own preprocessing), AdamW with weight decay 0.05 and
# a warmup-cosine schedule, for about 45 minutes of a 2-core CPU.
RECIPES = {
    "patch_convnet": Recipe(
        module="patch_convnet",
        builder="build_model",
        notebook="03_patch_convnet",
        profile=_checkpoint_profile(
            epochs=120, learning_rate=2e-3, weight_decay=0.05, warmup_epochs=6,
            model=_workshop_model("patch_convnet", resize_to=36),
            note="the workshop PatchConvNet (width 64, 2 trunk blocks, 8x8 map), 120 epochs on 40,000 images",
        ),
        snapshot_epochs=(1, 5, 20, 60, 120),
    ),
    "focal_modulation": Recipe(
        module="focal_modulation",
        builder="build_model",
        notebook="04_focal_modulation",
        profile=_checkpoint_profile(
            epochs=60, learning_rate=2e-3, weight_decay=0.05, warmup_epochs=3,
            model=_workshop_model("focal_modulation", resize_to=36),
            note="the workshop FocalNet (width 64, stages 2+2, focal level 2), 60 epochs on 40,000 images",
        ),
        snapshot_epochs=(1, 3, 15, 30, 60),
    ),
    "token_learner": Recipe(
        module="token_learner",
        builder="build_model",
        notebook="01_token_learner",
        profile=_checkpoint_profile(
            epochs=50, learning_rate=2e-3, weight_decay=0.05, warmup_epochs=5,
            model=_workshop_model("token_learner", resize_to=36),
            note="the workshop ViT + TokenLearner (width 64, 4 blocks, 8 tokens), 50 epochs on 40,000 images",
        ),
        snapshot_epochs=(1, 3, 12, 25, 50),
    ),
    "temporal_latent_bottleneck": Recipe(
        module="temporal_latent_bottleneck",
        builder="build_model",
        notebook="05_temporal_latent_bottleneck",
        profile=_checkpoint_profile(
            epochs=40, learning_rate=2e-3, weight_decay=0.05, warmup_epochs=4,
            model=_workshop_model("temporal_latent_bottleneck", resize_to=36),
            note="the workshop TLB (width 64, 4 chunks of 16 patches, 8 latents, 2 perceptual layers), 40 epochs on "
            "40,000 images",
        ),
        snapshot_epochs=(1, 3, 10, 20, 40),
    ),
}
# Notebook 01's ViT without TokenLearner: the same recipe as its twin, only the builder differs.
RECIPES["token_learner_baseline"] = dataclasses.replace(
    RECIPES["token_learner"],
    builder="build_baseline",
    profile=dataclasses.replace(RECIPES["token_learner"].profile,
                                note="notebook 01's ViT without TokenLearner, trained exactly as its TokenLearner twin"),
)
# Notebook 05's ViT over all 64 patch tokens at once, trained exactly as the TLB it is compared with.
RECIPES["temporal_latent_bottleneck_baseline"] = dataclasses.replace(
    RECIPES["temporal_latent_bottleneck"],
    builder="build_baseline",
    profile=dataclasses.replace(RECIPES["temporal_latent_bottleneck"].profile,
                                note="notebook 05's ViT (no chunks, no slow stream), trained exactly as its TLB twin"),
)


# ----------------------------------------------------------------------------------------------- loading


def manifest(directory=None):
    """The manifest of the checkpoints in ``directory`` (default: the shipped ones) as a dict."""
    path = pathlib.Path(directory or CHECKPOINT_DIR) / MANIFEST_NAME
    if not path.exists():
        return {"format": FORMAT_VERSION, "checkpoints": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CheckpointError(
            f"The checkpoint manifest {path} cannot be read ({error}). Reinstall the package "
            f"(pip install --force-reinstall course_utils, or git checkout {path.name} in a clone)."
        ) from error
    if data.get("format") != FORMAT_VERSION or not isinstance(data.get("checkpoints"), dict):
        raise CheckpointError(f"{path} is not a format-{FORMAT_VERSION} checkpoint manifest. Reinstall the package.")
    return data


def pretrained_names(directory=None):
    """The names of the shipped checkpoints, sorted (each one loads with :func:`load_pretrained`)."""
    return sorted(manifest(directory)["checkpoints"])


def pretrained_info(name, directory=None):
    """The manifest entry of checkpoint ``name``: how it was trained, its history and test accuracy."""
    entries = manifest(directory)["checkpoints"]
    if name not in entries:
        known = ", ".join(sorted(entries)) or "none yet"
        hint = (f" It has a recipe: python -m course_utils pretrain {name} --install trains it."
                if name in RECIPES else "")
        raise CheckpointError(f"No shipped checkpoint named {name!r} (shipped: {known}).{hint}")
    return entries[name]


def describe_pretrained(name, directory=None):
    """Two lines on checkpoint ``name`` for a notebook: how it was trained, and how well it does."""
    entry = pretrained_info(name, directory)
    images = entry["recipe"].get("train_samples") or 40_000
    return (
        f"checkpoint {name!r}: {entry['parameters']:,} parameters, {entry['epochs']} epochs on {images:,} "
        f"training images, {entry['train_seconds'] / 60:.0f} min on {entry['hardware']} ({entry['backend']}, "
        f"{entry['date']})\ntest accuracy {entry['test_accuracy']:.1%} on the {entry['test_images']:,} test "
        f"images; to retrain it: {entry['command'].split(' ', 1)[-1]}"
    )


def result_cell(name, directory=None):
    """Checkpoint ``name`` in one table cell: accuracy, training time, hardware (README's results table)."""
    entry = pretrained_info(name, directory)
    return (f"`{name}`: {entry['test_accuracy']:.1%} test after {entry['epochs']} epochs, "
            f"{entry['train_seconds'] / 60:.0f} min on {entry['hardware']} ({entry['backend']})")


def sha256(path):
    """The SHA-256 of the file at ``path``, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_pretrained(name, epoch=None, directory=None):
    """The shipped checkpoint ``name`` as a ``keras.Model`` that maps uint8 images to logits.

    ``epoch`` picks a snapshot from along the training run (``pretrained_info(name)["snapshots"]`` lists
    them); ``None`` gives the final model. Raises :class:`CheckpointError`, naming the file and what to do,
    when the file is missing, its checksum differs from the manifest's, it cannot be read, or its weights
    do not fit the architecture; in those cases no model is returned.
    """
    directory = pathlib.Path(directory or CHECKPOINT_DIR)
    entry = pretrained_info(name, directory)
    record = _snapshot_record(name, entry, epoch)
    path = directory / record["file"]
    fix = f"Reinstall the package, or retrain it: python -m course_utils pretrain {name} --install."
    if not path.is_file():
        raise CheckpointError(f"The checkpoint file {path} is missing. {fix}")
    if sha256(path) != record["sha256"]:
        raise CheckpointError(f"The checkpoint file {path} is corrupt: its SHA-256 differs from the manifest's. {fix}")
    try:
        arrays = read_weights(path)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise CheckpointError(f"The checkpoint file {path} cannot be read ({error}). {fix}") from error
    model = _build_from(entry["module"], entry["builder"], entry["arguments"])
    assign_weights(model, arrays, path)
    return model


def _snapshot_record(name, entry, epoch):
    if epoch is None or epoch == entry["epochs"]:
        return entry
    for snapshot in entry.get("snapshots", []):
        if snapshot["epoch"] == epoch:
            return snapshot
    epochs = [snapshot["epoch"] for snapshot in entry.get("snapshots", [])]
    raise CheckpointError(f"Checkpoint {name!r} has no snapshot at epoch {epoch}: choose one of {epochs}.")


def weight_arrays(model, dtype="float16"):
    """The model's weights as numpy arrays in ``model.weights`` order, floating ones cast to ``dtype``."""
    arrays = []
    for variable in model.weights:
        value = keras.ops.convert_to_numpy(variable.value)
        arrays.append(value.astype(dtype) if np.issubdtype(value.dtype, np.floating) else value)
    return arrays


def assign_weights(model, arrays, source="the checkpoint"):
    """Assign ``arrays`` (in ``model.weights`` order) to ``model``, checking every one before assigning any."""
    variables = model.weights
    if len(arrays) != len(variables):
        raise CheckpointError(
            f"{source} holds {len(arrays)} weights but model {model.name!r} has {len(variables)}: it was saved "
            "from a different architecture. Rebuild with the manifest's arguments, or retrain the checkpoint."
        )
    for variable, array in zip(variables, arrays):
        if tuple(array.shape) != tuple(variable.shape):
            raise CheckpointError(
                f"{source} does not fit model {model.name!r}: weight {variable.path} has shape "
                f"{tuple(variable.shape)}, the file {tuple(array.shape)}. It was saved from a different "
                "architecture. Rebuild with the manifest's arguments, or retrain the checkpoint."
            )
    for variable, array in zip(variables, arrays):
        variable.assign(array.astype(variable.dtype))


def read_weights(path):
    """The arrays of a file written by :func:`save_weights`, in ``model.weights`` order."""
    with np.load(path, allow_pickle=False) as archive:
        return [archive[key] for key in sorted(archive.files)]  # keys are zero-padded indices


def save_weights(model, path, dtype="float16"):
    """Write ``model``'s weights to ``path`` (``.npz``) and return the file's SHA-256."""
    arrays = weight_arrays(model, dtype)
    width = len(str(len(arrays)))
    with open(path, "wb") as handle:
        np.savez(handle, **{f"w{index:0{width}d}": array for index, array in enumerate(arrays)})
    return sha256(path)


# ---------------------------------------------------------------------------------------------- training


class _RunRecorder(keras.callbacks.Callback):
    """Writes the per-epoch history (metrics, learning rate, seconds) and the snapshots as training goes.

    The history lives in ``history.json`` in the run folder and is rewritten after every epoch, so a
    resumed run (``BackupAndRestore``) keeps the epochs of the run it continues.
    """

    def __init__(self, folder, snapshot_epochs, dtype="float32"):
        super().__init__()
        self.folder = pathlib.Path(folder)
        self.snapshot_epochs = set(snapshot_epochs)
        self.dtype = dtype
        self.history_path = self.folder / "history.json"
        self.history = json.loads(self.history_path.read_text()) if self.history_path.exists() else []
        self.started = None

    def on_epoch_begin(self, epoch, logs=None):
        self.history = [row for row in self.history if row["epoch"] <= epoch]
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1, "seconds": round(time.perf_counter() - self.started, 1)}
        row.update({key: round(float(value), 5) for key, value in (logs or {}).items()})
        optimizer = self.model.optimizer
        row["learning_rate"] = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        self.history.append(row)
        _write_json(self.history_path, self.history)
        if epoch + 1 in self.snapshot_epochs:
            save_weights(self.model, self.folder / _snapshot_file("run", epoch + 1), self.dtype)


def _snapshot_file(name, epoch):
    return f"{name}-epoch{epoch:03d}.npz"


def _write_json(path, data):
    temporary = pathlib.Path(f"{path}.partial")
    temporary.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def _commit():
    """The git commit the package was imported from, with ``+dirty`` for uncommitted changes."""
    root = pathlib.Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        status = subprocess.run(["git", "status", "--porcelain", "--", "course_utils"], cwd=root,
                                capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head.stdout.strip() + ("+dirty" if status.stdout.strip() else "")


def _hardware():
    processor = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            processor = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{distribute.describe_device()}; {processor or platform.machine()}"


def pretrain(name, output=None, epochs=None, install=False, source=None, verbose=2):
    """Train checkpoint ``name`` from its recipe into ``output``; return the manifest entry it wrote.

    ``output`` defaults to ``runs/pretrain/<name>``; a run killed there resumes when called again.
    ``epochs`` shortens the run (for a quick check; snapshots past it are dropped). The final weights go
    to ``output/<name>.npz`` in float16 when that costs at most :data:`FLOAT16_TOLERANCE` of test accuracy
    (float32 otherwise), with ``output/entry.json`` holding the manifest entry. With ``install`` they are
    copied, with the snapshots, into the package's checkpoint folder and its manifest.
    """
    if name not in RECIPES:
        raise ValueError(f"No recipe named {name!r}: choose one of {sorted(RECIPES)}.")
    recipe = RECIPES[name]
    profile = recipe.profile
    if epochs is not None:
        if not isinstance(epochs, int) or not 1 <= epochs <= profile.epochs:
            raise ValueError(f"epochs must be an integer from 1 to {profile.epochs}, got {epochs!r}.")
        profile = dataclasses.replace(profile, epochs=epochs, warmup_epochs=min(profile.warmup_epochs, epochs / 2))
    snapshot_epochs = tuple(epoch for epoch in recipe.snapshot_epochs if epoch < profile.epochs) + (profile.epochs,)
    folder = pathlib.Path(output or os.path.join("runs", "pretrain", name))
    folder.mkdir(parents=True, exist_ok=True)
    command = (" ".join(["python -m course_utils pretrain", name, *sys.argv[3:]]) if sys.argv[1:2] == ["pretrain"]
               else f"course_utils.pretrained.pretrain({name!r}, epochs={epochs!r})")
    command = f"KERAS_BACKEND={keras.backend.backend()} {command}"

    commit = _commit()  # now: the tree may change while a long run trains
    keras.utils.set_random_seed(recipe.seed)
    (x_train, y_train), val, (x_test, y_test) = profile_data(profile, source)
    model = recipe.build()
    recorder = _RunRecorder(folder, snapshot_epochs, dtype="float32")
    started = time.perf_counter()
    train(model, (x_train, y_train), val, profile, run_name=name, backup_root=str(folder / "backup"),
          callbacks=[recorder], verbose=verbose)
    wall_seconds = time.perf_counter() - started

    accuracy32 = evaluate(model, x_test, y_test)
    assign_weights(model, weight_arrays(model, "float16"))
    accuracy16 = evaluate(model, x_test, y_test)
    dtype = "float16" if accuracy32 - accuracy16 <= FLOAT16_TOLERANCE else "float32"
    snapshots = []
    for epoch in snapshot_epochs:
        run_file = folder / _snapshot_file("run", epoch)
        assign_weights(model, read_weights(run_file), run_file)
        if epoch == profile.epochs:
            final_accuracy = accuracy32
            if dtype == "float16":
                assign_weights(model, weight_arrays(model, "float16"))
                final_accuracy = accuracy16
            digest = save_weights(model, folder / f"{name}.npz", dtype)
            continue
        file = _snapshot_file(name, epoch)
        snapshot_digest = save_weights(model, folder / file, dtype)
        assign_weights(model, weight_arrays(model, dtype))
        snapshots.append({"epoch": epoch, "file": file, "sha256": snapshot_digest,
                          "test_accuracy": round(evaluate(model, x_test, y_test), 4)})
    history = json.loads((folder / "history.json").read_text())
    entry = {
        "module": recipe.module,
        "builder": recipe.builder,
        "arguments": dict(profile.model),
        "notebook": recipe.notebook,
        "file": f"{name}.npz",
        "sha256": digest,
        "dtype": dtype,
        "parameters": int(model.count_params()),
        "test_accuracy": round(final_accuracy, 4),
        "test_accuracy_float32": round(accuracy32, 4),
        "test_images": int(len(x_test)),
        "epochs": profile.epochs,
        "recipe": {key: value for key, value in dataclasses.asdict(profile).items() if key not in ("name", "model")},
        "seed": recipe.seed,
        "command": command,
        "train_seconds": round(sum(row["seconds"] for row in history), 1),
        "wall_seconds_last_call": round(wall_seconds, 1),
        "hardware": _hardware(),
        "backend": keras.backend.backend(),
        "keras_version": keras.__version__,
        "python_version": platform.python_version(),
        "date": datetime.date.today().isoformat(),
        "commit": commit,
        "history": history,
        "snapshots": snapshots,
    }
    _write_json(folder / "entry.json", entry)
    if install:
        install_checkpoint(name, folder)
    return entry


def install_checkpoint(name, folder, directory=None):
    """Copy a finished run's files from ``folder`` into the checkpoint folder and record them in its manifest."""
    directory = pathlib.Path(directory or CHECKPOINT_DIR)
    folder = pathlib.Path(folder)
    entry = json.loads((folder / "entry.json").read_text(encoding="utf-8"))
    directory.mkdir(parents=True, exist_ok=True)
    for record in (entry, *entry["snapshots"]):
        if sha256(folder / record["file"]) != record["sha256"]:
            raise CheckpointError(f"{folder / record['file']} changed since the run wrote it; run pretrain again.")
        shutil.copyfile(folder / record["file"], directory / record["file"])
    data = manifest(directory)
    data["checkpoints"][name] = entry
    data["checkpoints"] = dict(sorted(data["checkpoints"].items()))
    _write_json(directory / MANIFEST_NAME, data)
    return directory / entry["file"]
