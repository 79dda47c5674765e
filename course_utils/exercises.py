"""Checks for the notebooks' exercises: is the learner's answer of the right shape, size or effect?

Each exercise in a notebook has an answer cell, whose blanks are the placeholders ``...`` (or ``None``),
and a check cell: one call of a named check at the end of this module, given the answers and the inputs the
exercise uses (the profile, a layer, a feature map). The check computes what is expected from
``course_utils`` itself, so the check cell shows no answer: it builds the model with the intended setting
(:func:`reference_model`) and reads its shapes or counts its parameters, or runs the package's layer on the
learner's inputs and compares a computation the learner wrote by hand (:func:`check_computed`). Nothing is
typed in by hand. A check prints one line per part of the answer and returns

* ``True``, printing ``✓``: every part is right;
* ``False``, printing ``✗``: a part is wrong; the line says which, how, and gives a hint;
* ``None``, printing ``…``: nothing is wrong yet, but some part is still a placeholder. An unanswered
  exercise never raises, so a notebook runs from top to bottom (papermill, CI) with every exercise blank.

Only ``keras.ops`` and NumPy are used, so the checks behave the same on TensorFlow, JAX and PyTorch.
The notebook conventions (cell markers, the collapsed solutions) are described in ``CONTRIBUTING.md``.
"""

import importlib
import math

import keras
import numpy as np
from keras import ops

PASS, FAIL, TODO = "✓", "✗", "…"


# --------------------------------------------------------------------------------------------
# Core: compare one answer with one expected value
# --------------------------------------------------------------------------------------------
def is_unanswered(value):
    """True for the placeholders: ``...``, ``None``, and a list, tuple or dict that still holds a ``...``.

    ``None`` *inside* a sequence is a legitimate value (the batch axis of a symbolic shape, ``(None, 4, 32)``),
    so only ``...`` marks a blank there.
    """
    if value is None or value is Ellipsis:
        return True
    return _holds_ellipsis(value)


def _holds_ellipsis(value):
    if value is Ellipsis:
        return True
    if isinstance(value, (list, tuple)):
        return any(_holds_ellipsis(item) for item in value)
    if isinstance(value, dict):
        return any(_holds_ellipsis(item) for item in value.values())
    return False


def _plain(value):
    """Backend tensors and NumPy scalars as NumPy arrays or Python numbers; anything else unchanged."""
    if ops.is_tensor(value):
        value = ops.convert_to_numpy(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return value.item()
    return value


def _is_number(value):
    return isinstance(value, (int, float, np.number)) and not isinstance(value, (bool, np.bool_))


def _show(value, limit=80):
    """A short text for an answer: numbers rounded, arrays by their shape, models by their name."""
    value = _plain(value)
    if isinstance(value, np.ndarray):
        text = f"an array of shape {value.shape}"
    elif isinstance(value, keras.Model):
        text = f"the model {value.name!r}"
    elif isinstance(value, keras.layers.Layer):
        text = f"a {type(value).__name__}"
    elif isinstance(value, dict):
        text = "{" + ", ".join(f"{key!r}: {_show(item)}" for key, item in value.items()) + "}"
    elif isinstance(value, (list, tuple)):
        items = ", ".join(_show(item) for item in value)
        text = f"[{items}]" if isinstance(value, list) else f"({items}{',' if len(value) == 1 else ''})"
    elif isinstance(value, bool):
        text = repr(value)
    elif isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, int):
        text = f"{value:,}"
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def difference(answer, expected, rtol=1e-5, atol=1e-8):
    """How ``answer`` differs from ``expected``, as a phrase (``"is too large"``), or ``None`` if they match.

    Numbers (and tensors) match within ``rtol``/``atol``; shapes, lists and tuples match entry by entry;
    dicts key by key; anything else by ``==``. The phrase describes the answer without giving away the
    expected value, except for the shape of an expected array.
    """
    answer, expected = _plain(answer), _plain(expected)
    if isinstance(expected, dict):
        if not isinstance(answer, dict):
            return f"should be a dict, not {type(answer).__name__}"
        if set(answer) != set(expected):
            return f"should have the keys {sorted(expected)}"
        for key in expected:
            found = difference(answer[key], expected[key], rtol, atol)
            if found:
                return f"has [{key!r}] = {_show(answer[key])}, which {found}"
        return None
    if isinstance(expected, (list, tuple)):
        if isinstance(answer, (str, bytes, dict)) or not hasattr(answer, "__iter__"):
            return f"should be a tuple or list of {len(expected)} entries, not {type(answer).__name__}"
        answer = list(answer)
        if len(answer) != len(expected):
            return f"has {len(answer)} entries; it should have {len(expected)}"
        for index, (got, want) in enumerate(zip(answer, expected)):
            found = difference(got, want, rtol, atol)
            if found:
                return f"has entry {index} = {_show(got)}, which {found}"
        return None
    if isinstance(expected, np.ndarray):
        try:
            answer = np.asarray(answer, dtype=float)
        except (TypeError, ValueError):
            return f"should be an array, not {type(answer).__name__}"
        if answer.shape != expected.shape:
            return f"has shape {answer.shape}; it should have shape {expected.shape}"
        if np.allclose(answer, expected, rtol=rtol, atol=atol):
            return None
        return f"is off by up to {np.max(np.abs(answer - expected)):.3g}"
    if expected is None:
        return None if answer is None else "should be None"
    if _is_number(expected):
        if not _is_number(answer):
            return f"should be a number, not {type(answer).__name__}"
        if math.isclose(float(answer), float(expected), rel_tol=rtol, abs_tol=atol):
            return None
        return "is too large" if answer > expected else "is too small"
    return None if answer == expected else "is not right"


