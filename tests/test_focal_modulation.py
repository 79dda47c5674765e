"""Tests of course_utils.models.focal_modulation on the active Keras backend."""

import keras
import numpy as np
import pytest
from helpers import check_layer, check_model_round_trip, random_inputs

from course_utils.analysis import Analysis
from course_utils.models import focal_modulation as fm
from course_utils.models.focal_modulation import FocalDownsample, FocalModulation, FocalNetBlock

TINY = dict(image_size=32, embed_dim=8, depths=(1, 2), focal_levels=(2, 1), mlp_ratio=2.0, dropout_rate=0.0)


def _uint8_images(batch=2, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(batch, size, size, 3), dtype=np.uint8)


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


# ------------------------------------------------------------------------------------------------
# FocalDownsample
# ------------------------------------------------------------------------------------------------
def test_downsample_non_overlapping(tmp_path):
    layer = check_layer(FocalDownsample, dict(stride=4, embed_dim=8), (2, 16, 16, 3), (2, 4, 4, 8), tmp_path)
    assert layer.convolution.kernel.shape == (4, 4, 3, 8)
    # The LayerNorm runs last: every position is normalised over its channels (unit affine at init).
    outputs = _numpy(layer(random_inputs((2, 16, 16, 3))))
    np.testing.assert_allclose(outputs.mean(axis=-1), 0.0, atol=1e-5)


@pytest.mark.parametrize("stride, side, expected_side, kernel", [(4, 15, 4, 7), (4, 32, 8, 7), (2, 7, 4, 3)])
def test_downsample_overlapping(tmp_path, stride, side, expected_side, kernel):
    init = dict(stride=stride, embed_dim=6, overlap=True)
    layer = check_layer(FocalDownsample, init, (2, side, side, 4), (2, expected_side, expected_side, 6), tmp_path)
    assert layer.convolution.kernel.shape == (kernel, kernel, 4, 6)
    assert layer.compute_output_shape((2, side, side, 4)) == (2, expected_side, expected_side, 6)


def test_downsample_rejects_bad_arguments():
    with pytest.raises(ValueError, match="stride 2 or 4"):
        FocalDownsample(3, 8, overlap=True)
    with pytest.raises(ValueError, match="`embed_dim` must be a positive integer"):
        FocalDownsample(2, 0)
    with pytest.raises(ValueError, match="does not divide the image height"):
        FocalDownsample(4, 8)(random_inputs((1, 10, 10, 3)))
    with pytest.raises(ValueError, match=r"expects images shaped \(batch, height, width, channels\)"):
        FocalDownsample(4, 8)(random_inputs((1, 16, 3)))


# ------------------------------------------------------------------------------------------------
# FocalModulation
# ------------------------------------------------------------------------------------------------
def test_focal_modulation_layer(tmp_path):
    shapes = [(2, 8, 8, 6), (2, 8, 8, 3), (2, 8, 8, 6)]
    layer = check_layer(FocalModulation, dict(focal_level=2, focal_window=3), (2, 8, 8, 6), shapes, tmp_path)
    # One projection to query (6), context (6) and L + 1 = 3 gates; kernels 3 and 5; 1x1 h and proj.
    assert layer.f.kernel.shape == (6, 6 + 6 + 3)
    assert layer.kernel_sizes == [3, 5]
    assert [conv.kernel.shape for conv in layer.focal_layers] == [(3, 3, 6, 1), (5, 5, 6, 1)]
    assert layer.h.kernel.shape == (6, 6) and layer.proj.kernel.shape == (6, 6)
    assert layer.norm is None


def test_focal_modulation_kernel_growth(tmp_path):
    layer = check_layer(
        FocalModulation,
        dict(focal_level=3, focal_window=5, focal_factor=4, normalize_modulator=True, use_post_norm=True),
        (2, 6, 6, 4),
        [(2, 6, 6, 4), (2, 6, 6, 4), (2, 6, 6, 4)],
        tmp_path,
    )
    assert layer.kernel_sizes == [5, 9, 13]
    assert layer.norm is not None


def test_gates_are_the_projection_and_the_output_is_query_times_modulator():
    layer = FocalModulation(2)
    x = random_inputs((2, 5, 5, 4))
    _, gates, modulator = layer(x)
    # With an identity output projection the layer returns exactly q * m.
    layer.proj.kernel.assign(np.eye(4, dtype="float32"))
    layer.proj.bias.assign(np.zeros(4, dtype="float32"))
    outputs, gates_again, modulator_again = layer(x)
    projected = _numpy(layer.f(x))
    np.testing.assert_allclose(_numpy(gates), projected[..., 8:], atol=1e-5)
    np.testing.assert_allclose(_numpy(outputs), projected[..., :4] * _numpy(modulator), atol=1e-5)
    np.testing.assert_allclose(_numpy(modulator_again), _numpy(modulator), atol=1e-6)


