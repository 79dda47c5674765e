"""course_utils.exercises, and the exercises of every notebook that has an "## Exercises" section.

For each notebook exercise the solution (the python block of its collapsed Solution) is run, then its check
cell, in a namespace prepared by the notebook's parameters cell (profile "smoke") and its exercise setup
cell; the check must return True. The blank answer cell followed by the check must run too and return None.
The markers these tests read are described in CONTRIBUTING.md.
"""

import ast
import contextlib
import io
import pathlib
import re

import keras
import nbformat
import numpy as np
import pytest

from course_utils import exercises
from course_utils.models import cait, patch_convnet as pc, token_learner as tl
from course_utils.models import focal_modulation as fm
from course_utils.models import temporal_latent_bottleneck as tlb
from helpers import random_inputs

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))

SETUP = re.compile(r"^# EXERCISES: setup")
ANSWER = re.compile(r"^# ANSWER: exercise (\d+)")
CHECK = re.compile(r"^# CHECK: exercise (\d+)")
SOLUTION = re.compile(r"<!-- solution: exercise (\d+) -->.*?```python\n(.*?)\n```", re.S)


def run_and_capture(function, *args, **kwargs):
    """Call ``function`` and return ``(result, printed text)``."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        result = function(*args, **kwargs)
    return result, buffer.getvalue()


# --------------------------------------------------------------------------------------------
# The core: check, combine, check_built
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("blank", [..., None, (None, ...), [3, ...], {"a": ...}, ((1, ...),)])
def test_placeholders_are_unanswered(blank):
    assert exercises.is_unanswered(blank)
    result, printed = run_and_capture(exercises.check, blank, 16, "x")
    assert result is None
    assert printed.startswith(exercises.TODO) and "not answered yet" in printed


@pytest.mark.parametrize("value", [0, (None, 4, 32), [], False, "text"])
def test_values_are_answers(value):
    assert not exercises.is_unanswered(value)


@pytest.mark.parametrize(
    "answer, expected, kwargs",
    [
        (16, 16, {}),
        (16.0, 16, {}),
        (np.int64(16), 16, {}),
        (0.10, 0.109, {"rtol": 0.5}),
        ((None, 4, 32), (None, 4, 32), {}),
        ([None, 4, 32], (None, 4, 32), {}),
        ([8, 8, 8], [8, 8, 8], {}),
        ({"with": 0.5, "without": 2.0}, {"with": 0.5, "without": 2.0 + 1e-9}, {}),
        (keras.ops.ones((2, 3)), np.ones((2, 3)), {}),
        (np.ones((2, 3)), keras.ops.ones((2, 3)), {}),
        ([5, 7], [5, 7], {}),
    ],
)
def test_a_right_answer_passes(answer, expected, kwargs):
    result, printed = run_and_capture(exercises.check, answer, expected, "x", hint="HINT", note="NOTE", **kwargs)
    assert result is True, printed
    assert printed.startswith(exercises.PASS) and "NOTE" in printed and "HINT" not in printed


@pytest.mark.parametrize(
    "answer, expected, phrase",
    [
        (64, 16, "too large"),
        (4, 16, "too small"),
        (0.3, 0.109, "too large"),
        ((None, 8, 32), (None, 4, 32), "entry 1"),
        ((4, 32), (None, 4, 32), "2 entries"),
        ((1, 4, 32), (None, 4, 32), "should be None"),
        ([16, 8], [8, 8], "entry 0"),
        (keras.ops.ones((2, 3)), np.ones((3, 2)), "shape"),
        (np.zeros((2, 3)), np.ones((2, 3)), "off by"),
        ("sixteen", 16, "should be a number"),
        (16, (None, 4, 32), "tuple or list"),
        ({"with": 1.0}, {"with": 1.0, "without": 2.0}, "keys"),
        (True, False, "not right"),
    ],
)
def test_a_wrong_answer_fails_with_the_hint(answer, expected, phrase):
    result, printed = run_and_capture(exercises.check, answer, expected, "x", hint="HINT", note="NOTE")
    assert result is False, printed
    assert printed.startswith(exercises.FAIL) and phrase in printed and "HINT" in printed and "NOTE" not in printed


def test_a_wrong_answer_does_not_reveal_the_expected_number():
    _, printed = run_and_capture(exercises.check, 123, 678, "x")
    assert "123" in printed and "678" not in printed


def test_a_check_never_raises_on_odd_answers():
    result, printed = run_and_capture(exercises.check, object(), np.ones(3), "x")
    assert result is False and exercises.FAIL in printed


@pytest.mark.parametrize(
    "results, expected",
    [((True, True), True), ((True, None), None), ((None, False), False), ((True, False, None), False), ((), True)],
)
def test_combine(results, expected):
    assert exercises.combine(*results) is expected


def _dense(units):
    layer = keras.layers.Dense(units)
    layer.build((None, 4))
    return layer


def test_check_built_compares_features_with_the_reference():
    features = {"units": lambda layer: layer.units, "parameters": exercises.count_parameters}
    reference = _dense(3)
    result, printed = run_and_capture(exercises.check_built, _dense(3), reference, "layer", features, "HINT")
    assert result is True and printed.startswith(exercises.PASS) and "units 3" in printed
    result, printed = run_and_capture(exercises.check_built, _dense(5), reference, "layer", features, "HINT")
    assert result is False and printed.startswith(exercises.FAIL) and "units 5" in printed and "HINT" in printed
    result, printed = run_and_capture(exercises.check_built, None, reference, "layer", features)
    assert result is None and "not answered yet" in printed
    result, printed = run_and_capture(exercises.check_built, 3, reference, "layer", features, "HINT")
    assert result is False and "Keras model or layer" in printed
    result, printed = run_and_capture(exercises.check_built, keras.layers.ReLU(), reference, "layer", features)
    assert result is False and "ReLU" in printed


def test_check_built_reports_a_feature_it_cannot_read():
    features = {"units": lambda layer: layer.units}
    result, printed = run_and_capture(exercises.check_built, keras.layers.Dropout(0.1), keras.layers.Dropout(0.2),
                                      "layer", features, "HINT")
    assert result is False and "could not be read" in printed and "HINT" in printed


def test_receptive_field_of_stacked_kernels():
    assert exercises.receptive_field([3]) == 3
    assert exercises.receptive_field([3, 5]) == 7
    assert exercises.receptive_field([1, 1]) == 1


# --------------------------------------------------------------------------------------------
# Named checks: right -> True and ✓, wrong -> False and ✗ with the hint, blank -> None
# --------------------------------------------------------------------------------------------
# The smoke profiles' models, as in the notebook tests below: on JAX every new weight shape costs a compilation,
# so sharing the shapes keeps this file fast. Shapes are derived from the configurations, never typed in.
VIT = tl.PROFILES["smoke"].model
CAIT = cait.PROFILES["smoke"].model
CONVNET = pc.PROFILES["smoke"].model
VIT_PATCHES = (VIT["image_size"] // VIT["patch_size"]) ** 2
CAIT_PATCHES = (CAIT["image_size"] // CAIT["patch_size"]) ** 2


def assert_outcome(expected, result, printed, hint_fragment=None):
    assert result is expected, printed
    lines = printed.strip().splitlines()
    if expected is True:
        assert all(line.startswith(exercises.PASS) for line in lines), printed
    elif expected is False:
        assert any(line.startswith(exercises.FAIL) for line in lines), printed
        assert hint_fragment is None or hint_fragment in printed, printed
    else:
        assert any("not answered yet" in line for line in lines) and exercises.FAIL not in printed, printed


def test_reference_model_is_built_once_per_setting():
    first = exercises.reference_model("token_learner", **{**VIT, "num_tokens": 4})
    assert exercises.reference_model("token_learner", **{**VIT, "num_tokens": 4}) is first
    other = exercises.reference_model("token_learner", **{**VIT, "num_tokens": 2})
    assert other is not first and exercises.token_learner_tokens(other)[1] == 2
    assert exercises.model_settings(tl.PROFILES["smoke"]) == VIT == exercises.model_settings(VIT)


def test_check_computed_names_the_slip_it_recognises():
    expected = np.arange(6.0).reshape(2, 3)
    slips = [(2 * expected, "SLIP")]
    assert_outcome(True, *run_and_capture(exercises.check_computed, expected + 1e-6, expected, "x", "HINT", slips))
    result, printed = run_and_capture(exercises.check_computed, 2 * expected, expected, "x", "HINT", slips)
    assert result is False and "SLIP" in printed and "HINT" not in printed
    result, printed = run_and_capture(exercises.check_computed, expected + 1, expected, "x", "HINT", slips)
    assert result is False and "HINT" in printed and "SLIP" not in printed
    result, printed = run_and_capture(exercises.check_computed, np.ones(3), expected, "x", "HINT", slips)
    assert result is False and "shape (2, 3)" in printed
    assert_outcome(None, *run_and_capture(exercises.check_computed, ..., expected, "x", "HINT", slips))


def test_check_token_learner_tokens():
    right = tl.build_model(num_tokens=4, **VIT)
    wrong = tl.build_model(num_tokens=8, **VIT)
    check = exercises.check_token_learner_tokens
    assert_outcome(True, *run_and_capture(check, right, 4 * 4, tl.PROFILES["smoke"]))
    assert_outcome(True, *run_and_capture(check, right, 4 * 4, VIT))
    assert_outcome(False, *run_and_capture(check, wrong, 4 * 4, VIT), "num_tokens")
    assert_outcome(False, *run_and_capture(check, tl.build_baseline(**VIT), 4 * 4, VIT), "no TokenLearner layer")
    assert_outcome(False, *run_and_capture(check, right, 8 * 8, VIT), "pair")
    assert_outcome(None, *run_and_capture(check, None, ..., VIT))
    assert_outcome(None, *run_and_capture(check, right, ..., VIT))


def test_check_token_learner_position():
    middle = tl.build_model(**VIT)
    check = exercises.check_token_learner_position
    depth, half = VIT["depth"], VIT["depth"] // 2
    early, in_the_middle = [8] * depth, [VIT_PATCHES] * half + [8] * (depth - half)
    assert exercises.tokens_per_block(middle) == in_the_middle
    right = tl.build_model(token_learner_after=0, **VIT)
    assert exercises.tokens_per_block(right) == early
    assert_outcome(True, *run_and_capture(check, right, early, VIT))
    assert_outcome(False, *run_and_capture(check, middle, early, VIT), "token_learner_after")
    assert_outcome(False, *run_and_capture(check, right, in_the_middle, VIT), "blocks before")
    assert_outcome(None, *run_and_capture(check, None, ..., VIT))


def test_check_token_pooling():
    features = keras.ops.convert_to_tensor(random_inputs((2, 4, 4, 8)))
    learner = tl.TokenLearner(num_tokens=3)
    _, maps = learner(features)
    right = keras.ops.einsum("bthw,bhwc->btc", maps, features) / 16
    check = exercises.check_token_pooling
    assert_outcome(True, *run_and_capture(check, right, learner, features))
    assert_outcome(False, *run_and_capture(check, right * 16, learner, features), "mean")
    normalised = keras.ops.einsum("bthw,bhwc->btc", maps, learner.norm(features)) / 16
    assert_outcome(False, *run_and_capture(check, normalised, learner, features), "features themselves")
    assert_outcome(False, *run_and_capture(check, right[:, :2], learner, features), "shape (2, 3, 8)")
    assert_outcome(None, *run_and_capture(check, ..., learner, features))


def test_check_without_layer_scale():
    added = 2 * CAIT["embed_dim"] * (CAIT["depth"] + CAIT["class_attention_depth"])  # 2 branches per block
    check = exercises.check_without_layer_scale
    right = cait.build_model(**CAIT, use_layer_scale=False)
    assert cait.build_model(**CAIT).count_params() - right.count_params() == added
    assert_outcome(True, *run_and_capture(check, right, added, CAIT))
    assert_outcome(False, *run_and_capture(check, cait.build_model(**CAIT), added, CAIT), "use_layer_scale")
    assert_outcome(False, *run_and_capture(check, right, added // 2, CAIT), "branches")
    assert_outcome(None, *run_and_capture(check, None, ..., CAIT))


def _update_blocks():
    keras.utils.set_random_seed(0)
    tokens = keras.ops.convert_to_tensor(random_inputs((4, 16, 32)))
    return tokens, cait.SelfAttentionBlock(num_heads=2, layer_scale_init=0.1), cait.SelfAttentionBlock(
        num_heads=2, use_layer_scale=False
    )


def test_relative_update_is_about_the_layer_scale_factor():
    tokens, block_with, block_without = _update_blocks()
    ratio = exercises.relative_update(block_with, tokens) / exercises.relative_update(block_without, tokens)
    assert 0.05 < ratio < 0.2


def test_check_residual_update():
    tokens, block_with, block_without = _update_blocks()

    def right(block, tokens):
        outputs, _ = block(tokens)
        ratio = keras.ops.sqrt(keras.ops.sum((outputs - tokens) ** 2) / keras.ops.sum(tokens**2))
        return float(keras.ops.convert_to_numpy(ratio))

    def wrong(block, tokens):  # forgets to subtract the input
        outputs, _ = block(tokens)
        ratio = keras.ops.sqrt(keras.ops.sum(outputs**2) / keras.ops.sum(tokens**2))
        return float(keras.ops.convert_to_numpy(ratio))

    def blank(block, tokens):
        return ...

    def broken(block, tokens):
        return block(tokens).shape  # a block returns a tuple

    check = exercises.check_residual_update
    assert_outcome(True, *run_and_capture(check, right, tokens, block_with, block_without, 0.1))
    assert_outcome(False, *run_and_capture(check, wrong, tokens, block_with, block_without, 0.1), "norm")
    assert_outcome(False, *run_and_capture(check, right, tokens, block_with, block_without, 1.0), "initialisation")
    assert_outcome(False, *run_and_capture(check, broken, tokens, block_with, block_without, 0.1), "outputs")
    assert_outcome(None, *run_and_capture(check, blank, tokens, block_with, block_without, ...))


def test_check_class_attention():
    settings = {**CAIT, "class_attention_depth": 1}
    heads = CAIT["num_heads"]
    class_shape, patch_shape = (None, heads, 1 + CAIT_PATCHES), (None, heads, CAIT_PATCHES, CAIT_PATCHES)
    check = exercises.check_class_attention
    right = cait.build_model(**settings)
    assert_outcome(True, *run_and_capture(check, right, class_shape, patch_shape, CAIT))
    assert_outcome(False, *run_and_capture(check, cait.build_model(**CAIT), class_shape, patch_shape, CAIT),
                   "class_attention_depth")
    wrong_class, wrong_patch = (None, heads, CAIT_PATCHES), (None, heads, 1 + CAIT_PATCHES, 1 + CAIT_PATCHES)
    assert_outcome(False, *run_and_capture(check, right, wrong_class, patch_shape, CAIT), "class token")
    assert_outcome(False, *run_and_capture(check, right, class_shape, wrong_patch, CAIT), "patch")
    assert_outcome(None, *run_and_capture(check, right, (None, ..., ...), patch_shape, CAIT))


def test_check_class_attention_row():
    tokens = keras.ops.convert_to_tensor(random_inputs((2, 1 + 8, 16)))
    layer = cait.ClassAttention(num_heads=2)
    layer(tokens)
    head, width = 1, 8
    channels = slice(head * width, (head + 1) * width)
    query = keras.ops.convert_to_numpy(layer.query(tokens[:, :1]))[..., channels]
    keys = keras.ops.convert_to_numpy(layer.key(tokens))[..., channels]
    values = keras.ops.convert_to_numpy(layer.value(tokens))[..., channels]
    logits = np.einsum("bqc,bkc->bk", query, keys)
    row = keras.ops.convert_to_numpy(keras.ops.softmax(logits / np.sqrt(width), axis=-1))
    attended = np.einsum("bk,bkc->bc", row, values)
    check = exercises.check_class_attention_row
    assert_outcome(True, *run_and_capture(check, row, attended, layer, tokens, head))
    unscaled = keras.ops.softmax(logits, axis=-1)
    assert_outcome(False, *run_and_capture(check, unscaled, attended, layer, tokens, head), "1 / sqrt(head width)")
    wrong_axis = keras.ops.softmax(logits / np.sqrt(width), axis=0)
    assert_outcome(False, *run_and_capture(check, wrong_axis, attended, layer, tokens, head), "last axis")
    with_keys = np.einsum("bk,bkc->bc", row, keys)
    assert_outcome(False, *run_and_capture(check, row, with_keys, layer, tokens, head), "not the keys")
    other_head = keras.ops.convert_to_numpy(layer(tokens)[1])[:, 0]
    assert_outcome(False, *run_and_capture(check, other_head, attended, layer, tokens, head), "Hint")
    assert_outcome(None, *run_and_capture(check, row, ..., layer, tokens, head))


def test_check_trunk_depth():
    settings = {**CONVNET, "depth": CONVNET["depth"] + 2}
    right = pc.build_model(**settings)
    per_block = sum(int(np.prod(w.shape)) for w in pc.trunk_blocks(right)[0].weights)
    check = exercises.check_trunk_depth
    grid = CONVNET["image_size"] // CONVNET["patch_size"]
    map_shape = (None, CONVNET.get("num_heads", 1), grid, grid)
    assert_outcome(True, *run_and_capture(check, right, per_block, map_shape, CONVNET))
    assert_outcome(False, *run_and_capture(check, pc.build_model(**CONVNET), per_block, map_shape, CONVNET), "depth")
    assert_outcome(False, *run_and_capture(check, right, per_block + 1, map_shape, CONVNET), "weights")
    coarser = (None, map_shape[1], grid // 2, grid // 2)
    assert_outcome(False, *run_and_capture(check, right, per_block, coarser, CONVNET), "grid")
    assert_outcome(None, *run_and_capture(check, None, ..., (None, ..., ..., ...), CONVNET))


def test_check_pooling_weights():
    keras.utils.set_random_seed(0)
    patch_vectors = keras.ops.convert_to_tensor(random_inputs((4, 16, 32)))
    pooling = pc.AttentionPooling(num_heads=2, dropout_rate=0.0)
    _, weights = pooling(patch_vectors)
    sums = keras.ops.sum(weights, axis=-1)
    assert float(keras.ops.convert_to_numpy(keras.ops.max(sums))) < 1.0
    check = exercises.check_pooling_weights
    assert_outcome(True, *run_and_capture(check, pooling, patch_vectors, sums, 1 - sums))
    assert_outcome(False, *run_and_capture(check, pooling, patch_vectors, sums, sums), "softmax")
    assert_outcome(False, *run_and_capture(check, pooling, patch_vectors, keras.ops.sum(weights, axis=1), 1 - sums),
                   "last axis")
    assert_outcome(None, *run_and_capture(check, pooling, patch_vectors, ..., ...))


def test_check_top_patches():
    maps = random_inputs((3, 2, 4, 4))
    count = 5
    flat = maps.mean(axis=1).reshape(3, 16)
    hidden = np.argsort(-flat, axis=1)[:, :count]
    cells = np.zeros((3, 16), dtype=bool)
    np.put_along_axis(cells, hidden, True, axis=1)
    cells = cells.reshape(3, 4, 4)
    check = exercises.check_top_patches
    assert_outcome(True, *run_and_capture(check, hidden, cells, maps, count))
    assert_outcome(True, *run_and_capture(check, hidden[:, ::-1].tolist(), cells, maps, count))  # any order
    assert_outcome(False, *run_and_capture(check, np.argsort(flat, axis=1)[:, :count], cells, maps, count),
                   "least")
    head_0 = np.argsort(-maps[:, 0].reshape(3, 16), axis=1)[:, :count]
    assert_outcome(False, *run_and_capture(check, head_0, cells, maps, count), "all heads")
    assert_outcome(False, *run_and_capture(check, hidden, cells.transpose(0, 2, 1), maps, count), "swapped")
    assert_outcome(False, *run_and_capture(check, hidden[:, :2], cells, maps, count), "shape (3, 5)")
    one_off = hidden.copy()
    one_off[0, 0] = np.argsort(flat[0])[0]  # image 0's least-weighted patch instead of one of its top ones
    assert_outcome(False, *run_and_capture(check, one_off, cells, maps, count), "1 of 3 images")
    assert_outcome(None, *run_and_capture(check, ..., None, maps, count))


def test_check_focal_levels():
    feature_map = keras.ops.convert_to_tensor(random_inputs((2, 8, 8, 16)))
    check = exercises.check_focal_levels
    right = fm.FocalModulation(focal_level=3)
    assert_outcome(True, *run_and_capture(check, right, (2, 8, 8, 4), 13, feature_map))
    assert_outcome(False, *run_and_capture(check, fm.FocalModulation(focal_level=2), (2, 8, 8, 4), 13, feature_map),
                   "focal_level")
    assert_outcome(False, *run_and_capture(check, right, (2, 8, 8, 3), 13, feature_map), "global")
    assert_outcome(False, *run_and_capture(check, right, (2, 8, 8, 4), 7, feature_map), "k - 1")
    assert_outcome(None, *run_and_capture(check, None, (2, 8, 8, ...), ..., feature_map))


def test_check_focal_window():
    feature_map = keras.ops.convert_to_tensor(random_inputs((2, 8, 8, 16)))
    check = exercises.check_focal_window
    extra = 16 * (5**2 + 7**2) - 16 * (3**2 + 5**2)
    right = fm.FocalModulation(focal_level=2, focal_window=5)
    assert_outcome(True, *run_and_capture(check, right, [5, 7], extra, feature_map))
    assert_outcome(False, *run_and_capture(check, fm.FocalModulation(focal_level=2), [5, 7], extra, feature_map),
                   "focal_window")
    assert_outcome(False, *run_and_capture(check, right, [3, 5], extra, feature_map), "focal_factor")
    assert_outcome(False, *run_and_capture(check, right, [5, 7], extra * 16, feature_map), "filter per channel")
    assert_outcome(None, *run_and_capture(check, None, [..., ...], ..., feature_map))


def _modulator_by_hand(layer, feature_map, stacked=True, with_global=True):
    """The learner's side of the gated-sum exercise, written independently of exercises._gated_sum."""
    query, context, gates = keras.ops.split(layer.f(feature_map), [16, 32], axis=-1)
    first, aggregated = context, 0.0
    for level, conv in enumerate(layer.focal_layers):
        context = conv(context if stacked else first)
        aggregated = aggregated + gates[..., level : level + 1] * context
    if with_global:
        global_context = keras.ops.gelu(keras.ops.mean(context, axis=(1, 2), keepdims=True), approximate=False)
        aggregated = aggregated + gates[..., -1:] * global_context
    return aggregated