def _say(mark, name, text, hint=None):
    line = f"{mark} {name}: {text}"
    if hint:
        line += f" Hint: {hint}"
    print(line)


def _not_answered(name):
    _say(TODO, name, "not answered yet (replace its ... or None in the answer cell).")


def check(answer, expected, name="your answer", hint=None, note=None, rtol=1e-5, atol=1e-8):
    """Compare one answer with the expected value, print one line, return ``True``/``False``/``None``.

    Args:
        answer: what the learner wrote; ``...``/``None`` means not answered yet (see :func:`is_unanswered`).
        expected: the value computed by the check cell (a number, shape, list, dict, array or tensor).
        name: what the line calls the answer (usually its variable name).
        hint: printed after a wrong answer.
        note: printed after a right answer (why it is so).
        rtol, atol: tolerance for numbers.
    """
    if is_unanswered(answer):
        _not_answered(name)
        return None
    try:
        found = difference(answer, expected, rtol=rtol, atol=atol)
    except Exception as error:  # a wrong type must give a hint, never stop the notebook
        found = f"could not be compared ({type(error).__name__}: {error})"
    if found:
        _say(FAIL, name, f"{_show(answer)} {found}.", hint)
        return False
    _say(PASS, name, f"{_show(answer)}." + (f" {note}" if note else ""))
    return True


def combine(*results):
    """One result for several parts: ``False`` if any is wrong, else ``None`` if any is blank, else ``True``."""
    if any(result is False for result in results):
        return False
    if any(result is None for result in results):
        return None
    return True


def check_built(answer, reference, name, features, hint=None):
    """Compare a model or layer the learner built with ``reference``, built by the check cell as intended.

    Args:
        answer: the learner's ``keras.Model`` or layer (``None``/``...``: not answered yet). A layer must
            have been called once, so that its weights and shapes exist.
        reference: the same kind of object, built with the setting the exercise asks for.
        name: what the line calls the answer.
        features: ``{label: function(model_or_layer) -> value}``; each value is read from both objects and
            compared with :func:`difference` (for example the number of trunk blocks, or parameters).
        hint: printed when a feature differs.

    Prints one line and returns ``True``/``False``/``None``.
    """
    if is_unanswered(answer):
        _not_answered(name)
        return None
    if not isinstance(answer, keras.layers.Layer):  # keras.Model is a Layer too
        _say(FAIL, name, f"should be a Keras model or layer, not {type(answer).__name__}.", hint)
        return False
    if type(answer) is not type(reference):
        _say(FAIL, name, f"is a {type(answer).__name__}; build a {type(reference).__name__}.", hint)
        return False
    values = {}
    for label, feature in features.items():
        try:
            values[label] = feature(answer)
        except Exception as error:
            reason = _show(f"{type(error).__name__}: {error}", limit=100).strip("'\"")
            _say(FAIL, name, f"its {label} could not be read ({reason}).", hint)
            return False
        if difference(values[label], feature(reference)):
            _say(FAIL, name, f"{label} {_show(values[label])}, not what the exercise asks for.", hint)
            return False
    _say(PASS, name, ", ".join(f"{label} {_show(value)}" for label, value in values.items()) + ".")
    return True


def count_parameters(model_or_layer):
    """Parameters of a built model or layer (a feature for :func:`check_built`)."""
    return int(model_or_layer.count_params())


def model_settings(settings):
    """``build_model``'s arguments as a dict, from a ``Profile`` (its ``.model``) or from such a dict."""
    return dict(getattr(settings, "model", settings))


_REFERENCES = {}  # (module, settings) -> model; a few small models, kept so a re-run check costs nothing
_MAX_REFERENCES = 8


def reference_model(module, builder="build_model", **settings):
    """``course_utils.models.<module>.<builder>(**settings)``, the model an exercise asks for, built once.

    The named checks build what they compare with here, so a check cell shows no answer; the cache makes
    running a check again (and the tests, which call each check several times) cheap. The models are only
    read (shapes, parameters), never trained.
    """
    key = (module, builder, repr(sorted(settings.items())))
    if key not in _REFERENCES:
        if len(_REFERENCES) >= _MAX_REFERENCES:
            _REFERENCES.pop(next(iter(_REFERENCES)))  # the oldest
        build = getattr(importlib.import_module(f"course_utils.models.{module}"), builder)
        _REFERENCES[key] = build(**settings)
    return _REFERENCES[key]


def check_computed(answer, expected, name, hint, slips=(), note=None, rtol=1e-3, atol=1e-4):
    """Compare a value the learner computed by hand with what the package's layer computed on the same inputs.

    Args:
        answer: the learner's array or tensor (``...``/``None``: not answered yet).
        expected: the layer's own result.
        name, note: as in :func:`check`.
        hint: printed after a wrong answer that matches none of the ``slips``.
        slips: ``[(value, hint), ...]``: what common slips give on the same inputs (the scale left out, the
            wrong axis); a wrong answer that matches one gets that slip's hint, which says what to fix.
        rtol, atol: float32 results of different backends and orders of operations differ in the last digits.
    """
    if not is_unanswered(answer):
        try:
            wrong = difference(answer, expected, rtol=rtol, atol=atol) is not None
        except Exception:  # check() below reports what cannot be compared
            wrong = False
        for value, slip_hint in slips if wrong else ():
            try:
                if difference(answer, value, rtol=rtol, atol=atol) is None:
                    hint = slip_hint
                    break
            except Exception:
                continue
    return check(answer, expected, name, hint=hint, note=note, rtol=rtol, atol=atol)