def test_normalize_modulator_divides_the_context_by_the_number_of_levels():
    x = random_inputs((2, 6, 6, 4))
    plain, normalized = FocalModulation(2), FocalModulation(2, normalize_modulator=True)
    plain(x), normalized(x)
    normalized.set_weights(plain.get_weights())
    _, _, m_plain = plain(x)
    _, _, m_normalized = normalized(x)
    bias = _numpy(plain.h.bias)
    np.testing.assert_allclose(_numpy(m_normalized) - bias, (_numpy(m_plain) - bias) / 3, atol=1e-5)


def test_global_context_reaches_every_position():
    # Level 1 alone sees a 3x3 neighbourhood; the global level spreads a change everywhere.
    layer = FocalModulation(1, focal_window=3)
    x = random_inputs((1, 9, 9, 4))
    _, _, before = layer(x)
    changed = x.copy()
    changed[0, 0, 0] += 5.0
    _, _, after = layer(changed)
    moved = np.abs(_numpy(after) - _numpy(before)).max(axis=-1)[0]
    assert moved[8, 8] > 1e-6  # far corner: only the global context carries the change


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(focal_level=0), "focal_level` must be an integer >= 1"),
        (dict(focal_level=2.0), "focal_level` must be an integer >= 1"),
        (dict(focal_level=2, focal_window=4), r"kernel sizes \[4, 6\].*Use an odd focal_window"),
        (dict(focal_level=2, focal_factor=1), r"kernel sizes \[3, 4\].*even focal_factor"),
        (dict(focal_level=2, focal_window=0), "`focal_window` must be a positive integer"),
        (dict(focal_level=2, focal_factor=-2), "`focal_factor` must be a non-negative integer"),
        (dict(focal_level=2, dropout_rate=1.0), r"`dropout_rate` must be a number in \[0, 1\)"),
        (dict(focal_level=2, layer_norm_epsilon=0), "`layer_norm_epsilon` must be a positive number"),
    ],
)
def test_focal_modulation_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FocalModulation(**kwargs)


def test_focal_modulation_needs_a_feature_map():
    with pytest.raises(ValueError, match=r"\(batch, height, width, channels\)"):
        FocalModulation(2)(random_inputs((2, 16, 4)))


# ------------------------------------------------------------------------------------------------
# FocalNetBlock
# ------------------------------------------------------------------------------------------------
def test_block_pre_norm(tmp_path):
    shapes = [(2, 6, 6, 8), (2, 6, 6, 3), (2, 6, 6, 8)]
    block = check_layer(FocalNetBlock, dict(focal_level=2, mlp_ratio=2.0), (2, 6, 6, 8), shapes, tmp_path)
    assert block.norm1 is not None and block.norm2 is not None
    assert block.norm1_post is None and block.norm2_post is None
    assert block.ls1 is None and block.ls2 is None
    assert block.mlp.hidden.kernel.shape == (8, 16)


def test_block_post_norm_layerscale(tmp_path):
    init = dict(
        focal_level=1,
        use_post_norm=True,
        use_post_norm_in_modulation=True,
        normalize_modulator=True,
        layer_scale_init=1e-4,
        drop_path_rate=0.1,
        dropout_rate=0.1,
    )
    shapes = [(2, 4, 4, 8), (2, 4, 4, 2), (2, 4, 4, 8)]
    block = check_layer(FocalNetBlock, init, (2, 4, 4, 8), shapes, tmp_path)
    assert block.norm1 is None and block.norm2 is None
    assert block.norm1_post is not None and block.norm2_post is not None
    assert block.modulation.norm is not None and block.modulation.normalize_modulator
    np.testing.assert_allclose(_numpy(block.ls1.gamma), 1e-4)


def test_block_is_residual():
    # With a tiny LayerScale both branches almost vanish: the block is nearly the identity.
    block = FocalNetBlock(2, layer_scale_init=1e-7)
    x = random_inputs((2, 5, 5, 8))
    outputs, _, _ = block(x)
    np.testing.assert_allclose(_numpy(outputs), x, atol=1e-4)
    assert not np.allclose(_numpy(FocalNetBlock(2)(x)[0]), x, atol=1e-2)


