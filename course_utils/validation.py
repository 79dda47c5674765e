"""Argument checks with messages that name the fix, shared by every module (a leaf: imports nothing).

Every constructor and builder checks its arguments at once, so a bad value fails where it is written
and not later, deep inside a matrix product. Each ``require_*`` returns the value (converted where it
says so), so a check reads as an assignment: ``self.num_heads = require_positive_int("num_heads", n)``.
"""

PACKAGE = "course_utils"
"""The package name every custom layer is registered under (``course_utils>ClassName`` in ``.keras`` files)."""


def require_positive_int(name, value):
    """Raise a ValueError unless ``value`` is an int greater than zero."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    return value


def require_positive_number(name, value, example=None):
    """Raise a ValueError unless ``value`` is an int or float greater than zero; return it as a float.

    ``example`` (a string, e.g. ``"1e-6"``) is named in the message as a typical value.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        typical = "" if example is None else f" such as {example}"
        raise ValueError(f"`{name}` must be a positive number{typical}, got {value!r}.")
    return float(value)


def require_number_at_least(name, value, minimum):
    """Raise a ValueError unless ``value`` is an int or float of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        raise ValueError(f"`{name}` must be a number >= {minimum}, got {value!r}.")
    return value


def require_rate(name, value):
    """Raise a ValueError unless ``0 <= value < 1`` (dropout-style probabilities); return it as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"`{name}` must be a number in [0, 1), got {value!r}.")
    return float(value)


def require_divisible(name, value, divisor_name, divisor):
    """Raise a ValueError unless ``divisor`` divides ``value``, naming both and the fix."""
    if value % divisor != 0:
        lower = value - value % divisor
        raise ValueError(
            f"`{name}`={value} is not divisible by `{divisor_name}`={divisor}. "
            f"Choose values so that {name} % {divisor_name} == 0 "
            f"(for example {name}={lower or divisor} or {name}={lower + divisor})."
        )
    return value


def require_heads_divide(channels, num_heads, width_name="embed_dim"):
    """Raise a ValueError unless ``num_heads`` divides ``channels``, listing the head counts that would."""
    if channels % num_heads != 0:
        valid = [heads for heads in range(1, channels + 1) if channels % heads == 0]
        raise ValueError(
            f"num_heads={num_heads} does not divide the token width ({channels} channels): each head needs "
            f"the same number of channels. Choose num_heads among {valid} or change {width_name}."
        )
    return num_heads


def require_choice(name, value, choices):
    """Raise a ValueError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {list(choices)}, got {value!r}.")
    return value


def require_image_shape(layer_name, input_shape, expected_hw=None):
    """Check a ``(batch, height, width, channels)`` input shape and, if given, its spatial size."""
    if len(input_shape) != 4:
        raise ValueError(
            f"{layer_name} expects images shaped (batch, height, width, channels), "
            f"got shape {tuple(input_shape)}."
        )
    if expected_hw is not None:
        height, width = input_shape[1], input_shape[2]
        if height is not None and (height, width) != tuple(expected_hw):
            raise ValueError(
                f"{layer_name} was configured for {expected_hw[0]}x{expected_hw[1]} images but received "
                f"{height}x{width}. Resize the images (see course_utils.augment) or build the model "
                f"with image_size={height}."
            )


def require_token_shape(layer_name, input_shape, minimum_tokens=1, hint="Flatten image grids into tokens first."):
    """Check a ``(batch, tokens, channels)`` shape with known channels and at least ``minimum_tokens`` tokens."""
    if len(input_shape) != 3 or input_shape[-1] is None:
        raise ValueError(
            f"{layer_name} expects tokens shaped (batch, tokens, channels) with a known number of channels, "
            f"got shape {tuple(input_shape)}. {hint}"
        )
    tokens = input_shape[1]
    if tokens is not None and tokens < minimum_tokens:
        raise ValueError(f"{layer_name} needs at least {minimum_tokens} tokens, got {tokens}. {hint}")