# --------------------------------------------------------------------------------------------
# 01 TokenLearner
# --------------------------------------------------------------------------------------------
def _transformer_blocks(model):
    from course_utils.models import token_learner as tl
    from course_utils.models.blocks import TransformerBlock
    from course_utils.models.common import find_layers

    return find_layers(model, TransformerBlock, tl.BUILDER)


def token_learner_tokens(model):
    """Shape of the tokens the model's TokenLearner (either variant) outputs."""
    from course_utils.models import token_learner as tl
    from course_utils.models.common import find_layer

    return tuple(find_layer(model, tl.TokenLearner, tl.BUILDER).output[0].shape)


def tokens_per_block(model):
    """How many tokens each Transformer block of a ``token_learner.build_model`` model receives, in order."""
    return [layer.input.shape[1] for layer in _transformer_blocks(model)]


def check_token_learner_tokens(answer_model, scores_per_head, settings, num_tokens=4, names=("vit_4", "scores_4")):
    """01, fewer learned tokens: the model, and the attention scores per head in its last block.

    ``settings`` is the notebook's profile (or its ``.model``); the check builds
    ``token_learner.build_model`` with ``num_tokens`` learned tokens itself and reads the expected score
    count from the shape of its last block's attention scores. ``names`` are the notebook's names of the
    answers, used in the printed lines (so in every named check below).
    """
    reference = reference_model("token_learner", **{**model_settings(settings), "num_tokens": num_tokens})
    built = check_built(
        answer_model,
        reference,
        names[0],
        {"TokenLearner output": token_learner_tokens, "parameters": count_parameters},
        hint="tl.build_model(num_tokens=..., **config.model).",
    )
    scores_shape = _transformer_blocks(reference)[-1].output[1].shape  # (batch, heads, tokens, tokens)
    scores = check(
        scores_per_head,
        int(np.prod(scores_shape[-2:])),
        names[1],
        hint="every head of a block scores each (query, key) pair of the tokens that block receives.",
        note="Attention costs tokens x tokens: halving the tokens quarters it.",
    )
    return combine(built, scores)


def check_token_learner_position(
    answer_model, answer_tokens_per_block, settings, token_learner_after=0, names=("vit_early", "tokens_early")
):
    """01, moving the TokenLearner: the model, and the number of tokens each block receives.

    The check builds the notebook's model (``settings``) with ``token_learner_after`` blocks before the
    TokenLearner and compares with it.
    """
    reference = reference_model(
        "token_learner", **{**model_settings(settings), "token_learner_after": token_learner_after}
    )
    built = check_built(
        answer_model,
        reference,
        names[0],
        {"tokens per block": tokens_per_block, "parameters": count_parameters},
        hint="token_learner_after is the number of blocks that run before the TokenLearner.",
    )
    tokens = check(
        answer_tokens_per_block,
        tokens_per_block(reference),
        names[1],
        hint="blocks before the TokenLearner see every patch, blocks after it see the learned tokens.",
        note="Same parameters, fewer tokens in more blocks: moving the module changes the cost, not the size.",
    )
    return combine(built, tokens)


def check_token_pooling(answer_tokens, learner, features, names=("my_tokens",)):
    """01, the pooling by hand: the learner's tokens against what ``learner`` (a ``TokenLearner``) returns.

    ``answer_tokens`` ``(batch, num_tokens, channels)`` must be computed from the layer's maps and
    ``features``; the layer is called again on ``features`` (inference mode) for the expected tokens.
    """
    expected, maps = learner(features, training=False)
    positions = features.shape[1] * features.shape[2]
    normalised = ops.einsum("bthw,bhwc->btc", maps, learner.norm(features)) / positions
    slips = [
        (expected * positions, "the layer takes the spatial *mean*: divide the weighted sum by h * w."),
        (normalised, "the maps are computed from the normalised features, but they weight the features "
                     "themselves."),
    ]
    return check_computed(
        answer_tokens,
        ops.convert_to_numpy(expected),
        names[0],
        hint="token i is the mean over the positions of map i times the features: "
        "keras.ops.einsum('bthw,bhwc->btc', maps, features) / (h * w).",
        slips=slips,
        note="One einsum turns h x w positions into the learned tokens; the maps decide what each one gathers.",
    )


# --------------------------------------------------------------------------------------------
# 02 CaiT
# --------------------------------------------------------------------------------------------
def _cait_blocks(model, kind):
    from course_utils.models import cait
    from course_utils.models.common import find_layers

    block_type = {"self": cait.SelfAttentionBlock, "class": cait.ClassAttentionBlock}[kind]
    return find_layers(model, block_type, cait.BUILDER)


def blocks_with_layer_scale(model):
    """How many self- and class-attention blocks of a ``cait.build_model`` model use LayerScale."""
    return sum(block.use_layer_scale for block in _cait_blocks(model, "self") + _cait_blocks(model, "class"))


