"""Run the course's notebooks with papermill and summarise what each one measured.

``python -m course_utils run [--profile P] [--backend B] [notebooks ...]`` executes each notebook into a
fresh run folder (the committed notebooks are never touched), prints a progress line per notebook, and
prints and saves a summary table: notebook, profile, backend, device, test accuracy, training time,
parameter count, status. ``--backend all`` runs every notebook on TensorFlow, JAX and PyTorch in turn
(one sub-folder per backend, one table). A failing notebook is reported with the cell that failed, and
the others still run; the exit status is non-zero if any failed.

``python -m course_utils pretrain NAME [--output DIR] [--epochs N] [--install]`` trains a shipped checkpoint
from its recipe (see :mod:`course_utils.pretrained`).
"""

import argparse
import contextlib
import datetime
import glob
import itertools
import json
import os
import pathlib
import sys
import time

from course_utils.constants import RESULT_MIMETYPE
from course_utils.profiles import PROFILE_NAMES

BACKENDS = ("tensorflow", "jax", "torch")
ALL_BACKENDS = "all"
COLUMNS = (
    ("notebook", "notebook"),
    ("profile", "profile"),
    ("backend", "backend"),
    ("device", "device"),
    ("test_accuracy", "test accuracy"),
    ("train_seconds", "training time"),
    ("parameters", "parameters"),
    ("wall_seconds", "wall time"),
    ("status", "status"),
)


def find_notebooks(paths):
    """Expand the command line's notebook arguments (files, folders, globs) into a sorted list."""
    if not paths:
        paths = ["notebooks"]
    found = []
    for path in paths:
        if os.path.isdir(path):
            found.extend(sorted(glob.glob(os.path.join(path, "[0-9]*.ipynb"))))
        elif any(char in path for char in "*?["):
            found.extend(sorted(glob.glob(path)))
        elif os.path.isfile(path):
            found.append(path)
        else:
            raise FileNotFoundError(
                f"No notebook at {path!r}. Run from the course's folder (where notebooks/ is) or pass notebook paths."
            )
    if not found:
        raise FileNotFoundError(f"No notebooks found in {paths}.")
    return found


def read_results(notebook_path):
    """The records a notebook published with ``course_utils.report`` (a list, possibly empty)."""
    with open(notebook_path, encoding="utf-8") as handle:
        notebook = json.load(handle)
    records = []
    for cell in notebook.get("cells", []):
        for output in cell.get("outputs", []):
            record = output.get("data", {}).get(RESULT_MIMETYPE)
            if record:
                records.append(record)
    return records


def describe_failure(error):
    """One line naming the failed cell and the exception, from a papermill error or any other."""
    cell = getattr(error, "exec_count", None) or getattr(error, "cell_index", None)
    name = getattr(error, "ename", type(error).__name__)
    value = str(getattr(error, "evalue", error)).strip().splitlines()
    where = f"cell In [{cell}]: " if cell is not None else ""
    return f"failed at {where}{name}: {value[0] if value else ''}"[:200]


