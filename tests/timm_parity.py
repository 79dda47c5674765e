"""Random weights at a trained network's scale, for comparing our models with timm's (numpy only).

timm initialises CaiT and FocalNet for training: Linear and convolution weights from a normal of standard
deviation 0.02, biases at 0, norms at (1, 0), LayerScale at 1e-4 or 1e-5. At that scale every attention
row is nearly uniform and every branch barely moves the residual stream, so two implementations that differ
in a detail (a missing head mix, an approximated GELU, a transposed matrix) still give nearly the same
logits. :func:`realistic_state_dict` redraws every entry of a ``state_dict`` at the scale of trained
weights instead, and refuses a key it does not recognise, so that no weight keeps its initial value.

The module imports only numpy; the helpers that run a timm model import torch when called. Used by
tests/test_parity_*.py, tests/test_timm_fixtures.py and scripts/make_parity_fixtures.py.
"""

import numpy as np

# Logits must agree to within this, relative to the largest logit (or absolutely, for logits below one).
# With these weights float32 rounding left at most 2e-6 (timm's focalnet_tiny_srf, cait_xxs24_224), while
# a tanh-approximated GELU in place of the exact one moved the logits by 2e-5 to 3e-4.
TOLERANCE = 1e-5

LAYER_SCALE_KEYS = ("gamma", "gamma_1", "gamma_2")  # CaiT: gamma_1/2; FocalNet: ls1.gamma / ls2.gamma
EMBEDDING_KEYS = ("cls_token", "pos_embed")


def _is_norm(key):
    """A LayerNorm parameter: some part of the dotted key names a norm (norm, norm1, norm2_post, ...)."""
    return any(part.startswith("norm") for part in key.split(".")[:-1])


def realistic_value(key, shape, rng):
    """A random array for the timm parameter ``key`` of ``shape``, at the scale of a trained network.

    * linear and convolution weights: normal with standard deviation ``1 / sqrt(fan_in)``, so every layer
      keeps its activations of order one;
    * LayerNorm weights uniform in [0.5, 1.5], their biases normal with standard deviation 0.3;
    * LayerScale factors uniform in [0.1, 1] (timm starts them at 1e-4 or 1e-5);
    * class token and position embedding standard normal;
    * the bias of CaiT's post-softmax head mix (``attn.proj_w``) normal with standard deviation 0.01: it is
      added to attention weights, which average one over the number of tokens, and multiplies the sum of
      all values; at 0.3 it would swamp the weights and make every token the same after a few blocks;
    * any other bias normal with standard deviation 0.3.

    Raises a ValueError for a key it does not recognise.
    """
    name = key.rsplit(".", 1)[-1]
    if name in LAYER_SCALE_KEYS:
        return rng.uniform(0.1, 1.0, shape)
    if key in EMBEDDING_KEYS:
        return rng.standard_normal(shape)
    if _is_norm(key) and name == "weight":
        return rng.uniform(0.5, 1.5, shape)
    if key.endswith("attn.proj_w.bias"):
        return 0.01 * rng.standard_normal(shape)
    if name == "bias":
        return 0.3 * rng.standard_normal(shape)
    if name == "weight" and len(shape) >= 2:
        fan_in = int(np.prod(shape[1:]))
        return rng.standard_normal(shape) / np.sqrt(fan_in)
    raise ValueError(f"No rule to randomise {key!r} {tuple(shape)}; add one to tests/timm_parity.py.")


def realistic_state_dict(state_dict, seed=0):
    """A new ``{key: float32 array}`` with every entry of ``state_dict`` redrawn by :func:`realistic_value`.

    ``state_dict`` maps timm keys to anything with a ``shape`` (torch tensors or arrays); only the keys and
    shapes are read.
    """
    rng = np.random.default_rng(seed)
    return {
        key: realistic_value(key, tuple(value.shape), rng).astype("float32") for key, value in state_dict.items()
    }


def attention_spread(weights):
    """How far attention rows are from uniform: the mean over rows of (std over keys) / (mean |weight|).

    ``weights``: ``(..., keys)``. A uniform row gives 0; a row that puts all its weight on one of ``n``
    keys gives ``sqrt(n - 1)``.
    """
    weights = np.asarray(weights, dtype="float64")
    return float(np.mean(weights.std(axis=-1) / np.abs(weights).mean(axis=-1)))


# ----------------------------------------------------------------------------------------------
# One configuration, two spellings: our build_model arguments -> timm's constructor arguments
# ----------------------------------------------------------------------------------------------
def timm_cait_kwargs(ours):
    """timm ``Cait(...)`` arguments for a ``cait.build_model(**ours)`` configuration.

    Our class-attention blocks use ``mlp_ratio`` too; timm has a separate ``mlp_ratio_token_only``.
    """
    return dict(
        img_size=ours["image_size"],
        patch_size=ours["patch_size"],
        embed_dim=ours["embed_dim"],
        depth=ours["depth"],
        num_heads=ours["num_heads"],
        depth_token_only=ours["class_attention_depth"],
        mlp_ratio=ours["mlp_ratio"],
        mlp_ratio_token_only=ours["mlp_ratio"],
        qkv_bias=ours.get("qkv_bias", True),
        num_classes=ours["num_classes"],
    )


FOCALNET_SWITCHES = ("use_overlap_down", "use_post_norm", "use_post_norm_in_modulation", "normalize_modulator")


def timm_focalnet_kwargs(ours):
    """timm ``FocalNet(...)`` arguments for a ``focal_modulation.build_model(**ours)`` configuration.

    ``ours`` gives ``focal_levels`` and ``focal_windows`` per stage (timm wants tuples); stochastic depth is
    switched off.
    """
    kwargs = dict(
        embed_dim=ours["embed_dim"],
        depths=tuple(ours["depths"]),
        focal_levels=tuple(ours["focal_levels"]),
        focal_windows=tuple(ours["focal_windows"]),
        layerscale_value=ours.get("layer_scale_init"),
        num_classes=ours["num_classes"],
        drop_path_rate=0.0,
    )
    kwargs.update({switch: ours[switch] for switch in FOCALNET_SWITCHES if switch in ours})
    return kwargs


# ----------------------------------------------------------------------------------------------
# Running and comparing (torch is imported only here, so the main environment can use the rest)
# ----------------------------------------------------------------------------------------------
def randomised(timm_model, seed=0):
    """``timm_model`` in eval mode with every weight redrawn by :func:`realistic_state_dict`."""
    import torch

    state = realistic_state_dict(timm_model.state_dict(), seed=seed)
    timm_model.load_state_dict({key: torch.from_numpy(value) for key, value in state.items()})
    return timm_model.eval()


def timm_logits(timm_model, images):
    """timm's logits for channels-last float32 ``images`` ``(batch, side, side, 3)``."""
    import torch

    with torch.no_grad():
        return timm_model(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()).numpy()


def random_images(image_size, batch=3, seed=0):
    """Standard-normal channels-last float32 images, as the models see them after normalisation."""
    return np.random.default_rng(seed).normal(size=(batch, image_size, image_size, 3)).astype("float32")


def relative_difference(actual, expected):
    """``max |actual - expected| / max(1, max |expected|)``: what :data:`TOLERANCE` bounds."""
    actual, expected = np.asarray(actual, "float64"), np.asarray(expected, "float64")
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return float(np.max(np.abs(actual - expected)) / max(1.0, np.max(np.abs(expected))))