def test_block_stochastic_depth_only_in_training():
    block = FocalNetBlock(1, drop_path_rate=0.5)
    x = random_inputs((16, 4, 4, 8))
    first, second = block(x, training=False)[0], block(x, training=False)[0]
    np.testing.assert_allclose(_numpy(first), _numpy(second))
    trained = [_numpy(block(x, training=True)[0]) for _ in range(3)]
    assert any(not np.allclose(t, _numpy(first), atol=1e-5) for t in trained)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(focal_level=0), "focal_level` must be an integer >= 1"),
        (dict(focal_level=1, mlp_ratio=0), "`mlp_ratio` must be a positive number"),
        (dict(focal_level=1, layer_scale_init=0.0), "`layer_scale_init` must be a positive number"),
        (dict(focal_level=1, layer_norm_epsilon=-1.0), "`layer_norm_epsilon` must be a positive number"),
        (dict(focal_level=1, drop_path_rate=-0.1), r"`drop_path_rate` must be a number in \[0, 1\)"),
        (dict(focal_level=1, focal_window=2), "odd focal_window"),
    ],
)
def test_block_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FocalNetBlock(**kwargs)


# ------------------------------------------------------------------------------------------------
# The network
# ------------------------------------------------------------------------------------------------
def test_builder_tiny_configuration():
    model = fm.build_model(**TINY)
    assert model.input_shape == (None, 32, 32, 3) and model.inputs[0].dtype == "uint8"
    logits = model(_uint8_images())
    assert tuple(logits.shape) == (2, 10)
    names = [layer.name for layer in model.layers]
    assert ["stage0_block0", "stage1_block0", "stage1_block1"] == [n for n in names if "_block" in n]
    # Widths double per stage; per-stage focal levels are honoured.
    assert model.get_layer("stem").output.shape == (None, 8, 8, 8)
    assert model.get_layer("stage1_downsample").output.shape == (None, 4, 4, 16)
    assert model.get_layer("stage0_block0").modulation.focal_level == 2
    assert model.get_layer("stage1_block1").modulation.focal_level == 1


def test_builder_options():
    model = fm.build_model(
        num_classes=5,
        include_preprocessing=False,
        image_size=30,
        embed_dim=(6, 10),
        depths=(1, 2),
        focal_levels=1,
        use_overlap_down=True,
        use_post_norm=True,
        layer_scale_init=1e-3,
        drop_path_rate=0.2,
    )
    assert model.input_shape == (None, 30, 30, 3)
    assert tuple(model(random_inputs((2, 30, 30, 3))).shape) == (2, 5)
    assert model.get_layer("stem").output.shape == (None, 7, 7, 6)  # (30 + 4 - 7) // 4 + 1
    assert model.get_layer("stage1_downsample").output.shape == (None, 4, 4, 10)
    rates = [model.get_layer(n).drop_path_rate for n in ("stage0_block0", "stage1_block0", "stage1_block1")]
    np.testing.assert_allclose(rates, [0.0, 0.1, 0.2])


def test_builder_takes_keyword_arguments_only():
    with pytest.raises(TypeError):
        fm.build_model(10, 32)


def test_layer_norm_epsilon_reaches_every_layer_norm():
    model = fm.build_model(**TINY, use_post_norm_in_modulation=True, layer_norm_epsilon=1e-3)
    norms = [model.get_layer("head_norm")]
    for layer in model.layers:
        if isinstance(layer, FocalDownsample):
            norms.append(layer.norm)
        elif isinstance(layer, FocalNetBlock):
            norms += [layer.norm1, layer.norm2, layer.modulation.norm]
    assert len(norms) == 1 + 2 + 3 * sum(TINY["depths"])
    assert {norm.epsilon for norm in norms} == {1e-3}
    assert fm.build_model(**TINY).get_layer("head_norm").epsilon == 1e-5  # timm's (PyTorch's) default


