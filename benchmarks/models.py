"""Size, cost, compile time, throughput and peak memory of the course's five models, in one table.

For every model of ``course_utils.models.MODEL_MODULES``, built through the model-module protocol
(``module.build_model(**module.PROFILES[profile].model)``, the notebook's model) and compiled the way the
notebooks compile it (``compile_for_profile``), on the current Keras backend and device, one row:

- parameters: ``model.count_params()``;
- FLOPs per image: one forward pass in inference mode, from XLA's cost analysis
  (``course_utils.count_flops``; a multiply-add counts as two operations);
- first step: seconds from calling ``fit`` to the end of its first step, i.e. tracing, compilation and
  one training step;
- training images/s: steady state of that same ``fit``, leaving out its first step;
- inference images/s: steady state of ``predict``, leaving out its first batch (which compiles);
- peak memory: the accelerator's peak where the backend reports one (GPU), otherwise the peak resident
  set size of the process that ran the model (CPU), which includes the framework itself.

Each model runs in a subprocess of its own (this script, with an internal flag), so that peak memory is
per model and a model that fails is reported in its row while the others still run; the exit status is
1 if any failed. Images and labels are random (no dataset needed).

Usage::

    python benchmarks/models.py                                    # workshop profile, all five models
    python benchmarks/models.py --profile smoke --steps 3
    python benchmarks/models.py --models cait focal_modulation --steps 10 --no-flops
    KERAS_BACKEND=jax python benchmarks/models.py --profile full --batch-size 64
    python benchmarks/models.py --dtype-policy mixed_bfloat16 --no-flops  # bfloat16 matrix products

Prints a Markdown table and writes it, with the device, backend, Keras version, date and command line,
to ``<output>/<date>-<profile>-<backend>.md`` and ``.json`` (default output: ``benchmarks/results``).
On a shared machine the numbers move with the load of other processes; compare rows of one run.
"""

import argparse
import dataclasses
import datetime
import importlib
import json
import os
import pathlib
import re
import resource
import shlex
import subprocess
import sys
import tempfile
import time
import traceback

REPOSITORY = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))

# Light imports only: the parent process never loads a backend, so that it holds no accelerator memory
# (JAX and TensorFlow reserve most of a GPU as soon as they list its devices).
from course_utils.models import MODEL_MODULES  # noqa: E402
from course_utils.profiles import PROFILE_NAMES  # noqa: E402

# Images per epoch for the learning-rate schedule when a profile trains on all 40,000 training images.
FULL_TRAINING_SET = 40_000
MEBIBYTE = 2**20
NUMBER_COLUMNS = (
    ("parameters", "parameters"),
    ("mflops_per_image", "MFLOPs/image"),
    ("batch_size", "batch"),
    ("first_step_seconds", "first step (s)"),
    ("train_images_per_second", "train images/s"),
    ("predict_images_per_second", "predict images/s"),
    ("peak_memory_mib", "{memory} (MiB)"),
)


# --------------------------------------------------------------------------------------------
# Child: one model, measured in this process
# --------------------------------------------------------------------------------------------
def build_model(module, profile):
    """``module.build_model(**profile.model)`` (the protocol's builder), and a readable description of the call."""
    arguments = ", ".join(f"{key}={value!r}" for key, value in profile.model.items())
    return module.build_model(**profile.model), f"{module.__name__.rsplit('.', 1)[-1]}.build_model({arguments})"


def random_batches(model, batch_size, batches, seed):
    """Random uint8 images of the model's input size and integer labels, ``batches`` batches' worth."""
    import numpy as np

    rng = np.random.default_rng(seed)
    height, width, channels = model.input_shape[1:]
    count = batch_size * batches
    images = rng.integers(0, 256, size=(count, height, width, channels), dtype=np.uint8)
    labels = rng.integers(0, model.output_shape[-1], size=(count, 1)).astype("int32")
    return images, labels