def test_check_gated_sum():
    feature_map = keras.ops.convert_to_tensor(random_inputs((2, 8, 8, 16)))
    layer = fm.FocalModulation(focal_level=2)
    layer(feature_map)
    check = exercises.check_gated_sum
    right = layer.h(_modulator_by_hand(layer, feature_map))
    assert_outcome(True, *run_and_capture(check, right, layer, feature_map))
    assert_outcome(False, *run_and_capture(check, layer.h(_modulator_by_hand(layer, feature_map, with_global=False)),
                                           layer, feature_map), "global level")
    assert_outcome(False, *run_and_capture(check, layer.h(_modulator_by_hand(layer, feature_map, stacked=False)),
                                           layer, feature_map), "stacked")
    assert_outcome(False, *run_and_capture(check, _modulator_by_hand(layer, feature_map), layer, feature_map),
                   "layer.h")
    assert_outcome(False, *run_and_capture(check, right[..., :8], layer, feature_map), "shape (2, 8, 8, 16)")
    assert_outcome(None, *run_and_capture(check, None, layer, feature_map))


TLB_SETTINGS = dict(image_size=32, patch_size=8, embed_dim=16, chunk_size=4, num_latents=4, depth=1, r=1,
                    num_heads=2)  # 16 patch tokens: small enough to build several models quickly