def check_without_layer_scale(
    answer_model, layer_scale_parameters, settings, names=("cait_plain", "layer_scale_parameters"),
):
    """02, removing LayerScale: the model, and how many parameters LayerScale had added.

    The check builds the notebook's CaiT (``settings``) with and without LayerScale; the expected count is
    the difference of their parameter counts.
    """
    with_layer_scale = reference_model("cait", **{**model_settings(settings), "use_layer_scale": True})
    without = reference_model("cait", **{**model_settings(settings), "use_layer_scale": False})
    built = check_built(
        answer_model,
        without,
        names[0],
        {"blocks with LayerScale": blocks_with_layer_scale, "parameters": count_parameters},
        hint="cait.build_model has an argument use_layer_scale.",
    )
    blocks = blocks_with_layer_scale(with_layer_scale)
    count = check(
        layer_scale_parameters,
        with_layer_scale.count_params() - without.count_params(),
        names[1],
        hint="each residual branch has one factor per channel, and every block has two branches.",
        note=f"A tiny fraction of the {with_layer_scale.count_params():,}: LayerScale changes how the "
        f"{blocks} blocks start, not the model's size.",
    )
    return combine(built, count)


def relative_update(block, tokens):
    """How much a block changes its input: ``||block(tokens) - tokens|| / ||tokens||`` (inference mode)."""
    outputs = block(tokens, training=False)
    if isinstance(outputs, (list, tuple)):
        outputs = outputs[0]
    change = ops.sqrt(ops.sum(ops.square(outputs - tokens)))
    return float(ops.convert_to_numpy(change / ops.sqrt(ops.sum(ops.square(tokens)))))


def check_residual_update(
    answer_function, tokens, block_with, block_without, shrink, names=("relative_update", "shrink")
):
    """02, LayerScale at initialisation: the learner's update measure, and the factor LayerScale shrinks it by.

    ``answer_function(block, tokens)`` must return ``||block(tokens)[0] - tokens|| / ||tokens||``; it is
    compared with :func:`relative_update` on both blocks. ``shrink`` (a prediction) must lie within 50 %
    of the measured ratio of the two updates.
    """
    name = names[0]
    if is_unanswered(answer_function):
        _not_answered(name)
        return None
    measured = {"with": relative_update(block_with, tokens), "without": relative_update(block_without, tokens)}
    try:
        answers = {
            "with": _plain(answer_function(block_with, tokens)),
            "without": _plain(answer_function(block_without, tokens)),
        }
    except Exception as error:
        _say(FAIL, name, f"calling it failed ({type(error).__name__}: {error}).",
             "block(tokens) returns (outputs, attention); compare outputs with tokens.")
        return False
    if is_unanswered(answers["with"]) or is_unanswered(answers["without"]):
        _not_answered(name)
        function_ok = None
    else:
        function_ok = check(
            answers,
            measured,
            name,
            rtol=1e-3,
            hint="the norm of all entries is ops.sqrt(ops.sum(ops.square(...))); divide the norm of the "
            "change by the norm of the input.",
        )
    ratio = measured["with"] / measured["without"]
    prediction = check(
        shrink,
        ratio,
        names[1],
        rtol=0.5,
        hint="both residual branches of the block are multiplied by the LayerScale factors; what are they "
        "at initialisation?",
        note=f"Measured: the block changes its input by {measured['without']:.2%} without LayerScale and by "
        f"{measured['with']:.2%} with it, a factor of {ratio:.3f} (layer_scale_init = "
        f"{block_with.layer_scale_init:g}).",
    )
    return combine(function_ok, prediction)


def check_class_attention(
    answer_model, class_scores_shape, patch_scores_shape, settings, class_attention_depth=1,
    names=("cait_ca1", "class_scores_shape", "patch_scores_shape"),
):
    """02, class-attention depth: the model, and the shapes of the class-attention and patch-attention weights.

    The check builds the notebook's CaiT (``settings``) with ``class_attention_depth`` class-attention blocks.
    """
    reference = reference_model(
        "cait", **{**model_settings(settings), "class_attention_depth": class_attention_depth}
    )
    built = check_built(
        answer_model,
        reference,
        names[0],
        {
            "self-attention blocks": lambda model: len(_cait_blocks(model, "self")),
            "class-attention blocks": lambda model: len(_cait_blocks(model, "class")),
            "parameters": count_parameters,
        },
        hint="config.model already holds class_attention_depth: override it, {**config.model, ...: ...}.",
    )
    class_shape = tuple(_cait_blocks(reference, "class")[0].output[1].shape)
    patch_shape = tuple(_cait_blocks(reference, "self")[0].output[1].shape)
    class_ok = check(
        class_scores_shape,
        class_shape,
        names[1],
        hint="one query (the class token) per head, and keys from the class token and every patch; "
        "the batch axis is None.",
    )
    patch_ok = check(
        patch_scores_shape,
        patch_shape,
        names[2],
        hint="every patch is a query and every patch a key, per head; the batch axis is None.",
        note=f"Class attention scores {class_shape[-1]} keys per head, self-attention "
        f"{patch_shape[-2]} x {patch_shape[-1]}.",
    )
    return combine(built, class_ok, patch_ok)


def _head_channels(layer, tokens, head):
    """The slice of the channels that head ``head`` of an attention layer with ``layer.num_heads`` works on."""
    width = tokens.shape[-1] // layer.num_heads
    return slice(head * width, (head + 1) * width)