def batch_end_times(kind):
    """A callback that records when each ``kind`` ("train" or "predict") batch ends."""
    import keras

    class BatchEndTimes(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.ends = []

        def on_train_batch_end(self, batch, logs=None):
            if kind == "train":  # the logs were turned into Python floats, so the step has finished
                self.ends.append(time.perf_counter())

        def on_predict_batch_end(self, batch, logs=None):
            if kind == "predict":  # predictions may still be computing (JAX, GPUs): wait for them
                keras.tree.map_structure(keras.ops.convert_to_numpy, logs["outputs"])
                self.ends.append(time.perf_counter())

    return BatchEndTimes()


def steady_images_per_second(ends, batch_size):
    """Images/s from batch end times, leaving out the first batch (tracing and compilation)."""
    if len(ends) < 2:
        raise ValueError("Need at least two batches (the first is left out): raise --steps.")
    return batch_size * (len(ends) - 1) / (ends[-1] - ends[0])


def time_training(model, images, labels, batch_size):
    """Fit once over the data: ``(seconds to the end of the first step, steady-state images/s)``."""
    timer = batch_end_times("train")
    start = time.perf_counter()
    model.fit(images, labels, batch_size=batch_size, epochs=1, shuffle=False, callbacks=[timer], verbose=0)
    return timer.ends[0] - start, steady_images_per_second(timer.ends, batch_size)


def time_inference(model, images, batch_size):
    """Predict once over the images: ``(seconds of the first batch, steady-state images/s)``."""
    timer = batch_end_times("predict")
    start = time.perf_counter()
    model.predict(images, batch_size=batch_size, callbacks=[timer], verbose=0)
    return timer.ends[0] - start, steady_images_per_second(timer.ends, batch_size)


def peak_rss_bytes():
    """Peak resident set size of this process so far."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes, Linux KiB


def peak_memory():
    """``(bytes, what was measured, where it comes from)``: the accelerator's peak if any, else peak RSS."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        stats = device.memory_stats() if device.platform != "cpu" else None
        if stats and "peak_bytes_in_use" in stats:
            return stats["peak_bytes_in_use"], "peak GPU memory", "jax memory_stats()['peak_bytes_in_use']"
    elif backend == "torch":
        import torch

        if torch.cuda.is_available():
            return torch.cuda.max_memory_allocated(), "peak GPU memory", "torch.cuda.max_memory_allocated()"
    elif backend == "tensorflow":
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            peak = tf.config.experimental.get_memory_info("GPU:0")["peak"]
            return peak, "peak GPU memory", "tf.config.experimental.get_memory_info('GPU:0')['peak']"
    return peak_rss_bytes(), "peak process RSS", "resource.getrusage(RUSAGE_SELF).ru_maxrss"


def environment():
    """Backend, Keras version and device, as seen by a process that computes with them."""
    import keras

    from course_utils.distribute import describe_device

    return {"backend": keras.backend.backend(), "keras_version": keras.__version__, "device": describe_device()}


def measure_model(name, profile_name, batch_size, steps, with_flops, seed, dtype_policy="float32"):
    """Build, compile and time one model; return its row as a dict."""
    import keras

    # e.g. mixed_bfloat16: bfloat16 matrix products with float32 weights (for CPUs with AVX512_BF16)
    keras.mixed_precision.set_global_policy(dtype_policy)

    from course_utils import count_flops
    from course_utils.training import compile_for_profile

    row = {"model": name, "environment": environment(), "baseline_rss_bytes": peak_rss_bytes()}
    keras.utils.set_random_seed(seed)
    module = importlib.import_module(f"course_utils.models.{name}")  # the protocol: PROFILES and build_model
    profile = module.PROFILES[profile_name]
    profile = dataclasses.replace(profile, batch_size=batch_size or profile.batch_size)
    model, row["builder"] = build_model(module, profile)
    row["parameters"] = model.count_params()
    row["compute_dtype"] = model.layers[-1].compute_dtype  # the classifier's: what the policy made of it
    # FLOPs before compiling: they do not depend on the weights, and on TensorFlow/PyTorch the model is
    # saved for a JAX subprocess, which is simpler without an optimizer attached.
    row["flops_per_image"] = count_flops(model) if with_flops else None
    # The schedule only changes learning-rate values, not the cost of a step; use the course's anyway.
    compile_for_profile(model, profile, profile.train_samples or FULL_TRAINING_SET)
    # Keras picks XLA ("auto") only if every layer supports it; this explains much of the first step.
    row["jit_compile"] = bool(model.jit_compile)
    images, labels = random_batches(model, profile.batch_size, steps + 1, seed)
    row["batch_size"] = profile.batch_size
    row["first_step_seconds"], row["train_images_per_second"] = time_training(model, images, labels, profile.batch_size)
    row["predict_first_batch_seconds"], row["predict_images_per_second"] = time_inference(
        model, images, profile.batch_size
    )
    row["peak_memory_bytes"], row["memory_kind"], row["memory_source"] = peak_memory()
    row["status"] = "ok"
    return row


def run_child(args):
    """Measure ``args.child`` and write its row to ``args.child_output``; failures are written too."""
    try:
        row = measure_model(args.child, args.profile, args.batch_size, args.steps, not args.no_flops, args.seed,
                            args.dtype_policy)
    except Exception as error:  # noqa: BLE001 -- any failure belongs in the table, not in a crash
        traceback.print_exc()
        row = {"model": args.child, "status": f"failed: {type(error).__name__}: {compact(str(error))}",
               "error": traceback.format_exc()}
    pathlib.Path(args.child_output).write_text(json.dumps(row, indent=2), encoding="utf-8")
    return 0 if row["status"] == "ok" else 1


# --------------------------------------------------------------------------------------------
# Parent: one subprocess per model, then the table
# --------------------------------------------------------------------------------------------
def shorten(text, limit=200):
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)  # Keras puts terminal colour codes in its error messages
    return text if len(text) <= limit else text[: limit - 3] + "..."