def test_baseline_is_the_shared_vit_sized_like_the_focalnet():
    from course_utils.models import vit

    config = dict(TINY, embed_dim=16, patch_size=4, layer_scale_init=1e-4)
    baseline = fm.build_baseline(**config)
    reference = vit.build_vit(image_size=32, patch_size=4, embed_dim=16, depth=sum(TINY["depths"]), num_heads=4,
                              mlp_ratio=TINY["mlp_ratio"])
    assert [type(layer) for layer in baseline.layers] == [type(layer) for layer in reference.layers]
    assert baseline.count_params() == reference.count_params()
    assert baseline.input_shape == (None, 32, 32, 3) and baseline.output_shape == (None, 10)
    # A per-stage width list gives the ViT the width of stage 0; other sizes follow the FocalNet's.
    wide = fm.build_baseline(**{**config, "embed_dim": (8, 16), "input_size": 40}, num_heads=2)
    assert wide.get_layer("patch_embedding").embed_dim == 8 and wide.input_shape == (None, 40, 40, 3)
    assert wide.get_layer("block_0").num_heads == 2
    with pytest.raises(TypeError, match="focal_level"):
        fm.build_baseline(**config, focal_level=2)  # a typo of focal_levels is not silently ignored


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(image_size=36), "image_size=36 is not divisible by the total stride 8"),
        (dict(focal_levels=(2, 2, 2)), "`focal_levels` has 3 entries but `depths` defines 2 stages"),
        (dict(embed_dim=(8,)), "`embed_dim` has 1 entries"),
        (dict(depths=()), "`depths` must be a non-empty list"),
        (dict(depths=(1, 0)), r"`depths\[i\]` must be a positive integer"),
        (dict(focal_windows=(3, 4)), "Use an odd focal_window"),
        (dict(use_overlap_down=True, patch_size=8), "stem stride patch_size must be 2 or 4"),
    ],
)
def test_builder_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        fm.build_model(**{**TINY, **kwargs})


def test_model_save_and_load(tmp_path):
    model = fm.build_model(**TINY, layer_scale_init=1e-2)
    images = _uint8_images()
    restored = check_model_round_trip(model, images, tmp_path)
    assert [layer.name for layer in restored.layers] == [layer.name for layer in model.layers]
    # The gates are still reachable after loading.
    gates = fm.visualization_model(restored).predict(images, verbose=0)["stage1_block1_gates"]
    expected = fm.visualization_model(model).predict(images, verbose=0)["stage1_block1_gates"]
    np.testing.assert_allclose(gates, expected, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# Visualization
# ------------------------------------------------------------------------------------------------
def test_visualization_model_outputs(tmp_path):
    model = fm.build_model(**TINY)
    viz = fm.visualization_model(model)
    images = _uint8_images()
    outputs = viz(images, training=False)
    expected = {
        "logits": (2, 10),
        "stage0_block0_gates": (2, 8, 8, 3),
        "stage0_block0_modulator": (2, 8, 8, 8),
        "stage1_block0_gates": (2, 4, 4, 2),
        "stage1_block0_modulator": (2, 4, 4, 16),
        "stage1_block1_gates": (2, 4, 4, 2),
        "stage1_block1_modulator": (2, 4, 4, 16),
    }
    assert {key: tuple(value.shape) for key, value in outputs.items()} == expected
    # Same weights: same logits as the classifier; gates as the block computes them.
    np.testing.assert_allclose(_numpy(outputs["logits"]), _numpy(model(images, training=False)), atol=1e-5)
    check_model_round_trip(viz, images, tmp_path)


def test_analyze_returns_the_last_block_of_every_stage():
    viz = fm.visualization_model(fm.build_model(**TINY))
    images = _uint8_images(batch=3)
    result = fm.analyze(viz, images, batch_size=2)
    assert isinstance(result, Analysis)
    probabilities, maps = result
    assert probabilities.shape == (3, 10)
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, atol=1e-5)
    assert list(maps) == ["stage 0 gates", "stage 0 modulator norm", "stage 1 gates", "stage 1 modulator norm"]
    # Stage 0 has two focal levels, stage 1 one (TINY's focal_levels=(2, 1)); the global context comes last.
    assert maps["stage 0 gates"].items == ("level 1", "level 2", "global")
    assert maps["stage 1 gates"].items == ("level 1", "global")
    assert maps["stage 0 modulator norm"].items == maps["stage 1 modulator norm"].items == ("modulator norm",)
    assert maps["stage 0 gates"].signed and maps["stage 1 gates"].signed
    assert not maps["stage 0 modulator norm"].signed and not maps["stage 1 modulator norm"].signed
    assert all(value.description for value in maps.values())
    assert maps["stage 0 gates"].values.shape == (3, 3, 8, 8) and maps["stage 0 modulator norm"].grid == (8, 8)
    assert maps["stage 1 gates"].values.shape == (3, 2, 4, 4)
    raw = viz.predict(images, verbose=0)
    # Stage 1's last block is block 1 (of 0 and 1), stage 0's is block 0.
    np.testing.assert_allclose(
        maps["stage 1 gates"].values, np.transpose(raw["stage1_block1_gates"], (0, 3, 1, 2)), atol=1e-6
    )
    np.testing.assert_allclose(
        maps["stage 1 modulator norm"].values[:, 0], np.linalg.norm(raw["stage1_block1_modulator"], axis=-1),
        atol=1e-5,
    )
    np.testing.assert_allclose(
        maps["stage 0 gates"].values, np.transpose(raw["stage0_block0_gates"], (0, 3, 1, 2)), atol=1e-6
    )
    assert (maps["stage 0 modulator norm"].values >= 0).all()
    assert (maps["stage 0 gates"].values < 0).any(), "the gates are linear: some are negative"