def check_class_attention_row(answer_row, answer_attended, layer, tokens, head, names=("row", "attended")):
    """02, one class-attention row by hand: head ``head``'s softmax row and weighted sum of the values.

    ``layer`` is a ``cait.ClassAttention`` and ``tokens`` ``(batch, 1 + patches, channels)`` its input. The
    expected row is the layer's own weights for that head, ``(batch, 1 + patches)``; the expected weighted
    sum ``(batch, head channels)`` applies that row to the head's part of ``layer.value(tokens)``.
    """
    _, weights = layer(tokens, training=False)
    channels = _head_channels(layer, tokens, head)
    width = channels.stop - channels.start
    query = ops.convert_to_numpy(layer.query(tokens[:, :1]))[..., channels]
    keys = ops.convert_to_numpy(layer.key(tokens))[..., channels]
    values = ops.convert_to_numpy(layer.value(tokens))[..., channels]
    expected_row = ops.convert_to_numpy(weights)[:, head]
    logits = np.einsum("bqc,bkc->bk", query, keys)
    row_ok = check_computed(
        answer_row,
        expected_row,
        names[0],
        hint="scores = the class token's query times every key, divided by sqrt(head width); then a softmax "
        "over the keys (the last axis).",
        slips=[
            (ops.convert_to_numpy(ops.softmax(logits, axis=-1)), "scale the scores by 1 / sqrt(head width) "
             "before the softmax, as the layer does."),
            (ops.convert_to_numpy(ops.softmax(logits / np.sqrt(tokens.shape[-1]), axis=-1)),
             "the scale is 1 / sqrt of one head's width, not of the whole token's."),
            (ops.convert_to_numpy(ops.softmax(logits / np.sqrt(width), axis=0)),
             "the softmax runs over the keys (the last axis), not over the images."),
        ],
        note="Each row sums to one over the class token and the patches: the map the notebook draws is "
        "this row without its first entry.",
    )
    attended_ok = check_computed(
        answer_attended,
        np.einsum("bk,bkc->bc", expected_row, values),
        names[1],
        hint="weight the values of every token, the class token's included, by the row and sum over the "
        "tokens: keras.ops.einsum('bk,bkc->bc', row, values).",
        slips=[(np.einsum("bk,bkc->bc", expected_row, keys), "the row weights the values, not the keys.")],
        note="That is one head's share of the class token's update; the layer joins the heads and applies "
        "its output projection.",
    )
    return combine(row_ok, attended_ok)


# --------------------------------------------------------------------------------------------
# 03 PatchConvNet
# --------------------------------------------------------------------------------------------
def attention_map_shape(model):
    """Shape of the attention map that ``patch_convnet.visualization_model(model)`` outputs."""
    from course_utils.models import patch_convnet

    return tuple(patch_convnet.visualization_model(model).output[patch_convnet.ATTENTION_OUTPUT].shape)


def check_trunk_depth(
    answer_model, params_per_block, map_shape, settings, extra_blocks=2,
    names=("deeper", "params_per_block", "map_shape"),
):
    """03, a deeper trunk: the model, the parameters one trunk block adds, and the attention map's shape.

    The check builds the notebook's PatchConvNet (``settings``) as it is and with ``extra_blocks`` more trunk
    blocks; the expected parameters per block are the difference of the two, divided by ``extra_blocks``.
    """
    from course_utils.models import patch_convnet

    def trunk_depth(model):
        return len(patch_convnet.trunk_blocks(model))

    settings = model_settings(settings)
    baseline = reference_model("patch_convnet", **settings)
    reference = reference_model("patch_convnet", **{**settings, "depth": settings["depth"] + extra_blocks})
    built = check_built(
        answer_model,
        reference,
        names[0],
        {"trunk blocks": trunk_depth, "parameters": count_parameters},
        hint="config.model already holds depth: override it, {**config.model, 'depth': ...}.",
    )
    per_block = check(
        params_per_block,
        (reference.count_params() - baseline.count_params()) / extra_blocks,
        names[1],
        hint="sum the sizes of one trunk block's weights, pc.trunk_blocks(model)[0].weights.",
    )
    shape = check(
        map_shape,
        attention_map_shape(reference),
        names[2],
        hint="(batch, heads, grid, grid); the stem divides the image side by config.model['patch_size'] and "
        "no trunk block changes the grid.",
        note="The trunk is a column: however deep, the map keeps one weight per stem patch.",
    )
    return combine(built, per_block, shape)


def class_token_self_weight(pooling, patches):
    """The weight the class token of an ``AttentionPooling`` gives to itself, ``(batch, heads)``.

    Read from the layer's attention step alone (``AttentionPooling.attend``, inference mode): the full
    softmax row over ``[class token, patches]`` whose first entry ``AttentionPooling`` leaves out of the
    map it returns.
    """
    _, _, row = pooling.attend(patches, training=False)
    return ops.convert_to_numpy(row[:, :, 0])


def check_pooling_weights(pooling, patches, patch_weight_sums, self_weight, names=("patch_weight_sums", "self_weight")):
    """03, what the attention-pooling weights sum to: their sum per image and head, and what is left over.

    ``pooling`` is the learner's ``AttentionPooling`` and ``patches`` the input it was called on. The
    expected sums come from calling the layer again (inference mode); the expected self-weight from the
    layer's full attention row (:func:`class_token_self_weight`), which the layer itself never returns.
    """
    _, weights = pooling(patches, training=False)
    sums = check(
        patch_weight_sums,
        ops.convert_to_numpy(ops.sum(weights, axis=-1)),
        names[0],
        rtol=1e-4,
        atol=1e-6,
        hint="weights has shape (batch, heads, patches): sum over the last axis.",
    )
    expected_self = class_token_self_weight(pooling, patches)
    itself = check(
        self_weight,
        expected_self,
        names[1],
        rtol=1e-4,
        atol=1e-6,
        hint="the softmax runs over the class token and the patches together, and the layer returns only "
        "the patches' part of it.",
        note=f"Patch weights plus the class token's weight on itself sum to one; here the class token keeps "
        f"{float(np.mean(expected_self)):.1%} on average.",
    )
    return combine(sums, itself)