def compact(message):
    """An error message on one line: Keras's often start with a generic line and say why on the next."""
    return shorten(" ".join(line.strip() for line in message.splitlines() if line.strip()))


def last_line(output):
    """The last non-empty line of a process's output, where a Python traceback names the error."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return shorten(lines[-1] if lines else "no output")


def child_command(name, args, result_path):
    command = [sys.executable, str(pathlib.Path(__file__).resolve()), "--child", name, "--child-output",
               str(result_path), "--profile", args.profile, "--steps", str(args.steps), "--seed", str(args.seed),
               "--dtype-policy", args.dtype_policy]
    if args.batch_size:
        command += ["--batch-size", str(args.batch_size)]
    if args.no_flops:
        command.append("--no-flops")
    return command


def run_in_subprocess(name, args):
    """Measure model ``name`` in a fresh Python process and return its row."""
    # Quieter logs from TensorFlow's C++ side; the child's output is only shown when it fails.
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        result_path = pathlib.Path(folder) / "row.json"
        completed = subprocess.run(child_command(name, args, result_path), env=env, capture_output=True, text=True)
        if result_path.exists():
            row = json.loads(result_path.read_text(encoding="utf-8"))
        else:  # killed (out of memory?) or crashed before it could write its row
            how = f"killed by signal {-completed.returncode}" if completed.returncode < 0 else (
                f"exited with status {completed.returncode}")
            row = {"model": name, "status": f"failed: process {how}: {last_line(completed.stderr)}",
                   "error": completed.stderr[-4000:]}
    row["wall_seconds"] = round(time.perf_counter() - start, 1)
    return row


def load_average():
    """The 1-minute load average (None where the OS has none): other processes slow the timings down."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def with_display_units(row):
    """Add the derived columns of the table (MFLOPs, MiB) to a measured row."""
    row = dict(row)
    if row.get("flops_per_image") is not None:
        row["mflops_per_image"] = row["flops_per_image"] / 1e6
    if row.get("peak_memory_bytes") is not None:
        row["peak_memory_mib"] = row["peak_memory_bytes"] / MEBIBYTE
    return row


def format_number(key, value):
    """Integers with thousands separators; measurements with about three significant digits."""
    if value is None:
        return "-"
    if key in ("parameters", "batch_size"):
        return f"{value:,}"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if value >= 0.001 else f"{value:.1e}"


def memory_title(rows):
    """What the memory column measured: the same on every row of a run, unless a row fell back to RSS."""
    kinds = {row["memory_kind"] for row in rows if row.get("memory_kind")}
    return kinds.pop() if len(kinds) == 1 else "peak memory"


def markdown_table(rows):
    """One Markdown row per model: the numbers, then ``ok`` or why it failed."""
    memory = memory_title(rows)
    titles = ["model"] + [title.format(memory=memory) for _, title in NUMBER_COLUMNS] + ["status"]
    lines = ["| " + " | ".join(titles) + " |", "|---|" + "---:|" * len(NUMBER_COLUMNS) + "---|"]
    for row in map(with_display_units, rows):
        cells = [row["model"]] + [format_number(key, row.get(key)) for key, _ in NUMBER_COLUMNS]
        status = row["status"].replace("|", "/")  # a pipe would split the cell
        lines.append("| " + " | ".join(cells + [status]) + " |")
    return "\n".join(lines)


def run_environment(rows):
    """Backend, Keras version and device reported by the first child that got that far."""
    for row in rows:
        if "environment" in row:
            return row["environment"]
    # No child started Keras: ask here (listing no devices, so nothing is allocated on an accelerator).
    import keras

    return {"backend": keras.backend.backend(), "keras_version": keras.__version__, "device": "unknown (no model ran)"}


def per_model(rows, describe):
    """``describe(row)`` once if it is the same for every measured row, else per model."""
    values = {row["model"]: describe(row) for row in rows if row["status"] == "ok"}
    if len(set(values.values())) == 1:
        return f"{next(iter(values.values()))} (all models)"
    return ", ".join(f"{model}: {value}" for model, value in values.items()) or "-"


def baseline_rss(rows):
    """The range of the children's RSS before their model existed: what the framework alone takes."""
    values = [row["baseline_rss_bytes"] / MEBIBYTE for row in rows if "baseline_rss_bytes" in row]
    if not values:
        return "-"
    low, high = min(values), max(values)
    return f"{low:,.0f} MiB" if round(low) == round(high) else f"{low:,.0f}-{high:,.0f} MiB"


