"""The first cell of every notebook calls :func:`setup`: seeds, data location, and a line on where it runs."""

import os

import keras

from course_utils.distribute import describe_device


def setup(seed=42, data=None, quiet=False):
    """Seed every random generator and say which backend, device and CIFAR-10 source the notebook uses.

    The Keras backend itself is chosen before Keras is imported, through the ``KERAS_BACKEND`` environment
    variable (the notebook's first cell sets it); this function only reports it.

    Args:
        seed: seeds Python, NumPy and the backend, so a notebook re-run gives the same numbers on the same
            machine and backend.
        data: a local copy of CIFAR-10 (folder, ``.tar.gz`` or ``.npz``); stored in ``COURSE_CIFAR10`` so that
            ``load_cifar10()`` uses it. ``None`` keeps the variable as it is (unset means: download).

    Returns:
        A dict with ``backend``, ``keras``, ``device``, ``data`` and ``seed``.
    """
    if data is not None:
        os.environ["COURSE_CIFAR10"] = os.fspath(data)
    keras.utils.set_random_seed(seed)
    info = {
        "backend": keras.backend.backend(),
        "keras": keras.__version__,
        "device": describe_device(),
        "data": os.environ.get("COURSE_CIFAR10") or "download (keras.io mirrors)",
        "seed": seed,
    }
    if not quiet:
        print(" | ".join(f"{key}: {value}" for key, value in info.items()))
    return info
