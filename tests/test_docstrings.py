"""Docstring examples: every layer and model builder has one, and every example in the package runs.

The examples run as doctests on the active Keras backend (TensorFlow in CI), so an example that stops matching
the code fails here. They are documentation: the layers and builders they show are tested on all three backends
by the other test files, so tests/test_backends.py does not re-run this one.
"""

import doctest
import importlib
import inspect
import pathlib

import keras
import pytest

PACKAGE_ROOT = pathlib.Path(__file__).resolve().parent.parent / "course_utils"
# Modules that import optional front-end packages or start processes when their examples run.
MODULES = sorted(
    ".".join(("course_utils",) + path.relative_to(PACKAGE_ROOT).with_suffix("").parts).removesuffix(".__init__")
    for path in PACKAGE_ROOT.rglob("*.py")
    if path.name != "__main__.py"
)


def examples_of(module):
    return [test for test in doctest.DocTestFinder(exclude_empty=True).find(module) if test.examples]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in examples_of(module):
        keras.utils.set_random_seed(0)
        runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.failed == 0, f"{results.failed} of {results.attempted} docstring examples of {name} failed (see above)"


def layers_and_builders():
    """(module, name, object) for every Keras layer class and ``build_*`` function defined in the package."""
    found = []
    for name in MODULES:
        module = importlib.import_module(name)
        for attribute, value in vars(module).items():
            if getattr(value, "__module__", None) != name or attribute.startswith("_"):
                continue
            is_layer = inspect.isclass(value) and issubclass(value, keras.layers.Layer)
            is_builder = inspect.isfunction(value) and attribute.startswith("build_")
            if is_layer or is_builder:
                found.append((name, attribute, value))
    return found


def test_the_package_has_layers_and_builders():
    names = {attribute for _, attribute, _ in layers_and_builders()}
    assert {"TransformerBlock", "build_vit", "RandomOrCenterCrop"} <= names


@pytest.mark.parametrize("module, attribute, value", layers_and_builders(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_layer_and_builder_has_an_example(module, attribute, value):
    docstring = inspect.getdoc(value) or ""
    assert "Example:" in docstring and ">>> " in docstring, f"{module}.{attribute} has no docstring example"