def test_check_chunk_size():
    check = exercises.check_chunk_size
    right = tlb.build_model(**{**TLB_SETTINGS, "chunk_size": 8})
    assert_outcome(True, *run_and_capture(check, right, 2, (2, 2, 4, 8), TLB_SETTINGS, chunk_size=8))
    assert_outcome(False, *run_and_capture(check, tlb.build_model(**TLB_SETTINGS), 2, (2, 2, 4, 8), TLB_SETTINGS,
                                           chunk_size=8), "chunk_size")
    assert_outcome(False, *run_and_capture(check, right, 4, (2, 2, 4, 8), TLB_SETTINGS, chunk_size=8), "patch grid")
    assert_outcome(False, *run_and_capture(check, right, 2, (2, 4, 2, 8), TLB_SETTINGS, chunk_size=8),
                   "head and latent")
    assert_outcome(None, *run_and_capture(check, None, ..., (..., 2, 4, 8), TLB_SETTINGS, chunk_size=8))


def test_check_bottleneck_size():
    check = exercises.check_bottleneck_size
    model = tlb.build_model(**TLB_SETTINGS)
    right = tlb.build_model(**{**TLB_SETTINGS, "num_latents": 2})
    fewer = model.count_params() - right.count_params()
    assert fewer > 0
    assert_outcome(True, *run_and_capture(check, right, 4 * 16, 4 * 16, fewer, TLB_SETTINGS))
    assert_outcome(False, *run_and_capture(check, model, 64, 64, fewer, TLB_SETTINGS), "num_latents")
    assert_outcome(False, *run_and_capture(check, tlb.build_baseline(**TLB_SETTINGS), 64, 64, fewer, TLB_SETTINGS),
                   "no TemporalLatentBottleneck layer")
    assert_outcome(False, *run_and_capture(check, right, 16, 64, fewer, TLB_SETTINGS), "width embed_dim")
    assert_outcome(False, *run_and_capture(check, right, 64, 64, fewer * 10, TLB_SETTINGS), "Attention weights")
    assert_outcome(None, *run_and_capture(check, right, 64, ..., None, TLB_SETTINGS))