def test_analyze_accepts_the_classifier_and_takes_no_block_arguments():
    model = fm.build_model(**TINY)
    images = _uint8_images()
    from_classifier = fm.analyze(model, images)
    from_viz = fm.analyze(fm.visualization_model(model), images)
    np.testing.assert_allclose(from_classifier.maps["stage 1 gates"].values, from_viz.maps["stage 1 gates"].values,
                               atol=1e-5)
    with pytest.raises(TypeError):
        fm.analyze(model, images, stage=0)


def test_visualization_model_needs_a_focalnet():
    inputs = keras.Input((4,))
    with pytest.raises(ValueError, match=r"no FocalNetBlock layer: pass a model made by focal_modulation.build_model"):
        fm.visualization_model(keras.Model(inputs, keras.layers.Dense(2)(inputs)))


# ------------------------------------------------------------------------------------------------
# timm converter (numpy state dicts; the comparison with timm itself is in test_parity_focal_modulation)
# ------------------------------------------------------------------------------------------------
def _export_timm_layout(model):
    """Invert the converter: this model's weights under timm's names and PyTorch layouts."""
    state = {}
    for key, variable, _ in fm._timm_plan(model):
        value = _numpy(variable)
        if "focal_layers" in key:
            value = value.transpose(2, 3, 0, 1)  # (kh, kw, C, 1) -> (C, 1, kh, kw)
        elif value.ndim == 4:
            value = value.transpose(3, 2, 0, 1)  # (kh, kw, in, out) -> (out, in, kh, kw)
        elif value.ndim == 2 and key.startswith("head.fc"):
            value = value.T  # Linear (out, in)
        elif value.ndim == 2:
            value = value.T[:, :, None, None]  # 1x1 conv (out, in, 1, 1)
        state[key] = value
    return state


def _weights(model):
    return [_numpy(weight).copy() for weight in model.weights]


def test_timm_converter_round_trip():
    config = dict(TINY, include_preprocessing=False, use_post_norm=True, layer_scale_init=1e-3)
    source, target = fm.build_model(**config), fm.build_model(**config)
    state = _export_timm_layout(source)
    assert "layers.1.blocks.1.modulation.focal_layers.0.0.weight" in state and "stem.proj.weight" in state
    assert "layers.1.downsample.proj.weight" in state and "layers.0.blocks.0.ls2.gamma" in state
    assert state["layers.0.blocks.0.modulation.f.weight"].shape == (8 + 8 + 3, 8, 1, 1)
    x = random_inputs((2, 32, 32, 3))
    assert not np.allclose(_numpy(source(x)), _numpy(target(x)), atol=1e-4)
    assert fm.load_timm_weights(target, state) is target
    np.testing.assert_allclose(_numpy(target(x)), _numpy(source(x)), atol=1e-5)


def _cover_all_but_the_head_bias(state, monkeypatch):
    """A key map that forgets a weight, which would then silently keep its random value."""
    full_plan = fm._timm_plan
    monkeypatch.setattr(fm, "_timm_plan", lambda m: [entry for entry in full_plan(m) if entry[0] != "head.fc.bias"])
    del state["head.fc.bias"]


