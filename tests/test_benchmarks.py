"""``benchmarks/models.py`` as a user runs it: the smoke profile on two fast models, and its usage errors.

Only the shape of the output is checked (a row per model, a positive number in every column, files that
parse), never the timings: the machine is shared. The other three models are measured by the runs quoted
in docs/benchmarks.md; running all five here would take minutes (the TLB alone compiles for ~40 s on a
2-core CPU).
"""

import importlib
import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest

from course_utils.models import MODEL_MODULES

REPOSITORY = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = REPOSITORY / "benchmarks" / "models.py"
FAST_MODELS = ("patch_convnet", "token_learner")


def load_script():
    spec = importlib.util.spec_from_file_location("benchmark_models", SCRIPT)
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)  # light: the script loads Keras only in its per-model subprocesses
    return benchmark


def run_benchmark(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)


def table_rows(markdown):
    """The cells of a Markdown table's body rows (after the header and the rule)."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def as_number(cell):
    return float(cell.replace(",", ""))


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    output = tmp_path_factory.mktemp("benchmarks")
    completed = run_benchmark("--profile", "smoke", "--models", *FAST_MODELS, "--steps", "1", "--batch-size", "16",
                              "--output", str(output))
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return completed, output


def test_table_has_a_row_per_model_with_positive_numbers(smoke_run):
    completed, _ = smoke_run
    rows = table_rows(completed.stdout)
    assert [row[0] for row in rows] == list(FAST_MODELS)
    for row in rows:
        numbers = [as_number(cell) for cell in row[1:-1]]
        assert len(numbers) == 7 and all(number > 0 for number in numbers), row
        assert row[-1] == "ok"
    assert "peak process RSS (MiB)" in completed.stdout or "peak GPU memory (MiB)" in completed.stdout


def test_markdown_and_json_files_are_written_and_parse(smoke_run):
    completed, output = smoke_run
    (markdown_path,) = output.glob("*-smoke-*.md")
    (json_path,) = output.glob("*-smoke-*.json")
    assert f"Saved {markdown_path} and {json_path}" in completed.stdout
    record = json.loads(json_path.read_text())
    assert markdown_path.stem == f"{record['date']}-smoke-{record['backend']}"
    assert record["profile"] == "smoke" and record["device"] and record["keras_version"]
    assert "--models patch_convnet token_learner" in record["command"]
    assert [row["model"] for row in record["rows"]] == list(FAST_MODELS)
    assert all(row["flops_per_image"] > 0 and row["batch_size"] == 16 for row in record["rows"])
    markdown = markdown_path.read_text()
    assert record["table"] in markdown and record["device"] in markdown
    assert table_rows(record["table"]) == table_rows(completed.stdout)


def test_a_dtype_policy_is_applied_and_recorded(tmp_path):
    completed = run_benchmark("--profile", "smoke", "--models", "patch_convnet", "--steps", "1", "--batch-size", "8",
                              "--no-flops", "--dtype-policy", "mixed_bfloat16", "--output", str(tmp_path))
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    (json_path,) = tmp_path.glob("*-smoke-*-mixed_bfloat16.json")
    record = json.loads(json_path.read_text())
    assert record["dtype_policy"] == "mixed_bfloat16" and record["rows"][0]["status"] == "ok"
    assert record["rows"][0]["compute_dtype"] == "bfloat16"
    assert "dtype policy mixed_bfloat16" in json_path.with_suffix(".md").read_text()


def test_unknown_model_is_a_usage_error():
    completed = run_benchmark("--models", "cait", "resnet")
    assert completed.returncode == 2
    assert "invalid choice: 'resnet'" in completed.stderr and "temporal_latent_bottleneck" in completed.stderr


def test_steps_must_be_positive():
    completed = run_benchmark("--steps", "0")
    assert completed.returncode == 2 and "must be a positive integer" in completed.stderr


def test_a_failed_model_is_reported_in_its_row():
    benchmark = load_script()
    measured = {"model": "cait", "parameters": 41570, "flops_per_image": 1.66e6, "batch_size": 64,
                "first_step_seconds": 11.0, "train_images_per_second": 2411.0, "predict_images_per_second": 8612.0,
                "peak_memory_bytes": 2**30, "memory_kind": "peak process RSS", "status": "ok"}
    failed = {"model": "focal_modulation", "status": "failed: ValueError: a | b"}
    rows = table_rows(benchmark.markdown_table([measured, failed]))
    assert rows[0] == ["cait", "41,570", "1.66", "64", "11", "2,411", "8,612", "1,024", "ok"]
    assert rows[1] == ["focal_modulation", *["-"] * 7, "failed: ValueError: a / b"]


@pytest.mark.parametrize("name", MODEL_MODULES)
def test_every_model_is_built_by_its_module_protocol_builder(name, monkeypatch):
    # No table of builders: each module's build_model gets exactly its profile's arguments.
    module = importlib.import_module(f"course_utils.models.{name}")
    calls = []
    monkeypatch.setattr(module, "build_model", lambda **arguments: calls.append(arguments) or "model", raising=False)
    profile = module.PROFILES["smoke"]
    model, call = load_script().build_model(module, profile)
    assert model == "model" and calls == [profile.model]
    assert call == f"{name}.build_model(" + ", ".join(f"{k}={v!r}" for k, v in profile.model.items()) + ")"


def test_the_builder_makes_the_notebook_model():
    from course_utils.models import patch_convnet

    profile = patch_convnet.PROFILES["smoke"]
    model, call = load_script().build_model(patch_convnet, profile)
    assert model.output_shape == (None, 10)
    assert model.count_params() == patch_convnet.build_model(**profile.model).count_params()
    assert call.startswith(f"patch_convnet.build_model(embed_dim={profile.model['embed_dim']}, ")


def test_linear_baseline_prints_a_row_with_an_accuracy_above_chance(capsys):
    spec = importlib.util.spec_from_file_location("linear_baseline", REPOSITORY / "benchmarks" / "linear_baseline.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(["--epochs", "1"])
    row = capsys.readouterr().out.strip().splitlines()[-1]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[0] == "linear classifier on raw pixels" and cells[1] == "1 (1)"
    test_accuracy = float(cells[3].rstrip("%"))
    assert 20 < test_accuracy < 50, row  # chance is 10%; one epoch of softmax regression lands near 30%
