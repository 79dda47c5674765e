"""course_utils: layers, models, data, training and visualization for the vision-architectures course.

Notebooks import the names below from here (``from course_utils import train, evaluate``) and use three
documented submodules as modules: ``course_utils.models.<paper>`` (one per paper, see CONTRIBUTING.md),
``course_utils.viz`` and ``course_utils.exercises``.
Names are imported on first use, so ``python -m course_utils run`` starts without loading Keras (the
notebooks it runs choose their own backend).
"""

import importlib

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
    importlib.import_module("course_utils.models").import_all()
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    # Importing ``course_utils.setup`` binds the *submodule* to the package attribute ``setup``; cache
    # the function over it, or a second ``course_utils.setup(...)`` (re-running a cell) calls a module.
    globals()[name] = value
    return value
