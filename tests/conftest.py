import os

# No widget frontend in tests: the explorer renders its static figure, matplotlib draws off-screen.
os.environ.setdefault("COURSE_UTILS_STATIC", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


# The longest tests first, so that `pytest -n 2 --dist worksteal` starts them at once and the short ones
# fill the gaps, instead of one worker finishing alone with a long test at the end. (With plain
# `--dist load`, xdist hands each worker a fixed share of the first tests, long ones included, and an idle
# worker cannot take them over: measured, one worker then ran the notebooks alone for the last minutes.)
LONGEST_FIRST = (
    "test_backends.py::test_layer_and_model_tests_pass_on",
    "test_notebooks.py::test_notebook_passes_nbval",
    "test_notebooks.py::test_notebook_runs_through_the_runner",
    "test_tlb_benchmark.py",
    "test_resilience.py",
    "test_distribution.py",
    "test_benchmarks.py",
    "test_protocol.py",
)


def _rank(item):
    for rank, prefix in enumerate(LONGEST_FIRST):
        if item.nodeid.split("/")[-1].startswith(prefix):
            return rank
    return len(LONGEST_FIRST)


def pytest_collection_modifyitems(items):
    items.sort(key=_rank)  # stable: within a rank, the files keep their order