@contextlib.contextmanager
def _environment(**values):
    """Set environment variables for the kernels started inside the block, then restore the old ones."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# Paths the notebooks read from the environment: a relative one is meant from where the runner was started,
# but each kernel runs in its run folder, so they are made absolute first.
PATH_VARIABLES = ("COURSE_CIFAR10", "COURSE_CACHE_DIR", "COURSE_BACKUP_DIR")


def run_notebook(notebook, output_path, profile, backend, timeout=None, backup_dir=None):
    """Execute one notebook with papermill; return a summary row (a dict).

    ``backup_dir`` (default: ``backup`` next to the executed notebook) holds ``train``'s backups; the same
    folder on the next run lets a killed run resume.
    """
    paths = {name: os.path.abspath(os.environ[name]) for name in PATH_VARIABLES if os.environ.get(name)}
    settings = {
        "KERAS_BACKEND": backend,
        # No widget frontend: explorers draw static figures, and papermill stores no widget state.
        "COURSE_UTILS_STATIC": "1",
        # Keep TensorFlow's C++ start-up log out of the outputs.
        "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
        **paths,
        # One folder per backend and notebook, so runs on different backends never restore each other's.
        "COURSE_BACKUP_DIR": paths.get("COURSE_BACKUP_DIR", str(backup_dir or output_path.parent / "backup")),
    }
    with _environment(**settings):
        return _execute(notebook, output_path, profile, backend, timeout)


def _execute(notebook, output_path, profile, backend, timeout):
    import papermill

    start = time.perf_counter()
    row = {"notebook": pathlib.Path(notebook).stem, "profile": profile, "backend": backend}
    try:
        papermill.execute_notebook(
            str(notebook),
            str(output_path),
            parameters={"profile": profile},
            cwd=str(output_path.parent),
            progress_bar=False,
            execution_timeout=timeout,
        )
        row["status"] = "ok"
    except Exception as error:  # a failing notebook must not stop the others
        row["status"] = describe_failure(error)
    row["wall_seconds"] = round(time.perf_counter() - start, 1)
    if output_path.exists():
        results = read_results(output_path)
        if results:
            row.update({key: value for key, value in results[-1].items() if key in dict(COLUMNS)})
            row["notebook"] = pathlib.Path(notebook).stem
    return row


def format_cell(key, value):
    if value is None:
        return "-"
    if key == "test_accuracy":
        return f"{100 * value:.1f}%"
    if key in ("train_seconds", "wall_seconds"):
        return f"{value:.1f} s" if value < 10 else f"{value:.0f} s"  # "0 s" would hide a short smoke run
    if key == "parameters":
        return f"{value:,}"
    return str(value)


def summary_table(rows):
    """A Markdown table of the rows."""
    header = "| " + " | ".join(title for _, title in COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in COLUMNS) + "|"
    lines = [header, rule]
    for row in rows:
        lines.append("| " + " | ".join(format_cell(key, row.get(key)) for key, _ in COLUMNS) + " |")
    return "\n".join(lines)


def run(notebooks, profile="workshop", backend=None, output_root="runs", timeout=None):
    """Run ``notebooks`` and return ``(rows, run_folder)``.

    ``backend`` is one of ``BACKENDS``, ``"all"`` (each backend in turn, executed notebooks in one
    sub-folder per backend), or None for ``$KERAS_BACKEND`` (default TensorFlow).
    """
    if profile not in PROFILE_NAMES:
        raise ValueError(f"Unknown profile {profile!r}: choose one of {PROFILE_NAMES}.")
    backend = backend or os.environ.get("KERAS_BACKEND", "tensorflow")
    if backend not in (*BACKENDS, ALL_BACKENDS):
        raise ValueError(f"Unknown backend {backend!r}: choose one of {BACKENDS} or {ALL_BACKENDS!r}.")
    notebooks = find_notebooks(notebooks)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    for number in itertools.count(1):  # two runs started within one second get their own folders
        folder = pathlib.Path(output_root) / f"{stamp}{'' if number == 1 else f'-{number}'}-{profile}-{backend}"
        try:
            folder.mkdir(parents=True)
            break
        except FileExistsError:
            continue
        except OSError as error:
            raise ValueError(
                f"Cannot create the run folder {folder} ({type(error).__name__}: {error}). Pass --output a "
                f"folder you can write to (it is created if missing; a file of that name is in the way)."
            ) from error
    # Outside the timestamped run folder, so a killed run resumes from its backups on the next run.
    backups = pathlib.Path(output_root).resolve() / "backup"
    backends = BACKENDS if backend == ALL_BACKENDS else (backend,)
    print(f"Running {len(notebooks)} notebook(s), profile {profile}, backend {backend}, into {folder}", flush=True)
    rows = []
    jobs = [(name, notebook) for name in backends for notebook in notebooks]
    for number, (name, notebook) in enumerate(jobs, start=1):
        target = folder / name if backend == ALL_BACKENDS else folder
        target.mkdir(exist_ok=True)
        label = f"{pathlib.Path(notebook).name}" + (f" on {name}" if backend == ALL_BACKENDS else "")
        print(f"[{number}/{len(jobs)}] {label} ...", end=" ", flush=True)
        row = run_notebook(notebook, target / pathlib.Path(notebook).name, profile, name, timeout,
                           backup_dir=backups / name / pathlib.Path(notebook).stem)
        rows.append(row)
        accuracy = "" if row.get("test_accuracy") is None else f", test accuracy {100 * row['test_accuracy']:.1f}%"
        print(f"{row['status']} ({row['wall_seconds']:.0f} s{accuracy})", flush=True)
    table = summary_table(rows)
    (folder / "summary.md").write_text(table + "\n", encoding="utf-8")
    (folder / "summary.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    print()
    print(table)
    print(f"\nSaved {folder / 'summary.md'} and the executed notebooks in {folder}.")
    return rows, folder


def pretrain(args):
    """``python -m course_utils pretrain NAME``: train, report the test accuracy, and say where the files are."""
    from course_utils import pretrained  # imports Keras, which `run` must not do

    try:
        entry = pretrained.pretrain(args.name, output=args.output, epochs=args.epochs, install=args.install)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    where = "installed in " + str(pretrained.CHECKPOINT_DIR) if args.install else "not installed (pass --install)"
    print(f"{args.name}: test accuracy {100 * entry['test_accuracy']:.2f}% after {entry['epochs']} epochs, "
          f"{entry['train_seconds']:.0f} s of training; {where}")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m course_utils", description="Tools for the vision course.")
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="execute notebooks with papermill and summarise the results")
    run_parser.add_argument("notebooks", nargs="*", help="notebooks or folders (default: notebooks/)")
    run_parser.add_argument("--profile", default="workshop", choices=PROFILE_NAMES)
    run_parser.add_argument("--backend", default=None, choices=(*BACKENDS, ALL_BACKENDS),
                            help="default: $KERAS_BACKEND or tensorflow; 'all' runs each backend in turn")
    run_parser.add_argument("--output", default="runs", help="folder that receives one run folder per run")
    run_parser.add_argument("--timeout", type=int, default=None, help="seconds allowed per cell")
    pretrain_parser = commands.add_parser("pretrain", help="train a shipped checkpoint from its recipe")
    pretrain_parser.add_argument("name", help="a recipe of course_utils.pretrained.RECIPES")
    pretrain_parser.add_argument("--output", default=None,
                                 help="the run's folder (default runs/pretrain/NAME; a killed run there resumes)")
    pretrain_parser.add_argument("--epochs", type=int, default=None, help="stop early, for a quick check")
    pretrain_parser.add_argument("--install", action="store_true",
                                 help="copy the result over the shipped checkpoint and update the manifest")
    args = parser.parse_args(argv)
    if args.command == "pretrain":
        return pretrain(args)
    try:
        rows, _ = run(args.notebooks, args.profile, args.backend, args.output, args.timeout)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0 if all(row["status"] == "ok" for row in rows) else 1
