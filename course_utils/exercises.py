"""Checks for the notebooks' exercises: is the learner's answer of the right shape, size or effect?

Each exercise in a notebook has an answer cell, whose blanks are the placeholders ``...`` (or ``None``),
and a check cell. The check cell computes what is expected from ``course_utils`` itself (it builds the
model with the intended setting and reads its shapes or counts its parameters; nothing is typed in by
hand) and passes it with the answer to :func:`check`, :func:`check_built` or one of the named checks at
the end of this module. A check prints one line per part of the answer and returns

* ``True``, printing ``✓``: every part is right;
* ``False``, printing ``✗``: a part is wrong; the line says which, how, and gives a hint;
* ``None``, printing ``…``: nothing is wrong yet, but some part is still a placeholder. An unanswered
  exercise never raises, so a notebook runs from top to bottom (papermill, CI) with every exercise blank.

Only ``keras.ops`` and NumPy are used, so the checks behave the same on TensorFlow, JAX and PyTorch.
The notebook conventions (cell markers, the collapsed solutions) are described in ``CONTRIBUTING.md``.
"""

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


def check_token_learner_tokens(answer_model, reference_model, scores_per_head, names=("vit_4", "scores_4")):
    """01, fewer learned tokens: the model, and the attention scores per head in its last block.

    ``reference_model`` is ``token_learner.build_model(num_tokens=S, ...)`` built by the check cell;
    the expected score count is read from the shape of its last block's attention scores. ``names`` are
    the notebook's names of the two answers, used in the printed lines (so in every named check below).
    """
    built = check_built(
        answer_model,
        reference_model,
        names[0],
        {"TokenLearner output": token_learner_tokens, "parameters": count_parameters},
        hint="tl.build_model(num_tokens=..., **config.model).",
    )
    scores_shape = _transformer_blocks(reference_model)[-1].output[1].shape  # (batch, heads, tokens, tokens)
    scores = check(
        scores_per_head,
        int(np.prod(scores_shape[-2:])),
        names[1],
        hint="every head of a block scores each (query, key) pair of the tokens that block receives.",
        note="Attention costs tokens x tokens: halving the tokens quarters it.",
    )
    return combine(built, scores)


def check_token_learner_position(
    answer_model, reference_model, answer_tokens_per_block, names=("vit_early", "tokens_early")
):
    """01, moving the TokenLearner: the model, and the number of tokens each block receives."""
    built = check_built(
        answer_model,
        reference_model,
        names[0],
        {"tokens per block": tokens_per_block, "parameters": count_parameters},
        hint="token_learner_after is the number of blocks that run before the TokenLearner.",
    )
    tokens = check(
        answer_tokens_per_block,
        tokens_per_block(reference_model),
        names[1],
        hint="blocks before the TokenLearner see every patch, blocks after it see the learned tokens.",
        note="Same parameters, fewer tokens in more blocks: moving the module changes the cost, not the size.",
    )
    return combine(built, tokens)


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
    answer_model, reference_model, with_layer_scale_model, layer_scale_parameters,
    names=("cait_plain", "layer_scale_parameters"),
):
    """02, removing LayerScale: the model, and how many parameters LayerScale had added.

    ``reference_model`` is built without LayerScale, ``with_layer_scale_model`` with it (same config);
    the expected count is the difference of their parameter counts.
    """
    built = check_built(
        answer_model,
        reference_model,
        names[0],
        {"blocks with LayerScale": blocks_with_layer_scale, "parameters": count_parameters},
        hint="cait.build_model has an argument use_layer_scale.",
    )
    blocks = blocks_with_layer_scale(with_layer_scale_model)
    count = check(
        layer_scale_parameters,
        with_layer_scale_model.count_params() - reference_model.count_params(),
        names[1],
        hint="each residual branch has one factor per channel, and every block has two branches.",
        note=f"A tiny fraction of the {with_layer_scale_model.count_params():,}: LayerScale changes how the "
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
    answer_model, reference_model, class_scores_shape, patch_scores_shape,
    names=("cait_ca1", "class_scores_shape", "patch_scores_shape"),
):
    """02, class-attention depth: the model, and the shapes of the class-attention and patch-attention weights."""
    built = check_built(
        answer_model,
        reference_model,
        names[0],
        {
            "self-attention blocks": lambda model: len(_cait_blocks(model, "self")),
            "class-attention blocks": lambda model: len(_cait_blocks(model, "class")),
            "parameters": count_parameters,
        },
        hint="config.model already holds class_attention_depth: override it, {**config.model, ...: ...}.",
    )
    class_shape = tuple(_cait_blocks(reference_model, "class")[0].output[1].shape)
    patch_shape = tuple(_cait_blocks(reference_model, "self")[0].output[1].shape)
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