def _one_step_by_hand(cell, chunk, slow, cross_attention=True):
    """The learner's side of the chunking exercise: one step of the recurrence from the cell's blocks."""
    fast = chunk
    for i, self_attention in enumerate(cell.self_attention):
        fast, _ = self_attention(fast)
        if cross_attention and i % cell.r == 0:
            fast, _ = cell.cross_attention[i // cell.r](fast, slow)
    slow, _ = cell.latent_update(slow, fast)
    return slow


def test_check_chunk_step():
    images = keras.ops.convert_to_tensor(random_inputs((2, 16, 16, 3)))
    embedding = tlb.ChunkedPatchEmbedding(patch_size=4, embed_dim=8, chunk_size=4)
    bottleneck = tlb.TemporalLatentBottleneck(num_latents=3, depth=2, r=2, num_heads=2)
    bottleneck(embedding(images))
    tokens = embedding.norm(embedding.positions(embedding.patches(images)))  # (2, 16, 8)
    chunks = keras.ops.reshape(tokens, (2, 4, 4, 8))
    start = keras.ops.tile(keras.ops.expand_dims(bottleneck.initial_latents, 0), (2, 1, 1))
    slow = _one_step_by_hand(bottleneck.cell, chunks[:, 0], start)
    check = exercises.check_chunk_step
    assert_outcome(True, *run_and_capture(check, chunks, slow, embedding, bottleneck, images))
    strided = keras.ops.transpose(keras.ops.reshape(tokens, (2, 4, 4, 8)), (0, 2, 1, 3))
    assert_outcome(False, *run_and_capture(check, strided, slow, embedding, bottleneck, images), "consecutive")
    alone = _one_step_by_hand(bottleneck.cell, chunks[:, 0], start, cross_attention=False)
    assert_outcome(False, *run_and_capture(check, chunks, alone, embedding, bottleneck, images), "reads the slow")
    second = _one_step_by_hand(bottleneck.cell, chunks[:, 1], start)
    assert_outcome(False, *run_and_capture(check, chunks, second, embedding, bottleneck, images), "first chunk")
    assert_outcome(None, *run_and_capture(check, chunks, None, embedding, bottleneck, images))


# --------------------------------------------------------------------------------------------
# The notebooks' exercises
# --------------------------------------------------------------------------------------------
def has_exercises(path):
    notebook = nbformat.read(path, as_version=4)
    headings = [cell.source for cell in notebook.cells if cell.cell_type == "markdown"]
    return any(re.search(r"^## Exercises", source, re.M) for source in headings)


WITH_EXERCISES = [path for path in NOTEBOOKS if has_exercises(path)]


def notebook_exercises(path):
    """``(parameters cell, setup cell, {number: {"answer", "check", "solution"}})`` of a notebook."""
    notebook = nbformat.read(path, as_version=4)
    parameters = [cell.source for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]
    setup = [cell.source for cell in notebook.cells if cell.cell_type == "code" and SETUP.match(cell.source)]
    found = {}
    for cell in notebook.cells:
        if cell.cell_type == "code":
            for kind, marker in (("answer", ANSWER), ("check", CHECK)):
                match = marker.match(cell.source)
                if match:
                    assert kind not in found.setdefault(int(match.group(1)), {}), f"two {kind} cells, {path.name}"
                    found[int(match.group(1))][kind] = cell.source
        else:
            for match in SOLUTION.finditer(cell.source):
                assert "<details>" in cell.source and "</details>" in cell.source, "solutions stay collapsed"
                found.setdefault(int(match.group(1)), {})["solution"] = match.group(2)
    return parameters, setup, found


def run_check_cell(source, namespace):
    """Execute a check cell like a notebook would and return the value of its last line (the check call)."""
    tree = ast.parse(source)
    *body, last = tree.body
    assert isinstance(last, ast.Expr), "a check cell must end with the check call"
    exec(compile(ast.Module(body=body, type_ignores=[]), "<check>", "exec"), namespace)
    return eval(compile(ast.Expression(last.value), "<check>", "eval"), namespace)


def test_the_course_has_exercises():
    names = {path.stem[:2] for path in WITH_EXERCISES}
    assert {"01", "02", "03", "04", "05"} <= names, f"notebooks with exercises: {sorted(names)}"


@pytest.mark.parametrize("path", WITH_EXERCISES, ids=[path.stem for path in WITH_EXERCISES])
def test_every_solution_passes_its_check_and_every_blank_runs(path):
    parameters, setup, found = notebook_exercises(path)
    assert len(parameters) == 1 and len(setup) == 1, "one parameters cell and one '# EXERCISES: setup' cell"
    assert 2 <= len(found) and sorted(found) == list(range(1, len(found) + 1)), f"exercise numbers {sorted(found)}"
    base = {}
    exec(parameters[0], base)
    base["profile"] = "smoke"
    run_and_capture(exec, setup[0], base)
    for number, parts in sorted(found.items()):
        assert set(parts) == {"answer", "check", "solution"}, f"exercise {number} has only {sorted(parts)}"
        assert "NBVAL_CHECK_OUTPUT" not in parts["check"]

        blank = dict(base)
        run_and_capture(exec, parts["answer"], blank)
        result, printed = run_and_capture(run_check_cell, parts["check"], blank)
        assert result is None, f"exercise {number}, blank answer: the check returned {result!r}\n{printed}"
        assert "not answered yet" in printed and exercises.FAIL not in printed, printed

        solved = dict(base)
        run_and_capture(exec, parts["solution"], solved)
        result, printed = run_and_capture(run_check_cell, parts["check"], solved)
        assert result is True, f"{path.name}, exercise {number}: the solution fails its check\n{printed}"
        assert exercises.PASS in printed and exercises.FAIL not in printed


def exercise_section(path):
    """The markdown and code cells from the ``## Exercises`` heading up to the next ``## `` heading."""
    cells = nbformat.read(path, as_version=4).cells
    def heading(index, prefix):
        return cells[index].cell_type == "markdown" and cells[index].source.startswith(prefix)

    start = next(index for index in range(len(cells)) if heading(index, "## Exercises"))
    end = next((index for index in range(start + 1, len(cells)) if heading(index, "## ")), len(cells))
    return cells[start:end]


@pytest.mark.parametrize("path", WITH_EXERCISES, ids=[path.stem for path in WITH_EXERCISES])
def test_check_cells_show_no_answer(path):
    """A check cell is its marker and one call of a named check: the check builds its reference itself."""
    _, _, found = notebook_exercises(path)
    for number, parts in found.items():
        body = ast.parse(parts["check"]).body
        assert len(body) == 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Call), (
            f"{path.name}, exercise {number}: the check cell should be a single check call\n{parts['check']}")
        assert ast.unparse(body[0].value.func).startswith("exercises.check"), parts["check"]


@pytest.mark.parametrize("path", WITH_EXERCISES, ids=[path.stem for path in WITH_EXERCISES])
def test_every_notebook_has_a_figure_question_and_going_further(path):
    markdown = [cell.source for cell in exercise_section(path) if cell.cell_type == "markdown"]
    figure = [source for source in markdown if "<details><summary>Answer</summary>" in source]
    assert len(figure) == 1 and figure[0].startswith("### Exercise"), f"{path.name}: one 'read this figure' question"
    assert "</details>" in figure[0] and "<!-- solution" not in figure[0]
    assert markdown[-1].startswith("### Going further"), f"{path.name}: the section ends with '### Going further'"