def markdown_report(record):
    """The ``.md`` file: what was run, where, and the table."""
    load, rows = record["load_average"], record["rows"]
    return "\n".join([
        f"# Model benchmark: profile {record['profile']}, {record['backend']} backend",
        "",
        f"- date: {record['date']}",
        f"- command: `{record['command']}`",
        f"- backend: {record['backend']} (Keras {record['keras_version']}), dtype policy {record['dtype_policy']}",
        f"- device: {record['device']}",
        f"- timed steps: {record['steps']} per measurement, after one left out (tracing and compilation)",
        f"- memory: {record['memory']}",
        f"- XLA compilation (`jit_compile` as Keras resolved it): "
        f"{per_model(rows, lambda row: 'yes' if row['jit_compile'] else 'no')}",
        f"- process RSS before building the model (framework and imports): {baseline_rss(rows)}",
        f"- machine load (1-minute load average, start / end): {load['start']} / {load['end']}",
        "",
        record["table"],
        "",
    ])


def save(record, output):
    """Write ``<output>/<date>-<profile>-<backend>.md`` and ``.json``; return both paths."""
    folder = pathlib.Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    policy = "" if record["dtype_policy"] == "float32" else f"-{record['dtype_policy']}"
    stem = folder / f"{record['date']}-{record['profile']}-{record['backend']}{policy}"
    markdown_path, json_path = stem.with_suffix(".md"), stem.with_suffix(".json")
    markdown_path.write_text(markdown_report(record), encoding="utf-8")
    json_path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return markdown_path, json_path


def run_all(args, argv):
    """Measure every requested model in turn, print the table and save it."""
    rows = []
    load_at_start = load_average()
    print(f"Benchmarking {len(args.models)} model(s), profile {args.profile}, {args.steps} timed steps each",
          flush=True)
    for number, name in enumerate(args.models, start=1):
        print(f"[{number}/{len(args.models)}] {name} ...", end=" ", flush=True)
        rows.append(run_in_subprocess(name, args))
        print(f"{rows[-1]['status']} ({rows[-1]['wall_seconds']:.0f} s)", flush=True)

    sources = sorted({f"{row['memory_kind']} ({row['memory_source']})" for row in rows if row.get("memory_kind")})
    record = {
        "date": datetime.date.today().isoformat(),
        "command": shlex.join(["python", "benchmarks/models.py", *argv]),
        "profile": args.profile,
        **run_environment(rows),
        "steps": args.steps,
        "dtype_policy": args.dtype_policy,
        "load_average": {"start": load_at_start, "end": load_average()},
        "memory": "; ".join(sources) or "-",
        "table": markdown_table(rows),
        "rows": rows,
    }
    markdown_path, json_path = save(record, args.output)
    print(f"\nbackend {record['backend']} (Keras {record['keras_version']}) on {record['device']}; "
          f"1-minute load average {load_at_start} at the start, {record['load_average']['end']} at the end\n")
    print(record["table"])
    print(f"\nSaved {markdown_path} and {json_path}")
    return 0 if all(row["status"] == "ok" for row in rows) else 1


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=PROFILE_NAMES, default="workshop",
                        help="which PROFILES entry gives each model's configuration and batch size (default workshop)")
    parser.add_argument("--models", nargs="+", choices=MODEL_MODULES, default=list(MODEL_MODULES), metavar="MODEL",
                        help=f"models to measure, in this order (default: all of {', '.join(MODEL_MODULES)})")
    parser.add_argument("--batch-size", type=positive_int, default=None,
                        help="images per step for every model (default: each profile's own batch size)")
    parser.add_argument("--steps", type=positive_int, default=5,
                        help="timed steps per measurement; one more is run first and left out (default 5)")
    parser.add_argument("--no-flops", action="store_true",
                        help="skip counting FLOPs (it needs JAX, and takes a few seconds per model off JAX)")
    parser.add_argument("--output", default=str(REPOSITORY / "benchmarks" / "results"),
                        help="folder for the .md and .json files (default: benchmarks/results)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype-policy", default="float32", choices=("float32", "mixed_bfloat16", "mixed_float16"),
                        help="Keras dtype policy of the models (default float32)")
    # Internal: measure one model in this process and write its row to a file (used by the parent).
    parser.add_argument("--child", choices=MODEL_MODULES, help=argparse.SUPPRESS)
    parser.add_argument("--child-output", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child and not args.child_output:
        parser.error("--child needs --child-output")
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    return run_child(args) if args.child else run_all(args, argv)


if __name__ == "__main__":
    sys.exit(main())