# --------------------------------------------------------------------------------------------
# 03 PatchConvNet
# --------------------------------------------------------------------------------------------
def attention_map_shape(model):
    """Shape of the attention map that ``patch_convnet.visualization_model(model)`` outputs."""
    from course_utils.models import patch_convnet

    return tuple(patch_convnet.visualization_model(model).output[patch_convnet.ATTENTION_OUTPUT].shape)


def check_trunk_depth(
    answer_model, reference_model, baseline_model, params_per_block, map_shape,
    names=("deeper", "params_per_block", "map_shape"),
):
    """03, a deeper trunk: the model, the parameters one trunk block adds, and the attention map's shape.

    The expected parameters per block are the difference between ``reference_model`` and
    ``baseline_model`` (the profile's depth), divided by the number of added blocks.
    """
    from course_utils.models import patch_convnet

    def trunk_depth(model):
        return len(patch_convnet.trunk_blocks(model))

    built = check_built(
        answer_model,
        reference_model,
        names[0],
        {"trunk blocks": trunk_depth, "parameters": count_parameters},
        hint="config.model already holds depth: override it, {**config.model, 'depth': ...}.",
    )
    added = trunk_depth(reference_model) - trunk_depth(baseline_model)
    per_block = check(
        params_per_block,
        (reference_model.count_params() - baseline_model.count_params()) / added,
        names[1],
        hint="sum the sizes of one trunk block's weights, pc.trunk_blocks(model)[0].weights.",
    )
    shape = check(
        map_shape,
        attention_map_shape(reference_model),
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
    answer_layer, reference_layer, feature_map, gates_shape, answer_receptive_field,
    names=("layer_3", "gates_shape_3", "field_3"),
):
    """04, more focal levels: the layer, the shape of its gates, and the receptive field of its last level.

    Both layers are called on ``feature_map``; the expected receptive field follows from the reference's
    kernel sizes (:func:`receptive_field`).
    """
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
    answer_layer, reference_layer, baseline_layer, feature_map, kernel_sizes, extra_parameters,
    names=("layer_w5", "kernels_w5", "extra_parameters"),
):
    """04, a wider focal window: the layer, its kernel sizes, and the parameters it adds over ``baseline_layer``.

    All layers are called on ``feature_map`` (if not yet built), so their parameters exist.
    """
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


def check_chunk_size(answer_model, reference_model, num_chunks, scores_shape,
                     names=("model_32", "num_chunks_32", "scores_shape_32")):
    """05, another chunk size: the model, its number of chunks, and the shape of its per-chunk attention.

    The expected values are read from ``reference_model`` (built by the check cell with the chunk size the
    exercise asks for) through its visualization model.
    """
    expected_shape = slow_stream_attention_shape(reference_model)
    built = check_built(
        answer_model, reference_model, names[0],
        {"slow-stream attention per image": slow_stream_attention_shape, "parameters": count_parameters},
        hint="tlb.build_model(**{**settings, \"chunk_size\": ...}).",
    )
    chunks = check(num_chunks, expected_shape[0], names[1],
                   hint="the patch grid holds (image_size / patch_size) ** 2 tokens; each chunk takes chunk_size.")
    shape = check(scores_shape, expected_shape, names[2],
                  hint="one map per chunk, head and latent, over the tokens of that chunk.",
                  note="Half as many recurrent steps, each attending over twice as many tokens.")
    return combine(built, chunks, shape)


def check_bottleneck_size(answer_model, reference_model, model, memory_numbers, chunk_numbers, fewer_parameters,
                          names=("model_2_latents", "memory_numbers", "chunk_numbers", "fewer_parameters")):
    """05, the size of the bottleneck: a model with fewer latents, what the slow stream carries, what it costs.

    ``model`` is the notebook's settings as built; ``reference_model`` the same with the number of latents
    the exercise asks for. Expected: the slow stream's size in ``model`` (latents x width), one chunk's size at
    the input (chunk_size x width), and how many parameters ``reference_model`` has fewer than ``model``.
    """
    cell = _tlb_cell(model)
    built = check_built(answer_model, reference_model, names[0],
                        {"slow-stream size": slow_stream_size, "parameters": count_parameters},
                        hint="tlb.build_model(**{**settings, \"num_latents\": ...}).")
    memory = check(memory_numbers, slow_stream_size(model), names[1],
                   hint="the slow stream is num_latents vectors of width embed_dim.")
    chunk = check(chunk_numbers, cell.chunk_size * cell.embed_dim, names[2],
                  hint="a chunk is chunk_size tokens of width embed_dim.")
    fewer = check(fewer_parameters, count_parameters(model) - count_parameters(reference_model), names[3],
                  hint="which weights have a size that depends on the number of latents? Attention weights act "
                       "on each vector alone, whatever the number of vectors.",
                  note="Only the learned initial latents depend on their number: every attention block maps "
                       "each vector with the same weights, so the memory's size is nearly free in parameters "
                       "and costs only compute.")
    return combine(built, memory, chunk, fewer)