@pytest.mark.parametrize(
    "spoil, expected",
    [
        (lambda state, _: state.pop("norm.weight"), "missing in the state_dict (1): norm.weight"),
        (lambda state, _: state.update({"layers.0.blocks.0.ls1.gamma": np.ones(8, "float32")}),
         "not used by the Keras model (1): layers.0.blocks.0.ls1.gamma"),
        (lambda state, _: state.update({"head.fc.weight": np.zeros((7, 16), "float32")}),
         "shape mismatches (timm -> converted vs Keras) (1): head.fc.weight (7, 16) -> (16, 7) vs (16, 10)"),
        (_cover_all_but_the_head_bias, "model weights the key map does not cover (1): head/bias"),
        # A depth-wise kernel without its axis of 1: reported as a mismatch, not raised as numpy's error.
        (lambda state, _: state.update({"layers.0.blocks.0.modulation.focal_layers.0.0.weight":
                                        np.zeros((8, 3, 3), "float32")}),
         "shape mismatches (timm -> converted vs Keras) (1): layers.0.blocks.0.modulation.focal_layers.0.0.weight "
         "(8, 3, 3) -> not convertible by depthwise"),
    ],
    ids=["missing", "unused", "mis-shaped", "uncovered", "depthwise-axes"],
)
def test_timm_converter_rejects_every_problem_and_leaves_the_model_untouched(spoil, expected, monkeypatch):
    model = fm.build_model(**TINY, include_preprocessing=False)
    state = _export_timm_layout(model)
    state["stem.norm.bias"] = state["stem.norm.bias"] + 1.0  # would change the model if assigned
    spoil(state, monkeypatch)
    before = _weights(model)
    with pytest.raises(ValueError) as error:
        fm.load_timm_weights(model, state)
    message = str(error.value)
    assert expected in message and "layer_scale_init (timm's layerscale_value)" in message  # says how to fix it
    assert message.count("(1):") == 1, message  # and no other problem
    for old, new in zip(before, _weights(model)):
        np.testing.assert_array_equal(new, old)


# ------------------------------------------------------------------------------------------------
# Profiles
# ------------------------------------------------------------------------------------------------


def test_full_profile_is_the_reference_configuration():
    profile = fm.PROFILES["full"]
    assert profile.epochs == 25 and profile.weight_decay == 1e-4
    assert profile.learning_rate * 1024 / profile.batch_size == pytest.approx(1e-4)
    assert profile.warmup_epochs == pytest.approx(0.15 * profile.epochs)
    model = fm.build_model(**profile.model)
    assert model.get_layer("stem").output.shape == (None, 12, 12, 256)  # 48 px crops, patch 4
    assert model.get_layer("stage2_downsample").output.shape == (None, 3, 3, 1024)
    assert sum(1 for layer in model.layers if isinstance(layer, FocalNetBlock)) == 7


def test_switching_a_focal_level_off_zeroes_its_gate_and_nothing_else():
    keras.utils.set_random_seed(3)
    model = fm.build_model(**TINY)
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    before = fm.visualization_model(model).predict(images, verbose=0)
    without = fm.without_focal_level(model, 0)
    after = fm.visualization_model(without).predict(images, verbose=0)
    np.testing.assert_array_equal(fm.visualization_model(model).predict(images, verbose=0)["logits"], before["logits"])
    first = "stage0_block0_gates"
    assert np.abs(before[first][..., 0]).max() > 0 and np.all(after[first][..., 0] == 0)
    np.testing.assert_allclose(after[first][..., 1:], before[first][..., 1:], atol=1e-5)  # same input, same gates
    global_off = fm.visualization_model(fm.without_focal_level(model, "global")).predict(images, verbose=0)
    for name in ("stage0_block0_gates", "stage1_block0_gates"):  # stage 0 has 2 levels, stage 1 one
        assert np.all(global_off[name][..., -1] == 0)
    with pytest.raises(ValueError, match="'global' or a local level from 0 to 1"):
        fm.without_focal_level(model, 2)


def test_focal_level_ablation_reports_every_level():
    model = fm.build_model(**TINY)
    images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    labels = np.argmax(model.predict(images, verbose=0), axis=-1)
    result = fm.focal_level_ablation(model, images, labels)
    assert list(result) == ["all levels", "without level 1", "without level 2", "without global"]
    assert result["all levels"] == 1.0 and all(0.0 <= value <= 1.0 for value in result.values())


def test_ablation_restores_the_trained_weights_before_each_level():
    # one reused copy: switching level 2 off must not leave level 1 switched off too
    keras.utils.set_random_seed(4)
    model = fm.build_model(**TINY)
    images = np.random.default_rng(1).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    labels = np.argmax(model.predict(images, verbose=0), axis=-1)
    result = fm.focal_level_ablation(model, images, labels)
    for level, name in ((0, "without level 1"), (1, "without level 2"), ("global", "without global")):
        single = np.argmax(fm.without_focal_level(model, level).predict(images, verbose=0), axis=-1)
        assert result[name] == float(np.mean(single == labels)), name
