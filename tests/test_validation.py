"""The argument checks every module shares: each rejects what it should, with a message naming the fix."""

import pytest

from course_utils import validation


@pytest.mark.parametrize(
    "validator, args, message",
    [
        (validation.require_positive_int, ("depth", 0), "positive integer"),
        (validation.require_positive_int, ("depth", 2.5), "positive integer"),
        (validation.require_positive_int, ("depth", True), "positive integer"),
        (validation.require_rate, ("dropout", -0.1), r"\[0, 1\)"),
        (validation.require_rate, ("dropout", 1.0), r"\[0, 1\)"),
        (validation.require_divisible, ("width", 10, "heads", 4), "for example width=8 or width=12"),
        (validation.require_heads_divide, (12, 5), r"Choose num_heads among \[1, 2, 3, 4, 6, 12\]"),
        (validation.require_positive_number, ("mlp_ratio", 0), "`mlp_ratio` must be a positive number, got 0"),
        (validation.require_positive_number, ("mlp_ratio", True), "positive number"),
        (validation.require_positive_number, ("epsilon", -1.0, "1e-6"), "positive number such as 1e-6, got -1.0"),
        (validation.require_number_at_least, ("mlp_ratio", 0.5, 1), "number >= 1, got 0.5"),
        (validation.require_choice, ("variant", "v2", ("v1.0", "v1.1")), r"one of \['v1.0', 'v1.1'\], got 'v2'"),
        (validation.require_image_shape, ("Stem", (2, 32, 3)), r"\(batch, height, width, channels\)"),
        (validation.require_image_shape, ("Stem", (2, 24, 24, 3), (32, 32)), "image_size=24"),
        (validation.require_token_shape, ("Pool", (2, 8, 8, 3)), r"\(batch, tokens, channels\)"),
        (validation.require_token_shape, ("Pool", (2, 0, 8), 1), "at least 1 tokens"),
    ],
)
def test_validators_name_the_fix(validator, args, message):
    with pytest.raises(ValueError, match=message):
        validator(*args)


def test_validators_return_the_value():
    assert validation.require_positive_number("epsilon", 1) == 1.0
    assert isinstance(validation.require_positive_number("x", 2), float)
    assert validation.require_positive_int("depth", 3) == 3
    assert validation.require_rate("dropout", 0) == 0.0 and isinstance(validation.require_rate("d", 0), float)
    assert validation.require_heads_divide(12, 4) == 4
    assert validation.require_choice("variant", "v1.0", ("v1.0",)) == "v1.0"
    assert validation.require_image_shape("Stem", (None, 32, 32, 3), (32, 32)) is None