def _sorted_indices(indices):
    """Each image's patch indices in increasing order: which patches are hidden matters, not their order."""
    return np.sort(np.asarray(_plain(indices)).astype(int), axis=-1)


def _check_patch_sets(answer, expected, name, hint, slips):
    """:func:`check_computed` for each image's set of patch indices (``expected`` sorted per image).

    A wrong answer of the right shape is described by how many images get other patches, since the size of
    a difference between indices means nothing.
    """
    if is_unanswered(answer):
        return check(answer, expected, name)
    try:
        answer = _sorted_indices(answer)
    except (TypeError, ValueError):
        return check(answer, expected, name, hint=hint)  # reports what the answer is instead
    if answer.shape != expected.shape or np.array_equal(answer, expected):
        return check(answer, expected, name, hint=hint, rtol=0, atol=0)
    hint = next((slip_hint for value, slip_hint in slips if np.array_equal(answer, value)), hint)
    differ = int(np.sum(np.any(answer != expected, axis=1)))
    _say(FAIL, name, f"{differ} of {len(expected)} images get other patches than their {expected.shape[1]} "
         "most-weighted ones.", hint)
    return False


def check_top_patches(answer_hidden, answer_cells, maps, count, names=("hidden", "hidden_cells")):
    """03, rank-based masking by hand: each image's ``count`` most-weighted patches, and the cells they cover.

    ``maps`` ``(images, heads, rows, columns)`` are pooling weights on the patch grid. The expected patches
    are the first ``count`` of :func:`course_utils.masking.rank_patches`, the ranking ``masking_test`` hides
    by (compared as sets: their order does not matter); the expected cells a boolean
    ``(images, rows, columns)`` mask, True where a patch is hidden.
    """
    from course_utils.masking import rank_patches

    maps = np.asarray(_plain(maps))
    images, rows, columns = maps.shape[0], maps.shape[2], maps.shape[3]
    ranking = rank_patches(maps)
    expected = ranking[:, :count]
    hidden_ok = _check_patch_sets(
        answer_hidden,
        np.sort(expected, axis=-1),
        names[0],
        hint="average the map over the heads (axis 1), flatten each image's grid row by row, and keep the "
        "indices of the largest values: np.argsort(-flat, axis=1)[:, :count].",
        slips=[
            (np.sort(ranking[:, -count:], axis=-1), "these are the *least*-weighted patches: sort the "
             "weights in decreasing order."),
            (np.sort(rank_patches(maps[:, :1])[:, :count], axis=-1), "average over all heads first, "
             "not head 0 alone."),
        ],
    )
    cells = np.zeros((images, rows * columns), dtype=bool)
    np.put_along_axis(cells, expected, True, axis=1)
    cells_ok = check_computed(
        answer_cells,
        cells.reshape(images, rows, columns).astype(float),
        names[1],
        hint="index p of the flattened grid is cell (p // columns, p % columns): mark those cells True.",
        slips=[(np.swapaxes(cells.reshape(images, columns, rows), 1, 2).astype(float),
                "rows and columns are swapped: index p is row p // columns, column p % columns.")],
        note=f"These {count} cells are what mask_patches paints over for the 'most weighted' column of the "
        "masking table.",
        rtol=0,
        atol=0,
    )
    return combine(hidden_ok, cells_ok)


# --------------------------------------------------------------------------------------------
# 04 Focal modulation
# --------------------------------------------------------------------------------------------
def receptive_field(kernel_sizes):
    """Side, in tokens, of what the last of stacked stride-1 convolutions with these kernels sees."""
    return 1 + sum(size - 1 for size in kernel_sizes)


def _gates_shape(layer, feature_map):
    _, gates, _ = layer(feature_map)
    return tuple(gates.shape)


def _parameters_on(feature_map):
    """A :func:`check_built` feature: parameters of a layer, called once on ``feature_map`` if not yet built."""

    def parameters(layer):
        if not layer.built:
            layer(feature_map)
        return count_parameters(layer)

    return parameters


def check_focal_levels(
    answer_layer, gates_shape, answer_receptive_field, feature_map, focal_level=3,
    names=("layer_3", "gates_shape_3", "field_3"),
):
    """04, more focal levels: the layer, the shape of its gates, and the receptive field of its last level.

    The check builds ``FocalModulation(focal_level=focal_level)`` (default window and factor) and calls both
    layers on ``feature_map``; the expected receptive field follows from its kernel sizes
    (:func:`receptive_field`).
    """
    from course_utils.models import focal_modulation

    reference_layer = focal_modulation.FocalModulation(focal_level=focal_level)
    features = {
        "gates": lambda layer: _gates_shape(layer, feature_map),
        "kernel sizes": lambda layer: list(layer.kernel_sizes),
        "parameters": _parameters_on(feature_map),
    }
    hint = "fm.FocalModulation(focal_level=...), with the default window and factor."
    built = check_built(answer_layer, reference_layer, names[0], features, hint=hint)
    gates = check(
        gates_shape,
        _gates_shape(reference_layer, feature_map),
        names[1],
        hint="one gate per position and level, plus one for the global context.",
    )
    field = receptive_field(reference_layer.kernel_sizes)
    height, width = feature_map.shape[1], feature_map.shape[2]
    field_ok = check(
        answer_receptive_field,
        field,
        names[2],
        hint="each stacked k x k convolution widens what the next one sees by k - 1.",
        note=f"Level {reference_layer.focal_level} sees {field} x {field} tokens"
        + (f", more than the whole {height} x {width} map." if field >= max(height, width) else "."),
    )
    return combine(built, gates, field_ok)


