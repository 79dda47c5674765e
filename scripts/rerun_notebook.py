"""Re-run committed notebooks in place on their default (`workshop`) profile, as a learner's Run all would.

    python scripts/rerun_notebook.py notebooks/03_patch_convnet.ipynb [...]

Each notebook runs top to bottom in a fresh kernel from its own folder, with the static explorer figures
(COURSE_UTILS_STATIC=1: no widget frontend records widget state). Afterwards papermill's bookkeeping is
removed, and so are the stderr lines that TensorFlow's C++ runtime prints at import on a machine without
CUDA drivers (the absl pre-initialisation warning, "Could not find cuda drivers", "failed call to cuInit"):
they describe the recording machine, not the notebook. Nothing else is touched.
"""

import os
import re
import sys
import time

import nbformat
import papermill

MACHINE_NOTICES = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IEW]\d{4} [\d:. ]+\d+ (cudart_stub|cuda_platform|cuda_executor|cuda_diagnostics)\.cc:\d+\] .*)$"
)


def without_machine_notices(outputs):
    kept = []
    for output in outputs:
        if output.get("output_type") == "stream" and output.get("name") == "stderr":
            lines = [line for line in output["text"].splitlines(keepends=True) if not MACHINE_NOTICES.match(line.strip())]
            if not "".join(lines).strip():
                continue
            output["text"] = "".join(lines)
        kept.append(output)
    return kept


def rerun(path):
    start = time.perf_counter()
    os.environ.setdefault("COURSE_UTILS_STATIC", "1")
    papermill.execute_notebook(path, path, progress_bar=False, kernel_name="python3", cwd=os.path.dirname(os.path.abspath(path)))
    notebook = nbformat.read(path, as_version=4)
    notebook.metadata.pop("papermill", None)
    notebook.metadata.pop("widgets", None)
    notebook.metadata["language_info"] = {"name": "python"}
    for cell in notebook.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            cell.outputs = without_machine_notices(cell.outputs)
    nbformat.write(notebook, path)
    print(f"{path}: {time.perf_counter() - start:.0f} s end to end")


if __name__ == "__main__":
    for notebook_path in sys.argv[1:]:
        rerun(notebook_path)
