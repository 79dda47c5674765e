"""CaiT layers, blocks, builder, visualization and profiles, on the active Keras backend."""

import keras
import numpy as np
import pytest

from course_utils.analysis import Analysis
from course_utils.models import cait
from helpers import check_layer, check_model_round_trip, random_inputs, train_one_step

TINY = dict(image_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2, class_attention_depth=2,
            mlp_ratio=2.0)


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


def _softmax(x):
    x = np.exp(x - x.max(axis=-1, keepdims=True))
    return x / x.sum(axis=-1, keepdims=True)


def _uint8_images(batch=2, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(batch, size, size, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------
def test_talking_head_attention(tmp_path):
    layer = check_layer(
        cait.TalkingHeadAttention,
        dict(num_heads=2, qkv_bias=True, attention_dropout=0.1, projection_dropout=0.1),
        (2, 5, 8), [(2, 5, 8), (2, 2, 5, 5)], tmp_path,
    )
    assert len(layer.trainable_weights) == 8  # qkv, two head mixers and the projection, each with a bias


def test_talking_head_attention_with_identity_mixing_is_multi_head_attention():
    """With both head mixers set to the identity, the layer is ordinary multi-head attention."""
    heads, channels = 2, 8
    layer = cait.TalkingHeadAttention(num_heads=heads)
    x = random_inputs((2, 5, channels))
    layer(x)
    for mixer in (layer.pre_softmax_mix, layer.post_softmax_mix):
        mixer.kernel.assign(np.eye(heads, dtype="float32"))
        mixer.bias.assign(np.zeros(heads, dtype="float32"))
    outputs, weights = layer(x)

    qkv = x @ _numpy(layer.qkv.kernel) + _numpy(layer.qkv.bias)
    q, k, v = np.split(qkv, 3, axis=-1)
    split = lambda t: t.reshape(2, 5, heads, channels // heads).transpose(0, 2, 1, 3)  # noqa: E731
    expected_weights = _softmax(split(q) @ split(k).transpose(0, 1, 3, 2) / np.sqrt(channels // heads))
    merged = (expected_weights @ split(v)).transpose(0, 2, 1, 3).reshape(2, 5, channels)
    expected = merged @ _numpy(layer.projection.kernel) + _numpy(layer.projection.bias)
    np.testing.assert_allclose(_numpy(weights), expected_weights, atol=1e-5)
    np.testing.assert_allclose(_numpy(outputs), expected, atol=1e-5)


def _head_mix(scores, dense):
    """numpy: a Dense layer (kernel ``(heads, heads)``, bias) applied across the head axis of ``scores``."""
    return np.einsum("bhqk,hg->bgqk", scores, _numpy(dense.kernel)) + _numpy(dense.bias)[None, :, None, None]


def _talking_heads_reference(layer, x):
    """numpy: a TalkingHeadAttention's weights, outputs and unmixed logits for ``x``, from its own weights."""
    batch, tokens, channels = x.shape
    heads = layer.num_heads
    qkv = x @ _numpy(layer.qkv.kernel) + _numpy(layer.qkv.bias)
    split = lambda t: t.reshape(batch, tokens, heads, channels // heads).transpose(0, 2, 1, 3)  # noqa: E731
    q, k, v = (split(t) for t in np.split(qkv, 3, axis=-1))
    logits = q @ k.transpose(0, 1, 3, 2) / np.sqrt(channels // heads)
    weights = _head_mix(_softmax(_head_mix(logits, layer.pre_softmax_mix)), layer.post_softmax_mix)
    merged = (weights @ v).transpose(0, 2, 1, 3).reshape(batch, tokens, channels)
    return weights, merged @ _numpy(layer.projection.kernel) + _numpy(layer.projection.bias), logits


def _set_mix(dense, kernel, bias=None):
    dense.kernel.assign(np.asarray(kernel, "float32"))
    dense.bias.assign(np.zeros(len(kernel), "float32") if bias is None else np.asarray(bias, "float32"))


def _talking_heads_layer(x, seed=0):
    """A built TalkingHeadAttention (3 heads) whose query/key/value kernel is at a trained scale, so that
    its attention rows are far from uniform (timm's 0.02 initialisation leaves them nearly flat)."""
    layer = cait.TalkingHeadAttention(num_heads=3)
    layer(x)
    channels = x.shape[-1]
    kernel = np.random.default_rng(seed).normal(size=(channels, 3 * channels)) / np.sqrt(channels)
    layer.qkv.kernel.assign(kernel.astype("float32"))
    return layer


# Head g of the mixed scores takes head SOURCE[g] of the unmixed ones (Dense kernel[SOURCE[g], g] = 1).
SOURCE = np.array([2, 0, 1])


@pytest.mark.parametrize("mixer", ["pre_softmax_mix", "post_softmax_mix"])
def test_talking_head_mix_permutes_the_heads(mixer):
    """A permutation in one mixer (the other the identity) hands each head the attention of another head."""
    x = random_inputs((2, 5, 12))
    layer = _talking_heads_layer(x)
    permutation = np.zeros((3, 3), "float32")
    permutation[SOURCE, np.arange(3)] = 1.0
    other = "post_softmax_mix" if mixer == "pre_softmax_mix" else "pre_softmax_mix"
    _set_mix(getattr(layer, mixer), permutation)
    _set_mix(getattr(layer, other), np.eye(3))
    outputs, weights = layer(x)
    expected_weights, expected_outputs, logits = _talking_heads_reference(layer, x)
    plain = _softmax(logits)
    # Softmax commutes with a permutation of the heads, so either mixer moves head SOURCE[g]'s plain
    # attention to head g; the unmixed attention differs from that.
    np.testing.assert_allclose(expected_weights, plain[:, SOURCE], atol=1e-6)
    assert np.abs(plain[:, SOURCE] - plain).max() > 0.05
    np.testing.assert_allclose(_numpy(weights), plain[:, SOURCE], atol=1e-5)
    np.testing.assert_allclose(_numpy(outputs), expected_outputs, atol=1e-5)


def test_talking_head_attention_matches_a_numpy_reference_with_general_mixers():
    """Dense, non-symmetric mixers with biases: the pre-softmax one reshapes each head's softmax, the
    post-softmax one mixes the weights; leaving either out changes the weights well beyond the tolerance."""
    x = random_inputs((2, 6, 12))
    layer = _talking_heads_layer(x, seed=1)
    rng = np.random.default_rng(3)
    _set_mix(layer.pre_softmax_mix, 2.0 * rng.normal(size=(3, 3)), rng.normal(size=3))
    _set_mix(layer.post_softmax_mix, rng.normal(size=(3, 3)), 0.1 * rng.normal(size=3))
    outputs, weights = layer(x)
    expected_weights, expected_outputs, logits = _talking_heads_reference(layer, x)
    np.testing.assert_allclose(_numpy(weights), expected_weights, atol=1e-5)
    np.testing.assert_allclose(_numpy(outputs), expected_outputs, atol=1e-5)
    without_pre = _head_mix(_softmax(logits), layer.post_softmax_mix)
    without_post = _softmax(_head_mix(logits, layer.pre_softmax_mix))
    assert np.abs(without_pre - expected_weights).max() > 0.05
    assert np.abs(without_post - expected_weights).max() > 0.05


def test_talking_head_mixing_changes_the_attention():
    layer = cait.TalkingHeadAttention(num_heads=2)
    x = random_inputs((2, 5, 8))
    _, mixed = layer(x)
    rows = _numpy(mixed).sum(axis=-1)
    # A random post-softmax mix generally breaks "each row sums to one", which plain attention obeys.
    assert not np.allclose(rows, 1.0, atol=1e-3)


def test_class_attention(tmp_path):
    layer = check_layer(
        cait.ClassAttention, dict(num_heads=2, qkv_bias=False, attention_dropout=0.0, projection_dropout=0.1),
        (2, 5, 8), [(2, 1, 8), (2, 2, 5)], tmp_path,
    )
    assert not layer.query.use_bias and not layer.key.use_bias and not layer.value.use_bias
    _, weights = layer(random_inputs((2, 5, 8)))
    np.testing.assert_allclose(_numpy(weights).sum(axis=-1), 1.0, atol=1e-5)


def test_class_attention_only_the_class_token_queries():
    """Shuffling the patches (not the class token) shuffles the weights and leaves the output unchanged."""
    layer = cait.ClassAttention(num_heads=2)
    x = random_inputs((2, 6, 8))
    order = np.array([0, 3, 1, 5, 2, 4])
    outputs, weights = layer(x)
    shuffled_outputs, shuffled_weights = layer(x[:, order])
    np.testing.assert_allclose(_numpy(shuffled_outputs), _numpy(outputs), atol=1e-5)
    np.testing.assert_allclose(_numpy(shuffled_weights), _numpy(weights)[:, :, order], atol=1e-6)
    changed = x.copy()
    changed[:, 0] += 1.0  # the class token is the query: changing it changes the result
    difference = np.abs(_numpy(layer(changed)[0]) - _numpy(outputs)).max()
    assert difference > 0.01 * np.abs(_numpy(outputs)).max()


def test_self_attention_block(tmp_path):
    kwargs = dict(num_heads=2, mlp_ratio=2.0, qkv_bias=True, use_layer_scale=True, layer_scale_init=1e-5,
                  dropout_rate=0.1, attention_dropout=0.1, drop_path_rate=0.1, layer_norm_epsilon=1e-3)
    block = check_layer(cait.SelfAttentionBlock, kwargs, (2, 5, 8), [(2, 5, 8), (2, 2, 5, 5)], tmp_path)
    assert block.mlp.hidden_units == 16
    assert block.norm_1.epsilon == block.norm_2.epsilon == 1e-3


def test_layer_scale_starts_blocks_near_the_identity():
    x = random_inputs((2, 5, 8))
    scaled = cait.SelfAttentionBlock(num_heads=2, use_layer_scale=True, layer_scale_init=1e-5)
    plain = cait.SelfAttentionBlock(num_heads=2, use_layer_scale=False)
    scaled_change = np.abs(_numpy(scaled(x)[0]) - x).max()
    plain_change = np.abs(_numpy(plain(x)[0]) - x).max()
    assert plain_change > 1e-3
    assert scaled_change < 1e-3 * plain_change  # gammas of 1e-5 shrink both branches
    gammas = [w for w in scaled.weights if "gamma" in w.path and "layer_scale" in w.path]
    assert len(gammas) == 2 and all(np.allclose(_numpy(g), 1e-5) for g in gammas)
    assert plain.layer_scale_1 is None and not [w for w in plain.weights if "layer_scale" in w.path]


def test_class_attention_block(tmp_path):
    kwargs = dict(num_heads=2, mlp_ratio=4.0, use_layer_scale=False, dropout_rate=0.0)
    block = check_layer(cait.ClassAttentionBlock, kwargs, (2, 5, 8), [(2, 5, 8), (2, 2, 5)], tmp_path)
    x = random_inputs((2, 5, 8))
    outputs, weights = block(x)
    np.testing.assert_array_equal(_numpy(outputs)[:, 1:], x[:, 1:])  # the patches pass through
    assert np.abs(_numpy(outputs)[:, 0] - x[:, 0]).max() > 1e-3  # the class token is updated
    np.testing.assert_allclose(_numpy(weights).sum(axis=-1), 1.0, atol=1e-5)


def test_class_attention_blocks_use_no_dropout_as_in_timm():
    """Dropout and stochastic depth reach the patch stage only; the class stage is deterministic in training."""
    model = cait.build_model(**TINY, dropout_rate=0.5, attention_dropout=0.5, drop_path_rate=0.5)
    patch_block = model.get_layer("self_attention_block_1")
    assert (patch_block.dropout_rate, patch_block.attention_dropout, patch_block.drop_path_rate) == (0.5, 0.5, 0.5)
    tokens = random_inputs((2, 1 + 16, TINY["embed_dim"]))
    for i in range(1, TINY["class_attention_depth"] + 1):
        block = model.get_layer(f"class_attention_block_{i}")
        assert (block.dropout_rate, block.attention_dropout, block.drop_path_rate) == (0.0, 0.0, 0.0)
        inference = _numpy(block(tokens, training=False)[0])
        for _ in range(2):
            np.testing.assert_array_equal(_numpy(block(tokens, training=True)[0]), inference)
    # The same comparison sees the patch stage's dropout.
    patches = tokens[:, 1:]
    assert not np.allclose(_numpy(patch_block(patches, training=True)[0]), _numpy(patch_block(patches)[0]))


def test_class_token(tmp_path):
    layer = check_layer(cait.ClassToken, dict(initializer_stddev=0.02), (2, 4, 8), (2, 5, 8), tmp_path)
    x = random_inputs((3, 4, 8))
    outputs = _numpy(layer(x))
    np.testing.assert_array_equal(outputs[:, 1:], x)
    np.testing.assert_array_equal(outputs[:, 0], np.broadcast_to(_numpy(layer.token)[0], (3, 8)))


def test_select_class_token(tmp_path):
    check_layer(cait.SelectClassToken, {}, (2, 4, 8), (2, 8), tmp_path)
    x = random_inputs((2, 4, 8))
    np.testing.assert_array_equal(_numpy(cait.SelectClassToken()(x)), x[:, 0])


# ----------------------------------------------------------------------------------------------
# Invalid arguments
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: cait.TalkingHeadAttention(num_heads=0), "`num_heads` must be a positive integer"),
        (lambda: cait.ClassAttention(num_heads=2, attention_dropout=1.5), "`attention_dropout` must be"),
        (lambda: cait.SelfAttentionBlock(num_heads=2, layer_scale_init=0.0), "`layer_scale_init` must be a positive"),
        (lambda: cait.ClassAttentionBlock(num_heads=2, mlp_ratio=-1), "`mlp_ratio` must be a positive"),
        (lambda: cait.SelfAttentionBlock(num_heads=2, drop_path_rate=1.0), "`drop_path_rate` must be"),
    ],
)
def test_invalid_layer_arguments_are_rejected(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("layer_cls", [cait.TalkingHeadAttention, cait.ClassAttention, cait.SelfAttentionBlock,
                                       cait.ClassAttentionBlock])
def test_heads_must_divide_the_width(layer_cls):
    with pytest.raises(ValueError, match=r"num_heads=4 does not divide the token width \(10 channels\)"):
        layer_cls(num_heads=4)(random_inputs((2, 5, 10)))


def test_class_attention_needs_a_class_token_and_patches():
    with pytest.raises(ValueError, match="at least 2 tokens.*prepend the class token with ClassToken"):
        cait.ClassAttention(num_heads=2)(random_inputs((2, 1, 8)))
    with pytest.raises(ValueError, match=r"expects tokens shaped \(batch, tokens, channels\)"):
        cait.ClassAttentionBlock(num_heads=2)(random_inputs((2, 4, 4, 8)))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(embed_dim=30, num_heads=4), r"num_heads=4 does not divide the token width \(30 channels\)"),
        (dict(image_size=30, patch_size=4), r"`image_size`=30 is not divisible by `patch_size`=4"),
        (dict(depth=0), "`depth` must be a positive integer"),
        (dict(class_attention_depth=0), "`class_attention_depth` must be a positive integer"),
        (dict(use_layer_scale=True, layer_scale_init=-1.0), "`layer_scale_init` must be a positive"),
        (dict(dropout_rate=1.0), "`dropout_rate` must be a number in"),
        (dict(layer_norm_epsilon=0.0), "`layer_norm_epsilon` must be a positive number"),
        (dict(num_classes=0), "`num_classes` must be a positive integer"),
    ],
)
def test_invalid_model_configurations_are_rejected(overrides, message):
    with pytest.raises(ValueError, match=message):
        cait.build_model(**{**TINY, **overrides})


def test_wrong_input_size_without_preprocessing_is_rejected():
    model = cait.build_model(**TINY, include_preprocessing=False)
    with pytest.raises(ValueError, match=r"expected shape=\(None, 32, 32, 3\), found shape=\(1, 24, 24, 3\)"):
        model(random_inputs((1, 24, 24, 3)))


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------
def test_build_model_maps_uint8_images_to_logits():
    model = cait.build_model(**TINY, num_classes=7)
    assert model.input_shape == (None, 32, 32, 3) and model.inputs[0].dtype == "uint8"
    logits = model(_uint8_images(), training=False)
    assert tuple(logits.shape) == (2, 7)
    assert np.all(np.isfinite(_numpy(logits)))
    blocks = [layer.name for layer in model.layers if isinstance(layer, cait.SelfAttentionBlock)]
    assert blocks == ["self_attention_block_1", "self_attention_block_2"]
    assert model.get_layer("class_attention_block_2").drop_path_rate == 0.0  # as in CaiT


def test_build_model_takes_keyword_arguments_only():
    with pytest.raises(TypeError):
        cait.build_model(32, 8)


def test_layer_norm_epsilon_reaches_every_layer_norm():
    model = cait.build_model(**TINY, layer_norm_epsilon=1e-3)
    norms = [model.get_layer("norm")] + [
        norm for layer in model.layers if isinstance(layer, (cait.SelfAttentionBlock, cait.ClassAttentionBlock))
        for norm in (layer.norm_1, layer.norm_2)
    ]
    assert len(norms) == 1 + 2 * (TINY["depth"] + TINY["class_attention_depth"])
    assert {norm.epsilon for norm in norms} == {1e-3}
    assert cait.build_model(**TINY).get_layer("norm").epsilon == 1e-6  # timm's value by default


def test_dense_kernels_start_small_like_timm():
    model = cait.build_model(**{**TINY, "embed_dim": 64})
    block = model.get_layer("self_attention_block_1")
    for dense in (block.attention.qkv, block.mlp.hidden, block.mlp.project, model.get_layer("head")):
        kernel = _numpy(dense.kernel)
        # Truncated at two standard deviations. Keras's PyTorch backend redraws an out-of-range value only
        # three times and then keeps it (about 4 in a million entries), so allow a few stragglers; Keras's
        # default Glorot initialisation would put most entries of these kernels beyond 0.04.
        beyond = np.mean(np.abs(kernel) > 0.04 + 1e-6)
        assert 0.015 < kernel.std() < 0.025 and beyond < 1e-3, (dense.name, kernel.std(), beyond)


def test_layer_scale_switch_changes_only_the_gammas():
    with_scale = cait.build_model(**TINY, use_layer_scale=True)
    without = cait.build_model(**TINY, use_layer_scale=False)
    blocks = TINY["depth"] + TINY["class_attention_depth"]
    assert with_scale.count_params() - without.count_params() == blocks * 2 * TINY["embed_dim"]


def test_layer_scale_init_follows_the_paper_by_default():
    assert [cait.paper_layer_scale_init(d) for d in (4, 18, 24, 36)] == [0.1, 0.1, 1e-5, 1e-6]
    model = cait.build_model(**TINY)
    assert model.get_layer("self_attention_block_2").layer_scale_init == 0.1
    assert model.get_layer("class_attention_block_1").layer_scale_init == 0.1
    gamma = model.get_layer("self_attention_block_1").layer_scale_1.gamma
    np.testing.assert_allclose(_numpy(gamma), 0.1)
    explicit = cait.build_model(**TINY, layer_scale_init=1e-3)
    assert explicit.get_layer("self_attention_block_1").layer_scale_init == 1e-3


def test_cait_xxs24_224_configuration():
    model = cait.cait_xxs24_224()
    assert model.count_params() == 11_956_264  # timm's cait_xxs24_224; tests/test_parity_cait.py checks it
    assert model.input_shape == (None, 224, 224, 3) and model.output_shape == (None, 1000)
    assert len([layer for layer in model.layers if isinstance(layer, cait.SelfAttentionBlock)]) == 24
    assert model.get_layer("self_attention_block_1").layer_scale_init == 1e-5


def test_model_save_and_load(tmp_path):
    model = cait.build_model(**TINY)
    restored = check_model_round_trip(model, _uint8_images(), tmp_path)
    assert restored.count_params() == model.count_params()


def test_visualization_model_outputs():
    model = cait.build_model(**TINY, num_classes=10)
    viz = cait.visualization_model(model)
    images = _uint8_images(batch=3)
    outputs = viz(images, training=False)
    assert set(outputs) == {"logits", "class_attention_block_1", "class_attention_block_2"}
    np.testing.assert_allclose(_numpy(outputs["logits"]), _numpy(model(images, training=False)), atol=1e-5)
    tokens = (32 // TINY["patch_size"]) ** 2
    for name in ("class_attention_block_1", "class_attention_block_2"):
        scores = _numpy(outputs[name])
        assert scores.shape == (3, TINY["num_heads"], 1 + tokens)
        np.testing.assert_allclose(scores.sum(axis=-1), 1.0, atol=1e-5)
    assert viz.count_params() == model.count_params()  # the same weights, nothing new


def test_visualization_model_needs_a_cait():
    inputs = keras.Input((4,))
    with pytest.raises(ValueError, match="no ClassAttentionBlock"):
        cait.visualization_model(keras.Model(inputs, keras.layers.Dense(2)(inputs)))


def test_analyze_returns_labelled_unsigned_class_attention_maps():
    model = cait.build_model(**TINY)
    viz = cait.visualization_model(model)
    images = _uint8_images(batch=2)
    result = cait.analyze(viz, images, batch_size=1)
    assert isinstance(result, Analysis)
    probabilities, maps = result
    assert probabilities.shape == (2, 10)
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, atol=1e-5)
    assert list(maps) == ["class attention, block 1", "class attention, block 2"]
    scores = _numpy(viz(images, training=False)["class_attention_block_2"])
    for value in maps.values():
        assert value.values.shape == (2, TINY["num_heads"], 4, 4)
        assert value.items == ("head 1", "head 2") and value.signed is False and value.description
        assert (value.values >= 0).all() and (value.values.sum(axis=(2, 3)) < 1.0).all()
    # The map is the class token's weight on each patch, laid out in row-major grid order.
    block_2 = maps["class attention, block 2"].values
    np.testing.assert_allclose(block_2[:, :, 1, 2], scores[:, :, 1 + 1 * 4 + 2], atol=1e-5)
    # The classifier itself is accepted too.
    np.testing.assert_allclose(cait.analyze(model, images).maps["class attention, block 2"].values, block_2,
                               atol=1e-5)


def test_analyze_numbers_more_than_nine_blocks_in_order():
    model = cait.build_model(**{**TINY, "depth": 1, "class_attention_depth": 10})
    _, maps = cait.analyze(model, _uint8_images(batch=1))
    assert list(maps) == [f"class attention, block {i}" for i in range(1, 11)]


def test_class_attention_maps_rejects_a_non_square_grid():
    with pytest.raises(ValueError, match="square patch grid"):
        cait.class_attention_maps(np.zeros((1, 2, 1 + 6)))


# ----------------------------------------------------------------------------------------------
# timm converter (the comparison with timm itself is in tests/test_parity_cait.py)
# ----------------------------------------------------------------------------------------------
def _timm_layout_state_dict(model):
    """Our weights written out in timm's naming and layout (torch Linear: (out, in); conv: (out, in, kh, kw))."""
    state = {}
    for key, variable, _ in cait._timm_plan(model):
        value = _numpy(variable)
        if value.ndim == 4:
            value = value.transpose(3, 2, 0, 1)
        elif value.ndim == 2:
            value = value.T
        state[key] = value
    return state


def _weights(model):
    return [_numpy(weight).copy() for weight in model.weights]


def test_load_timm_weights_round_trip():
    source = cait.build_model(**TINY, include_preprocessing=False)
    target = cait.build_model(**TINY, include_preprocessing=False)
    state = _timm_layout_state_dict(source)
    assert "blocks.1.attn.proj_w.weight" in state and "blocks_token_only.1.attn.v.bias" in state
    assert state["patch_embed.proj.weight"].shape == (TINY["embed_dim"], 3, 8, 8)
    images = random_inputs((2, 32, 32, 3))
    assert not np.allclose(_numpy(target(images)), _numpy(source(images)))
    assert cait.load_timm_weights(target, state) is target
    np.testing.assert_allclose(_numpy(target(images)), _numpy(source(images)), atol=1e-6)


def test_load_timm_weights_accepts_torch_tensors():
    torch = pytest.importorskip("torch")
    source = cait.build_model(**TINY, include_preprocessing=False)
    target = cait.build_model(**TINY, include_preprocessing=False)
    state = {key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in
             _timm_layout_state_dict(source).items()}
    cait.load_timm_weights(target, state)
    np.testing.assert_array_equal(_numpy(target.get_layer("head").kernel), _numpy(source.get_layer("head").kernel))


def _cover_all_but_the_class_token(state, monkeypatch):
    """A key map that forgets a weight, which would then silently keep its random value."""
    full_plan = cait._timm_plan
    monkeypatch.setattr(cait, "_timm_plan", lambda m: [entry for entry in full_plan(m) if entry[0] != "cls_token"])
    del state["cls_token"]


@pytest.mark.parametrize(
    "spoil, expected",
    [
        (lambda state, _: state.pop("blocks.0.attn.proj_l.bias"),
         "missing in the state_dict (1): blocks.0.attn.proj_l.bias"),
        (lambda state, _: state.update({"blocks.5.gamma_1": np.zeros(16, "float32")}),
         "not used by the Keras model (1): blocks.5.gamma_1"),
        (lambda state, _: state.update({"head.weight": np.zeros((1000, 16), "float32")}),
         "shape mismatches (timm -> converted vs Keras) (1): head.weight (1000, 16) -> (16, 1000) vs (16, 10)"),
        (_cover_all_but_the_class_token, "model weights the key map does not cover (1): class_token/token"),
        # A convolution kernel with an axis too few: the transform cannot take it (numpy: "axes don't match
        # array"); it is reported with the others instead of escaping as numpy's error.
        (lambda state, _: state.update({"patch_embed.proj.weight": np.zeros((16, 3, 8), "float32")}),
         "shape mismatches (timm -> converted vs Keras) (1): patch_embed.proj.weight (16, 3, 8) -> not "
         "convertible by conv"),
        (lambda state, _: state.update({"head.weight": np.float32(0.0)}),
         "shape mismatches (timm -> converted vs Keras) (1): head.weight () -> not convertible by linear"),
    ],
    ids=["missing", "unused", "mis-shaped", "uncovered", "conv-axes", "linear-scalar"],
)
def test_load_timm_weights_rejects_every_problem_and_leaves_the_model_untouched(spoil, expected, monkeypatch):
    model = cait.build_model(**TINY, include_preprocessing=False)
    state = _timm_layout_state_dict(model)
    state["norm.weight"] = np.full_like(state["norm.weight"], 3.0)  # would change the model if assigned
    spoil(state, monkeypatch)
    before = _weights(model)
    with pytest.raises(ValueError) as error:
        cait.load_timm_weights(model, state)
    message = str(error.value)
    assert expected in message and "depth_token_only" in message  # the problem, then how to fix it
    assert message.count("(1):") == 1, message  # and no other problem
    for old, new in zip(before, _weights(model)):
        np.testing.assert_array_equal(new, old)


def test_load_timm_weights_needs_a_cait():
    inputs = keras.Input((4,))
    with pytest.raises(ValueError, match=r"load_timm_weights needs a model made by cait.build_model\(\)"):
        cait.load_timm_weights(keras.Model(inputs, keras.layers.Dense(2)(inputs)), {})


# ----------------------------------------------------------------------------------------------
# Profiles
# ----------------------------------------------------------------------------------------------
def test_profiles_are_complete():
    assert set(cait.PROFILES) == {"smoke", "workshop", "full"}
    assert set(cait.LAYER_SCALE_PROFILES) == {"smoke", "workshop", "full"}
    for name, profile in {**cait.PROFILES, **cait.LAYER_SCALE_PROFILES}.items():
        assert profile.name == name and profile.note
    for profile in cait.LAYER_SCALE_PROFILES.values():
        assert "use_layer_scale" not in profile.model  # the experiment sets it both ways


def test_layer_scale_experiment_model_trains_one_step_without_layer_scale():
    model = cait.build_model(**cait.LAYER_SCALE_PROFILES["smoke"].model, use_layer_scale=False)
    assert not [w for w in model.weights if "layer_scale" in w.path]
    train_one_step(model, batch_size=2)


@pytest.mark.parametrize("name", ["workshop", "full"])
def test_layer_scale_experiment_models_build_both_ways(name):
    """Both variants build; they differ exactly by the gammas. (Tracing a training step of these deep
    models costs minutes on a 2-core CPU, so the one-step training of the deepest architecture is left
    to test_profile_model_trains_one_step[full].)"""
    config = cait.LAYER_SCALE_PROFILES[name].model
    with_scale = cait.build_model(**config, use_layer_scale=True)
    without = cait.build_model(**config, use_layer_scale=False)
    blocks = config["depth"] + config["class_attention_depth"]
    assert with_scale.count_params() - without.count_params() == blocks * 2 * config["embed_dim"]
    assert without.output_shape == (None, 10)


def test_full_layer_scale_experiment_uses_the_full_architecture():
    experiment = dict(cait.LAYER_SCALE_PROFILES["full"].model)
    full = dict(cait.PROFILES["full"].model)
    experiment.pop("drop_path_rate"), full.pop("drop_path_rate")
    assert experiment == full