def check_focal_window(
    answer_layer, kernel_sizes, extra_parameters, feature_map, focal_window=5, focal_level=2,
    names=("layer_w5", "kernels_w5", "extra_parameters"),
):
    """04, a wider focal window: the layer, its kernel sizes, and the parameters it adds over the default window.

    The check builds ``FocalModulation`` with ``focal_level`` levels, once with ``focal_window`` and once
    with the default window, and calls every layer on ``feature_map`` (if not yet built), so their
    parameters exist.
    """
    from course_utils.models import focal_modulation

    reference_layer = focal_modulation.FocalModulation(focal_level=focal_level, focal_window=focal_window)
    baseline_layer = focal_modulation.FocalModulation(focal_level=focal_level)
    parameters = _parameters_on(feature_map)
    built = check_built(
        answer_layer,
        reference_layer,
        names[0],
        {"kernel sizes": lambda layer: list(layer.kernel_sizes), "parameters": parameters},
        hint="fm.FocalModulation(focal_level=2, focal_window=...).",
    )
    kernels = check(
        kernel_sizes,
        list(reference_layer.kernel_sizes),
        names[1],
        hint="level l (counting from 0) has the kernel focal_factor * l + focal_window.",
    )
    extra = check(
        extra_parameters,
        parameters(reference_layer) - parameters(baseline_layer),
        names[2],
        hint="a depth-wise k x k convolution has one k x k filter per channel, and no bias here.",
        note="Linear in the channels: a wider window is cheap context, unlike a full k x k convolution "
        "(channels x channels x k x k).",
    )
    return combine(built, kernels, extra)


def _gated_sum(layer, feature_map, stacked=True, with_global=True):
    """The sum over focal levels of gate times context, computed from ``layer``'s own sub-layers.

    With the defaults this is what ``FocalModulation`` computes before ``h``; the switches give the slips
    :func:`check_gated_sum` recognises (levels side by side instead of stacked, no global level).
    """
    channels = layer.channels
    _, first, gates = ops.split(layer.f(feature_map), [channels, 2 * channels], axis=-1)
    context, aggregated = first, 0.0
    for level, conv in enumerate(layer.focal_layers):
        context = conv(context if stacked else first)
        aggregated = aggregated + gates[..., level : level + 1] * context
    if with_global:
        mean = ops.mean(context, axis=(1, 2), keepdims=True)
        aggregated = aggregated + gates[..., layer.focal_level :] * ops.gelu(mean, approximate=False)
    return aggregated


def check_gated_sum(answer_modulator, layer, feature_map, names=("modulator",)):
    """04, the gated sum by hand: the learner's modulator against the one ``layer`` (a ``FocalModulation``) returns.

    The layer is called on ``feature_map`` (inference mode) for the expected modulator
    ``h(sum_l gate_l * context_l)``.
    """
    _, _, expected = layer(feature_map, training=False)
    slips = [
        (layer.h(_gated_sum(layer, feature_map, with_global=False)), "the last gate weights the global level: "
         "GELU of the spatial mean of the last level's context."),
        (layer.h(_gated_sum(layer, feature_map, stacked=False)), "each level convolves the previous level's "
         "context, not the first one: the levels are stacked."),
        (_gated_sum(layer, feature_map), "the modulator is layer.h applied to the gated sum."),
        (layer.h(_gated_sum(layer, feature_map) / (layer.focal_level + 1)), "this layer does not divide the "
         "sum by the number of levels (normalize_modulator=False)."),
    ]
    return check_computed(
        answer_modulator,
        ops.convert_to_numpy(expected),
        names[0],
        hint="for each level, convolve the previous context and add gate * context; then add the last gate "
        "times the global context; finally apply layer.h.",
        slips=slips,
        note="Context gathered at every range, mixed per position by the gates: no attention scores anywhere.",
    )


# --------------------------------------------------------------------------------------------
# 05 Temporal Latent Bottleneck
# --------------------------------------------------------------------------------------------
def slow_stream_attention_shape(model):
    """``(chunks, heads, latents, tokens per chunk)``: the per-image shape of a TLB's slow-stream attention."""
    from course_utils.models import temporal_latent_bottleneck as tlb

    return tuple(tlb.visualization_model(model).output[tlb.ATTENTION_OUTPUT].shape[1:])


def _tlb_cell(model):
    """The recurrent cell of a ``temporal_latent_bottleneck.build_model`` model."""
    from course_utils.models import temporal_latent_bottleneck as tlb
    from course_utils.models.common import find_layer

    return find_layer(model, tlb.TemporalLatentBottleneck, tlb.BUILDER).cell


def slow_stream_size(model):
    """How many numbers the slow stream carries from one chunk to the next (latents x width)."""
    return int(_tlb_cell(model).state_size)


def check_chunk_size(answer_model, num_chunks, scores_shape, settings, chunk_size=32,
                     names=("model_32", "num_chunks_32", "scores_shape_32")):
    """05, another chunk size: the model, its number of chunks, and the shape of its per-chunk attention.

    The check builds the notebook's model (``settings``) with chunks of ``chunk_size`` tokens and reads the
    expected values through its visualization model.
    """
    reference = reference_model("temporal_latent_bottleneck", **{**model_settings(settings), "chunk_size": chunk_size})
    expected_shape = slow_stream_attention_shape(reference)
    built = check_built(
        answer_model, reference, names[0],
        {"slow-stream attention per image": slow_stream_attention_shape, "parameters": count_parameters},
        hint="tlb.build_model(**{**settings, \"chunk_size\": ...}).",
    )
    chunks = check(num_chunks, expected_shape[0], names[1],
                   hint="the patch grid holds (image_size / patch_size) ** 2 tokens; each chunk takes chunk_size.")
    shape = check(scores_shape, expected_shape, names[2],
                  hint="one map per chunk, head and latent, over the tokens of that chunk.",
                  note="Fewer recurrent steps, each attending over more tokens.")
    return combine(built, chunks, shape)


