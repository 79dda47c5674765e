"""One loader for timm weights: each model module lists its key map, this copies the arrays.

A *plan* is a list of ``(timm key, Keras variable, transform)``: ``transform`` turns timm's array (a
PyTorch layout) into the variable's layout. :func:`load_state_dict` checks the whole plan before it
assigns anything, so a model is never half-loaded.
"""

import numpy as np


def linear(weight):
    """torch ``Linear`` ``(out, in)`` or 1x1 convolution ``(out, in, 1, 1)`` -> Keras ``Dense`` ``(in, out)``."""
    return weight.reshape(weight.shape[0], -1).T


def conv(weight):
    """torch convolution ``(out, in, kh, kw)`` -> Keras ``Conv2D`` ``(kh, kw, in, out)``."""
    return np.transpose(weight, (2, 3, 1, 0))


def depthwise(weight):
    """torch depth-wise convolution ``(channels, 1, kh, kw)`` -> Keras ``DepthwiseConv2D`` ``(kh, kw, channels, 1)``."""
    return np.transpose(weight, (2, 3, 0, 1))


def same(weight):
    """An array whose layout is the same in both frameworks (biases, norms, embeddings)."""
    return weight


def to_numpy(value):
    """A torch tensor or array-like as a numpy array; torch itself is never imported here."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _listing(title, items, limit=8):
    items = list(items)
    shown = ", ".join(items[:limit]) + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")
    return f"{title} ({len(items)}): {shown}"


def load_state_dict(model, state_dict, plan, how_to_fix):
    """Copy ``state_dict`` (timm names -> tensors or arrays) into ``model`` following ``plan``, in place.

    Every check runs before the first assignment: every trainable variable of ``model`` must appear in
    the plan, every plan key in ``state_dict`` and every ``state_dict`` key in the plan, with matching
    shapes after the transform (an array the transform cannot take, say a 3-D one for ``conv``, counts as
    a shape mismatch). Otherwise a ValueError lists all the problems, followed by ``how_to_fix``
    (which configuration the model must be built with), and ``model`` is left untouched.

    Returns ``model``.
    """
    arrays = {key: to_numpy(value) for key, value in state_dict.items()}
    planned = {id(variable) for _, variable, _ in plan}
    uncovered = [variable.path for variable in model.trainable_variables if id(variable) not in planned]
    missing = [key for key, _, _ in plan if key not in arrays]
    unused = sorted(set(arrays) - {key for key, _, _ in plan})
    converted, mismatched = [], []
    for key, variable, transform in plan:
        if key not in arrays:
            continue
        try:
            value = transform(arrays[key])
        except (ValueError, IndexError) as error:  # numpy on a wrong number of axes: "axes don't match array"
            mismatched.append(
                f"{key} {tuple(arrays[key].shape)} -> not convertible by {transform.__name__} ({error}) "
                f"vs {tuple(variable.shape)}"
            )
            continue
        if tuple(value.shape) != tuple(variable.shape):
            mismatched.append(f"{key} {tuple(arrays[key].shape)} -> {tuple(value.shape)} vs {tuple(variable.shape)}")
        converted.append((variable, value))
    problems = []
    if uncovered:
        problems.append(_listing("model weights the key map does not cover", uncovered))
    if missing:
        problems.append(_listing("missing in the state_dict", missing))
    if unused:
        problems.append(_listing("not used by the Keras model", unused))
    if mismatched:
        problems.append(_listing("shape mismatches (timm -> converted vs Keras)", mismatched))
    if problems:
        raise ValueError(
            f"The timm state_dict does not fit {model.name!r}. {how_to_fix}\n  " + "\n  ".join(problems)
        )
    for variable, value in converted:
        variable.assign(value.astype(variable.dtype))
    return model
