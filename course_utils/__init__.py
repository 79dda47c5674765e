"""course_utils: layers, models, data, training and visualization for the vision-architectures course.

Notebooks import the names below from here (``from course_utils import train, evaluate``) and use three
documented submodules as modules: ``course_utils.models.<paper>`` (one per paper, see CONTRIBUTING.md),
``course_utils.viz`` and ``course_utils.exercises``.
Names are imported on first use, so ``python -m course_utils run`` starts without loading Keras (the
notebooks it runs choose their own backend). Saved ``.keras`` models of the course load after
``import course_utils`` alone: the custom layers are registered as soon as Keras is imported, before or
after this package.
"""

import importlib
import importlib.abc
import importlib.util
import sys

_PUBLIC = {
    "Profile": "course_utils.profiles",
    "select_profile": "course_utils.profiles",
    "PROFILE_NAMES": "course_utils.profiles",
    "MapSet": "course_utils.analysis",
    "Analysis": "course_utils.analysis",
    "load_cifar10": "course_utils.data",
    "train_val_split": "course_utils.data",
    "CLASS_NAMES": "course_utils.data",
    "DatasetError": "course_utils.data",
    "preprocessing": "course_utils.augment",
    "describe_device": "course_utils.distribute",
    "mask_patches": "course_utils.masking",
    "masking_test": "course_utils.masking",
    "distribution_scope": "course_utils.distribute",
    "count_flops": "course_utils.flops",
    "evaluate": "course_utils.training",
    "profile_data": "course_utils.training",
    "report": "course_utils.training",
    "train": "course_utils.training",
    "warmup_cosine": "course_utils.training",
    "setup": "course_utils.setup",
    "explore": "course_utils.viz",
    "CheckpointError": "course_utils.pretrained",
    "describe_pretrained": "course_utils.pretrained",
    "load_pretrained": "course_utils.pretrained",
    "pretrained_info": "course_utils.pretrained",
    "pretrained_names": "course_utils.pretrained",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'course_utils' has no attribute {name!r}")
    # Importing the models package registers every custom layer, so saved course models always load.
    _register_layers()
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    # Importing ``course_utils.setup`` binds the *submodule* to the package attribute ``setup``; cache
    # the function over it, or a second ``course_utils.setup(...)`` (re-running a cell) calls a module.
    globals()[name] = value
    return value


def _register_layers():
    importlib.import_module("course_utils.models").import_all()


class _RegisterLayersAfterKeras(importlib.abc.MetaPathFinder):
    """Registers the course's layers right after ``keras`` is imported (without importing Keras itself)."""

    def find_spec(self, name, path=None, target=None):
        if name != "keras":
            return None
        sys.meta_path.remove(self)  # find the real spec below, and fire once only
        spec = importlib.util.find_spec(name)
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            # A course module being imported (the first to import keras) is half-initialized: importing all
            # the models now would meet it so. Its importer (``__getattr__`` below) registers them afterwards.
            if not any(getattr(getattr(other, "__spec__", None), "_initializing", False)
                       for name, other in list(sys.modules.items()) if name.startswith("course_utils.")):
                _register_layers()

        spec.loader.exec_module = exec_module
        return spec


if "keras" in sys.modules:
    _register_layers()
else:
    sys.meta_path.insert(0, _RegisterLayersAfterKeras())