def check_bottleneck_size(answer_model, memory_numbers, chunk_numbers, fewer_parameters, settings, num_latents=2,
                          names=("model_2_latents", "memory_numbers", "chunk_numbers", "fewer_parameters")):
    """05, the size of the bottleneck: a model with fewer latents, what the slow stream carries, what it costs.

    The check builds the notebook's model (``settings``) as it is and with ``num_latents`` latents. Expected:
    the slow stream's size in the notebook's model (latents x width), one chunk's size at the input
    (chunk_size x width), and how many parameters the model with fewer latents has fewer.
    """
    settings = model_settings(settings)
    model = reference_model("temporal_latent_bottleneck", **settings)
    reference = reference_model("temporal_latent_bottleneck", **{**settings, "num_latents": num_latents})
    cell = _tlb_cell(model)
    built = check_built(answer_model, reference, names[0],
                        {"slow-stream size": slow_stream_size, "parameters": count_parameters},
                        hint="tlb.build_model(**{**settings, \"num_latents\": ...}).")
    memory = check(memory_numbers, slow_stream_size(model), names[1],
                   hint="the slow stream is num_latents vectors of width embed_dim.")
    chunk = check(chunk_numbers, cell.chunk_size * cell.embed_dim, names[2],
                  hint="a chunk is chunk_size tokens of width embed_dim.")
    fewer = check(fewer_parameters, count_parameters(model) - count_parameters(reference), names[3],
                  hint="which weights have a size that depends on the number of latents? Attention weights act "
                       "on each vector alone, whatever the number of vectors.",
                  note="Only the learned initial latents depend on their number: every attention block maps "
                       "each vector with the same weights, so the memory's size is nearly free in parameters "
                       "and costs only compute.")
    return combine(built, memory, chunk, fewer)


def _token_sequence(embedding, images):
    """The patch tokens of a ``ChunkedPatchEmbedding`` before it cuts them: ``(batch, tokens, width)``."""
    return embedding.norm(embedding.positions(embedding.patches(images)))


def _first_step(cell, chunk, slow, cross_attention_every):
    """The slow stream after ``cell`` reads ``chunk``, with the perceptual cross-attention every so many layers.

    ``cross_attention_every=cell.r`` is what the cell does; other values (or ``None``: never) give the slips
    :func:`check_chunk_step` recognises.
    """
    fast = chunk
    for i, self_attention in enumerate(cell.self_attention):
        fast, _ = self_attention(fast)
        if cross_attention_every and i % cross_attention_every == 0:
            block = cell.cross_attention[min(i // cross_attention_every, len(cell.cross_attention) - 1)]
            fast, _ = block(fast, slow)
    slow, _ = cell.latent_update(slow, fast)
    return slow


def check_chunk_step(answer_chunks, answer_slow, embedding, bottleneck, images, names=("chunks", "slow_1")):
    """05, chunking and one recurrent step by hand, against the package's layers on the same images.

    ``embedding`` is a ``ChunkedPatchEmbedding`` and ``bottleneck`` a ``TemporalLatentBottleneck`` (both
    built). Expected: ``embedding(images)``, the chunks ``(batch, chunks, chunk_size, width)``; and the slow
    stream after the first chunk ``(batch, latents, width)``, which the bottleneck returns when it is given
    that chunk alone.
    """
    chunks = embedding(images)
    tokens = _token_sequence(embedding, images)
    batch, length, width = tokens.shape
    size = chunks.shape[2]
    strided = ops.transpose(ops.reshape(tokens, (batch, size, length // size, width)), (0, 2, 1, 3))
    chunks_ok = check_computed(
        answer_chunks,
        ops.convert_to_numpy(chunks),
        names[0],
        hint="cut the sequence into consecutive runs of chunk_size tokens: "
        "keras.ops.reshape(tokens, (batch, tokens // chunk_size, chunk_size, width)).",
        slips=[(strided, "a chunk holds chunk_size *consecutive* tokens (a band of the image), not every "
                "(tokens / chunk_size)-th token.")],
        note="In raster order, so each chunk is a band of the image and the model reads it top to bottom.",
    )
    expected_slow, _ = bottleneck(chunks[:, :1], training=False)
    cell = bottleneck.cell
    start = ops.tile(ops.expand_dims(ops.cast(bottleneck.initial_latents, tokens.dtype), 0), (batch, 1, 1))
    slips = [
        (_first_step(cell, chunks[:, 0], start, None), "the fast stream reads the slow stream too: a "
         "cross-attention block after self-attention layers 0, r, 2r, ..."),
        (_first_step(cell, chunks[:, 0], start, 1), "a cross-attention block follows self-attention layers "
         "0, r, 2r, ... only (i % r == 0), the block cell.cross_attention[i // r]."),
    ]
    slow_ok = check_computed(
        answer_slow,
        ops.convert_to_numpy(expected_slow),
        names[1],
        hint="run the first chunk through the fast stream (self-attention, and after layers 0, r, 2r, ... "
        "cross-attention to the latents), then let the latents read it: cell.latent_update(slow, fast).",
        slips=slips if cell.r > 1 else slips[:1],
        note="The latents are all that carries this chunk on to the next step.",
    )
    return combine(chunks_ok, slow_ok)
