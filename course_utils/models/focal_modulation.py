"""Focal Modulation Networks (Yang et al., 2022): attention-free context aggregation for images.

Self-attention first lets every query *interact* with every key, then *aggregates* the values. Focal
modulation turns that around: it first *aggregates* context around every position at several ranges
(stacked depth-wise convolutions with growing kernels, plus one global average), mixes those ranges with
per-position gates, and only then lets the query *interact* with the result through an element-wise
product with the "modulator". The gates and the modulator are ordinary tensors of the forward pass, so
they can be drawn over the image.

Layout: every layer here works on channels-last feature maps ``(batch, height, width, channels)``; a
1x1 convolution is a ``Dense`` layer on the channel axis.

Public names (the course's model-module protocol, CONTRIBUTING.md):
    FocalDownsample, FocalModulation, FocalNetBlock   layers
    build_model(...)                                  the classifier (uint8 CIFAR images -> logits)
    build_baseline(...)                               the plain ViT of the same size, for comparisons
    visualization_model(model), analyze(model, images)  gates and modulators
    without_focal_level(model, level), focal_level_ablation(...)  switch a level off, measure the accuracy
    load_timm_weights(model, state_dict)              copy a timm ``FocalNet`` into ``build_model``
    PROFILES                                          smoke / workshop / full training profiles

The layer options cover the variants of timm's ``FocalNet``: post-norm blocks (``use_post_norm``), a
LayerNorm inside the modulation (``use_post_norm_in_modulation``), the context normalised by the number
of levels (``normalize_modulator``), LayerScale (``layer_scale_init``, timm's ``layerscale_value``) and
overlapping convolutions for the stem and the downsampling layers (``use_overlap_down``).
"""

import re

import keras
import numpy as np
from keras import layers, ops

from course_utils.analysis import MapSet, numbered
from course_utils.models import timm_weights
from course_utils.models.blocks import MLP, LayerScale, PatchEmbedding, StochasticDepth
from course_utils.models.common import ImageModel, analysis, find_layers, image_input, predict_outputs, with_outputs
from course_utils.models.vit import builder_arguments, build_vit_like
from course_utils.profiles import Profile
from course_utils.validation import (
    PACKAGE,
    require_image_shape,
    require_positive_int,
    require_positive_number,
    require_rate,
)

LAYER_NORM_EPSILON = 1e-5  # PyTorch's default, which timm's FocalNet keeps
BUILDER = "focal_modulation.build_model()"
BASELINE_HEADS = 4  # the ViT baseline's attention heads (a FocalNet has none)

# Overlapping downsampling (timm's ``use_overlap_down``): stride -> (kernel size, zero padding per side).
OVERLAP_KERNELS = {2: (3, 1), 4: (7, 2)}


# --------------------------------------------------------------------------------------------
# Argument checks specific to this paper
# --------------------------------------------------------------------------------------------
def _require_focal_level(focal_level):
    if isinstance(focal_level, bool) or not isinstance(focal_level, int) or focal_level < 1:
        raise ValueError(
            f"`focal_level` must be an integer >= 1 (the number of depth-wise convolution levels before the "
            f"global context), got {focal_level!r}. Use focal_level=1 for a single local level plus the "
            f"global context; the paper uses 2 or 3."
        )
    return focal_level


def focal_kernel_sizes(focal_level, focal_window, focal_factor):
    """Kernel sizes of the depth-wise convolutions: ``focal_factor * k + focal_window`` for level ``k``.

    Every kernel must be odd so that ``same`` padding is symmetric (as in the paper and timm); this holds
    exactly when ``focal_window`` is odd and ``focal_factor`` is even (or only one level is used).
    """
    _require_focal_level(focal_level)
    require_positive_int("focal_window", focal_window)
    if isinstance(focal_factor, bool) or not isinstance(focal_factor, int) or focal_factor < 0:
        raise ValueError(f"`focal_factor` must be a non-negative integer, got {focal_factor!r}.")
    sizes = [focal_factor * level + focal_window for level in range(focal_level)]
    even = [size for size in sizes if size % 2 == 0]
    if even:
        raise ValueError(
            f"focal_window={focal_window}, focal_factor={focal_factor} and focal_level={focal_level} give the "
            f"kernel sizes {sizes}, of which {even} are even; a depth-wise kernel must be odd to stay centred "
            f"on its pixel. Use an odd focal_window (e.g. 3) and an even focal_factor (e.g. 2)."
        )
    return sizes


# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------
@keras.saving.register_keras_serializable(package=PACKAGE)
class FocalDownsample(layers.Layer):
    """Stem and between-stage downsampling: a strided convolution followed by a LayerNorm.

    With ``overlap=False`` the convolution's kernel equals its stride (non-overlapping patches, the
    shared :class:`~course_utils.models.blocks.PatchEmbedding`), so the stride must divide the input size.
    With ``overlap=True`` the kernels overlap, as in timm's ``use_overlap_down``: stride 4 uses a 7x7
    kernel with 2 pixels of zero padding, stride 2 a 3x3 kernel with 1 pixel; the output side is then
    ``floor((side + 2 * padding - kernel) / stride) + 1``.

    Args:
        stride: downsampling factor (4 for the stem, 2 between stages).
        embed_dim: output channels.
        overlap: use overlapping kernels (only for stride 2 or 4).
        layer_norm_epsilon: LayerNorm epsilon.

    Shapes: ``(batch, height, width, in_channels)`` -> ``(batch, height / stride, width / stride, embed_dim)``.

    Example:
    >>> tuple(FocalDownsample(stride=4, embed_dim=32)(keras.ops.ones((2, 32, 32, 3))).shape)
    (2, 8, 8, 32)
    """

    def __init__(self, stride, embed_dim, overlap=False, layer_norm_epsilon=LAYER_NORM_EPSILON, **kwargs):
        super().__init__(**kwargs)
        self.stride = require_positive_int("stride", stride)
        self.embed_dim = require_positive_int("embed_dim", embed_dim)
        self.overlap = bool(overlap)
        self.layer_norm_epsilon = require_positive_number("layer_norm_epsilon", layer_norm_epsilon, example="1e-5")
        if self.overlap and self.stride not in OVERLAP_KERNELS:
            raise ValueError(
                f"Overlapping downsampling is defined for stride 2 or 4 (as in timm), got stride={stride}. "
                f"Use overlap=False for other strides."
            )

    def _output_side(self, side):
        if side is None:
            return None
        if not self.overlap:
            return side // self.stride
        kernel, padding = OVERLAP_KERNELS[self.stride]
        return (side + 2 * padding - kernel) // self.stride + 1

    def build(self, input_shape):
        require_image_shape(self.__class__.__name__, input_shape)
        if self.overlap:
            kernel, padding = OVERLAP_KERNELS[self.stride]
            for side in input_shape[1:3]:
                if side is not None and side + 2 * padding < kernel:
                    raise ValueError(
                        f"FocalDownsample(stride={self.stride}, overlap=True) needs inputs of at least "
                        f"{kernel - 2 * padding} pixels, got {tuple(input_shape[1:3])}: use larger images or "
                        f"fewer stages."
                    )
            self.padding = layers.ZeroPadding2D(padding, name="padding")
            self.projection = layers.Conv2D(
                self.embed_dim, kernel, strides=self.stride, padding="valid", name="projection"
            )
            padded = self.padding.compute_output_shape(input_shape)
            self.projection.build(padded)
        else:
            self.padding = None
            # PatchEmbedding checks that the stride divides the input and says how to fix it if not.
            self.projection = PatchEmbedding(self.stride, self.embed_dim, flatten=False, name="projection")
            self.projection.build(input_shape)
        self.norm = layers.LayerNormalization(epsilon=self.layer_norm_epsilon, name="norm")
        self.norm.build(self.compute_output_shape(input_shape))

    @property
    def convolution(self):
        """The ``Conv2D`` doing the projection (for weight conversion)."""
        return self.projection if self.overlap else self.projection.projection

    def call(self, images):
        if self.padding is not None:
            images = self.padding(images)
        return self.norm(self.projection(images))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self._output_side(input_shape[1]), self._output_side(input_shape[2]), self.embed_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            stride=self.stride,
            embed_dim=self.embed_dim,
            overlap=self.overlap,
            layer_norm_epsilon=self.layer_norm_epsilon,
        )
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class FocalModulation(layers.Layer):
    """The focal modulation layer: aggregate context at ``focal_level + 1`` ranges, then modulate the query.

    With ``C`` channels and ``L = focal_level``:

    1. one projection (a 1x1 convolution) gives the query ``q`` (C), the context ``z^0`` (C) and ``L + 1``
       gates ``G`` per position;
    2. hierarchical contextualisation: ``z^l = GELU(DWConv_l(z^(l-1)))`` for ``l = 1..L`` with kernel
       sizes ``focal_factor * (l - 1) + focal_window`` (3, 5, 7, ... by default), so each level sees a
       wider neighbourhood; ``z^(L+1) = GELU(mean over positions of z^L)`` is the global context;
    3. gated aggregation: ``z_out = sum_l G_l * z^l`` (each gate is one number per position, broadcast
       over the channels; divided by ``L + 1`` if ``normalize_modulator``);
    4. the modulator ``m = h(z_out)``, a 1x1 convolution that mixes channels;
    5. interaction: ``y = proj(q * m)`` (with a LayerNorm on ``q * m`` first if ``use_post_norm``).

    The gates are not squashed (no softmax or sigmoid), as in the paper.

    Args:
        focal_level: ``L``, the number of depth-wise convolution levels (>= 1).
        focal_window: kernel size of the first level (odd).
        focal_factor: how much the kernel grows per level (even).
        normalize_modulator: divide the aggregated context by ``L + 1`` (timm's ``normalize_modulator``).
        use_post_norm: LayerNorm on ``q * m`` before the output projection (timm's
            ``use_post_norm_in_modulation``).
        dropout_rate: dropout on the output.
        layer_norm_epsilon: LayerNorm epsilon.

    Returns ``(outputs, gates, modulator)``:
        ``(batch, height, width, C)``, ``(batch, height, width, L + 1)``, ``(batch, height, width, C)``,
    for inputs ``(batch, height, width, C)``.

    Example:
    >>> outputs, gates, modulator = FocalModulation(focal_level=2)(keras.ops.ones((2, 8, 8, 16)))
    >>> tuple(gates.shape), tuple(modulator.shape)
    ((2, 8, 8, 3), (2, 8, 8, 16))
    """

    def __init__(
        self,
        focal_level,
        focal_window=3,
        focal_factor=2,
        normalize_modulator=False,
        use_post_norm=False,
        dropout_rate=0.0,
        layer_norm_epsilon=LAYER_NORM_EPSILON,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.kernel_sizes = focal_kernel_sizes(focal_level, focal_window, focal_factor)
        self.focal_level = focal_level
        self.focal_window = focal_window
        self.focal_factor = focal_factor
        self.normalize_modulator = bool(normalize_modulator)
        self.use_post_norm = bool(use_post_norm)
        self.dropout_rate = require_rate("dropout_rate", dropout_rate)
        self.layer_norm_epsilon = require_positive_number("layer_norm_epsilon", layer_norm_epsilon, example="1e-5")

    def build(self, input_shape):
        require_image_shape(self.__class__.__name__, input_shape)
        channels = input_shape[-1]
        if channels is None:
            raise ValueError("FocalModulation needs a known number of channels (the last input axis).")
        self.channels = channels
        self.f = layers.Dense(2 * channels + self.focal_level + 1, name="f")
        self.f.build(input_shape)
        self.focal_layers = []
        for level, kernel_size in enumerate(self.kernel_sizes):
            conv = layers.DepthwiseConv2D(
                kernel_size, padding="same", use_bias=False, activation="gelu", name=f"focal_level_{level}"
            )
            conv.build(input_shape)
            self.focal_layers.append(conv)
        self.h = layers.Dense(channels, name="h")
        self.h.build(input_shape)
        self.norm = None
        if self.use_post_norm:
            self.norm = layers.LayerNormalization(epsilon=self.layer_norm_epsilon, name="norm")
            self.norm.build(input_shape)
        self.proj = layers.Dense(channels, name="proj")
        self.proj.build(input_shape)
        self.dropout = layers.Dropout(self.dropout_rate)

    def call(self, x, training=None):
        channels = self.channels
        query, context, gates = ops.split(self.f(x), [channels, 2 * channels], axis=-1)

        aggregated = 0.0
        for level, conv in enumerate(self.focal_layers):
            context = conv(context)
            aggregated = aggregated + context * gates[..., level : level + 1]
        global_context = ops.gelu(ops.mean(context, axis=(1, 2), keepdims=True), approximate=False)
        aggregated = aggregated + global_context * gates[..., self.focal_level :]
        if self.normalize_modulator:
            aggregated = aggregated / (self.focal_level + 1)

        modulator = self.h(aggregated)
        outputs = query * modulator
        if self.norm is not None:
            outputs = self.norm(outputs)
        outputs = self.dropout(self.proj(outputs), training=training)
        return outputs, gates, modulator

    def compute_output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        return input_shape, input_shape[:-1] + (self.focal_level + 1,), input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            focal_level=self.focal_level,
            focal_window=self.focal_window,
            focal_factor=self.focal_factor,
            normalize_modulator=self.normalize_modulator,
            use_post_norm=self.use_post_norm,
            dropout_rate=self.dropout_rate,
            layer_norm_epsilon=self.layer_norm_epsilon,
        )
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class FocalNetBlock(layers.Layer):
    """A Transformer-style block with focal modulation in place of self-attention.

    Pre-norm (the paper's default)::

        x = x + DropPath(LayerScale(FocalModulation(LayerNorm(x))))
        x = x + DropPath(LayerScale(MLP(LayerNorm(x))))

    Post-norm (``use_post_norm=True``, timm's option for its large models): the LayerNorms move to the
    output of each branch, ``x = x + DropPath(LayerScale(LayerNorm(branch(x))))``.

    Args:
        focal_level, focal_window, focal_factor, normalize_modulator: see :class:`FocalModulation`.
        mlp_ratio: MLP hidden width as a multiple of the channels.
        use_post_norm: normalise the branch outputs instead of their inputs.
        use_post_norm_in_modulation: LayerNorm inside the modulation, on ``q * m``.
        layer_scale_init: LayerScale's start value, or ``None`` for no LayerScale (timm's ``layerscale_value``).
        dropout_rate: dropout on the modulation output and inside the MLP.
        drop_path_rate: stochastic depth probability of each residual branch.
        layer_norm_epsilon: LayerNorm epsilon.

    Returns ``(outputs, gates, modulator)`` with shapes ``(batch, height, width, C)``,
    ``(batch, height, width, focal_level + 1)`` and ``(batch, height, width, C)``.

    Example:
    >>> outputs, gates, _ = FocalNetBlock(focal_level=3, layer_scale_init=1e-4)(keras.ops.ones((2, 4, 4, 8)))
    >>> tuple(outputs.shape), tuple(gates.shape)
    ((2, 4, 4, 8), (2, 4, 4, 4))
    """

    def __init__(
        self,
        focal_level,
        focal_window=3,
        focal_factor=2,
        mlp_ratio=4.0,
        use_post_norm=False,
        use_post_norm_in_modulation=False,
        normalize_modulator=False,
        layer_scale_init=None,
        dropout_rate=0.0,
        drop_path_rate=0.0,
        layer_norm_epsilon=LAYER_NORM_EPSILON,
        **kwargs,
    ):
        super().__init__(**kwargs)
        focal_kernel_sizes(focal_level, focal_window, focal_factor)
        self.focal_level = focal_level
        self.focal_window = focal_window
        self.focal_factor = focal_factor
        self.mlp_ratio = require_positive_number("mlp_ratio", mlp_ratio)
        self.use_post_norm = bool(use_post_norm)
        self.use_post_norm_in_modulation = bool(use_post_norm_in_modulation)
        self.normalize_modulator = bool(normalize_modulator)
        self.layer_scale_init = (
            None if layer_scale_init is None else require_positive_number("layer_scale_init", layer_scale_init)
        )
        self.dropout_rate = require_rate("dropout_rate", dropout_rate)
        self.drop_path_rate = require_rate("drop_path_rate", drop_path_rate)
        self.layer_norm_epsilon = require_positive_number("layer_norm_epsilon", layer_norm_epsilon, example="1e-5")

    def build(self, input_shape):
        require_image_shape(self.__class__.__name__, input_shape)
        channels = input_shape[-1]
        hidden = int(channels * self.mlp_ratio)
        if hidden < 1:
            raise ValueError(f"mlp_ratio={self.mlp_ratio} gives an MLP of width 0 for {channels} channels.")

        def norm(name):
            layer = layers.LayerNormalization(epsilon=self.layer_norm_epsilon, name=name)
            layer.build(input_shape)
            return layer

        def scale(name):
            if self.layer_scale_init is None:
                return None
            layer = LayerScale(layer_scale_init=self.layer_scale_init, name=name)
            layer.build(input_shape)
            return layer

        pre, post = not self.use_post_norm, self.use_post_norm
        self.norm1 = norm("norm1") if pre else None
        self.modulation = FocalModulation(
            self.focal_level,
            focal_window=self.focal_window,
            focal_factor=self.focal_factor,
            normalize_modulator=self.normalize_modulator,
            use_post_norm=self.use_post_norm_in_modulation,
            dropout_rate=self.dropout_rate,
            layer_norm_epsilon=self.layer_norm_epsilon,
            name="modulation",
        )
        self.modulation.build(input_shape)
        self.norm1_post = norm("norm1_post") if post else None
        self.ls1 = scale("ls1")
        self.norm2 = norm("norm2") if pre else None
        self.mlp = MLP(hidden, dropout_rate=self.dropout_rate, name="mlp")
        self.mlp.build(input_shape)
        self.norm2_post = norm("norm2_post") if post else None
        self.ls2 = scale("ls2")
        self.drop_path = StochasticDepth(self.drop_path_rate, name="drop_path")

    @staticmethod
    def _apply(layer, x):
        return x if layer is None else layer(x)

    def call(self, x, training=None):
        branch = self._apply(self.norm1, x)
        branch, gates, modulator = self.modulation(branch, training=training)
        branch = self._apply(self.ls1, self._apply(self.norm1_post, branch))
        x = x + self.drop_path(branch, training=training)

        branch = self.mlp(self._apply(self.norm2, x), training=training)
        branch = self._apply(self.ls2, self._apply(self.norm2_post, branch))
        x = x + self.drop_path(branch, training=training)
        return x, gates, modulator

    def compute_output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        return input_shape, input_shape[:-1] + (self.focal_level + 1,), input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            focal_level=self.focal_level,
            focal_window=self.focal_window,
            focal_factor=self.focal_factor,
            mlp_ratio=self.mlp_ratio,
            use_post_norm=self.use_post_norm,
            use_post_norm_in_modulation=self.use_post_norm_in_modulation,
            normalize_modulator=self.normalize_modulator,
            layer_scale_init=self.layer_scale_init,
            dropout_rate=self.dropout_rate,
            drop_path_rate=self.drop_path_rate,
            layer_norm_epsilon=self.layer_norm_epsilon,
        )
        return config


# --------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------
def _per_stage(name, value, num_stages):
    """Broadcast an int to every stage, or check that a list has one entry per stage."""
    if isinstance(value, (list, tuple)):
        if len(value) != num_stages:
            raise ValueError(
                f"`{name}` has {len(value)} entries but `depths` defines {num_stages} stages: give one value "
                f"per stage or a single int for all of them."
            )
        return list(value)
    return [value] * num_stages


def build_model(
    *,
    image_size=48,
    input_size=32,
    resize_to=None,
    include_preprocessing=True,
    num_classes=10,
    patch_size=4,
    embed_dim=256,
    depths=(2, 3, 2),
    focal_levels=2,
    focal_windows=3,
    focal_factor=2,
    mlp_ratio=4.0,
    dropout_rate=0.1,
    drop_path_rate=0.0,
    head_dropout_rate=0.0,
    use_overlap_down=False,
    use_post_norm=False,
    use_post_norm_in_modulation=False,
    normalize_modulator=False,
    layer_scale_init=None,
    layer_norm_epsilon=LAYER_NORM_EPSILON,
    name="focalnet",
):
    """A FocalNet classifier.

    ``uint8 images -> preprocessing -> stem (stride patch_size) -> stage 0 -> [downsample x2 -> stage i]...
    -> LayerNorm -> global average pool -> Dense logits``. Stage ``i`` has ``embed_dim * 2**i`` channels
    (or ``embed_dim[i]``) and ``depths[i]`` :class:`FocalNetBlock` layers named ``stage{i}_block{j}``
    (stages and blocks counted from 0, as in timm's ``layers.{i}.blocks.{j}``).
    The defaults are the keras.io example's CIFAR-10 configuration (48 px crops, patch 4, widths
    256/512/1024, depths 2/3/2, two focal levels with 3x3 and 5x5 kernels, dropout 0.1), with the
    LayerNorm before the modulation that the paper's block has and the example's block lacks.

    Args:
        image_size: side of the images the network sees (after preprocessing).
        input_size: side of the uint8 images fed to the model (32 for CIFAR-10); ignored without
            preprocessing.
        resize_to: resize before the random/centre crop (default ``image_size + image_size // 8``).
        include_preprocessing: start with the uint8 input stem (:func:`course_utils.models.common.image_input`).
            With ``False`` the model takes float images ``(batch, image_size, image_size, 3)`` as they are
            (used for the comparison with timm).
        num_classes: output logits.
        patch_size: stride of the stem (4 in the paper and timm).
        embed_dim: channels of stage 0 (doubled at every stage), or a list with one width per stage.
        depths: blocks per stage.
        focal_levels, focal_windows: per stage (an int applies to every stage); see :class:`FocalModulation`.
        focal_factor: kernel growth per focal level.
        mlp_ratio: MLP hidden width as a multiple of the channels.
        dropout_rate: dropout in the modulation output and the MLPs (timm's ``proj_drop_rate``).
        drop_path_rate: stochastic depth, rising linearly from 0 to this value over all blocks.
        head_dropout_rate: dropout before the classifier (timm's ``drop_rate``).
        use_overlap_down: overlapping convolutions in the stem (7x7, stride 4) and downsampling (3x3,
            stride 2) instead of non-overlapping patches.
        use_post_norm, use_post_norm_in_modulation, normalize_modulator: see :class:`FocalNetBlock`.
        layer_scale_init: LayerScale's start value in every block, or ``None`` for no LayerScale (timm's
            ``layerscale_value``).
        layer_norm_epsilon: epsilon of every LayerNorm.
        name: model name.

    Returns:
        A ``keras.Model`` from ``(batch, input_size, input_size, 3)`` uint8 (or, without preprocessing,
        ``(batch, image_size, image_size, 3)`` float) to logits ``(batch, num_classes)``.

    Example:
    >>> model = build_model(image_size=32, embed_dim=8, depths=(1, 1), mlp_ratio=2.0)
    >>> model.input_shape, model.output_shape
    ((None, 32, 32, 3), (None, 10))
    """
    require_positive_int("num_classes", num_classes)
    require_positive_int("image_size", image_size)
    require_positive_int("patch_size", patch_size)
    if not isinstance(depths, (list, tuple)) or not depths:
        raise ValueError(f"`depths` must be a non-empty list of blocks per stage, got {depths!r}.")
    for depth in depths:
        require_positive_int("depths[i]", depth)
    num_stages = len(depths)
    if isinstance(embed_dim, (list, tuple)):
        widths = _per_stage("embed_dim", embed_dim, num_stages)
    else:
        widths = [require_positive_int("embed_dim", embed_dim) * 2**stage for stage in range(num_stages)]
    for width in widths:
        require_positive_int("embed_dim", width)
    levels = _per_stage("focal_levels", focal_levels, num_stages)
    windows = _per_stage("focal_windows", focal_windows, num_stages)
    for level, window in zip(levels, windows):
        focal_kernel_sizes(level, window, focal_factor)
    require_rate("drop_path_rate", drop_path_rate)
    if not use_overlap_down:
        total_stride = patch_size * 2 ** (num_stages - 1)
        if image_size % total_stride != 0:
            raise ValueError(
                f"image_size={image_size} is not divisible by the total stride {total_stride} "
                f"(patch_size={patch_size} times 2 for each of the {num_stages - 1} downsamplings). Choose an "
                f"image_size that is a multiple of {total_stride}, fewer stages, or use_overlap_down=True."
            )
    elif patch_size not in OVERLAP_KERNELS:
        raise ValueError(f"With use_overlap_down=True the stem stride patch_size must be 2 or 4, got {patch_size}.")

    inputs, x = image_input(image_size, input_size, resize_to, include_preprocessing)
    norm = dict(layer_norm_epsilon=layer_norm_epsilon)
    x = FocalDownsample(patch_size, widths[0], overlap=use_overlap_down, name="stem", **norm)(x)
    total_blocks = sum(depths)
    block_index = 0
    for stage, depth in enumerate(depths):
        if stage > 0:
            x = FocalDownsample(
                2, widths[stage], overlap=use_overlap_down, name=f"stage{stage}_downsample", **norm
            )(x)
        for block in range(depth):
            rate = drop_path_rate * block_index / (total_blocks - 1) if total_blocks > 1 else 0.0
            x, _, _ = FocalNetBlock(
                levels[stage],
                focal_window=windows[stage],
                focal_factor=focal_factor,
                mlp_ratio=mlp_ratio,
                use_post_norm=use_post_norm,
                use_post_norm_in_modulation=use_post_norm_in_modulation,
                normalize_modulator=normalize_modulator,
                layer_scale_init=layer_scale_init,
                dropout_rate=dropout_rate,
                drop_path_rate=rate,
                name=f"stage{stage}_block{block}",
                **norm,
            )(x)
            block_index += 1

    x = layers.LayerNormalization(epsilon=layer_norm_epsilon, name="head_norm")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dropout(head_dropout_rate, name="head_dropout")(x)
    logits = layers.Dense(num_classes, name="head")(x)
    return ImageModel(inputs, logits, name=name)


def build_baseline(*, num_heads=BASELINE_HEADS, **arguments):
    """The plain ViT the notebook compares with: :func:`course_utils.models.vit.build_vit` sized like this FocalNet.

    Takes :func:`build_model`'s arguments (``**profile.model``) and keeps what the two models share: the
    image and input sizes, preprocessing, ``patch_size``, the width of stage 0 as the ViT's ``embed_dim``,
    ``sum(depths)`` blocks, ``mlp_ratio``, ``dropout_rate`` and ``num_classes``. The FocalNet-only
    arguments (focal levels, LayerScale, ...) are accepted and have no ViT counterpart. ``num_heads`` (which
    a FocalNet does not have) must divide the stage-0 width.

    Example:
    >>> vit = build_baseline(image_size=32, embed_dim=16, depths=(1, 1), focal_levels=2, mlp_ratio=2.0)
    >>> vit.output_shape, len(vit.get_layer("block_1").weights) > 0
    ((None, 10), True)
    """
    config = builder_arguments(build_model, arguments)  # a TypeError names an unknown argument
    width = config["embed_dim"][0] if isinstance(config["embed_dim"], (list, tuple)) else config["embed_dim"]
    return build_vit_like(build_model, arguments, embed_dim=width, depth=sum(config["depths"]), num_heads=num_heads)


# --------------------------------------------------------------------------------------------
# Gates and modulators
# --------------------------------------------------------------------------------------------
_BLOCK_NAME = re.compile(r"^stage(\d+)_block(\d+)$")
_GATES_KEY = re.compile(r"^stage(\d+)_block(\d+)_gates$")


def _blocks_by_position(model):
    """``{(stage, block): layer}`` for every FocalNetBlock of a :func:`build_model` model, in graph order."""
    found = {}
    for layer in find_layers(model, FocalNetBlock, BUILDER):
        match = _BLOCK_NAME.match(layer.name)
        if match is None:
            raise ValueError(
                f"FocalNetBlock {layer.name!r} is not named stage<i>_block<j>: pass a model made by {BUILDER}."
            )
        found[(int(match.group(1)), int(match.group(2)))] = layer
    return found


def visualization_model(model):
    """A model on the same weights that also outputs every block's gates and modulator.

    Outputs a dict: ``"logits"`` ``(batch, classes)``, and for every block ``"stage{i}_block{j}_gates"``
    ``(batch, h, w, focal_level + 1)`` and ``"stage{i}_block{j}_modulator"`` ``(batch, h, w, channels)``
    at that stage's resolution (stages and blocks counted from 0, as the layers are named).
    """
    outputs = {}
    for (stage, block), layer in _blocks_by_position(model).items():
        _, gates, modulator = layer.output
        outputs[f"stage{stage}_block{block}_gates"] = gates
        outputs[f"stage{stage}_block{block}_modulator"] = modulator
    return with_outputs(model, outputs)


def analyze(model, images, batch_size=128):
    """Probabilities, and the gates and modulator norm of the last block of every stage.

    ``model``: the classifier from :func:`build_model`, or its :func:`visualization_model` when calling
    often. ``images`` go through it ``batch_size`` at a time.

    Returns:
        :class:`course_utils.analysis.Analysis` ``(probabilities, maps)``: softmax probabilities
        ``(batch, classes)`` and, for every stage ``s`` **counted from 0** (as the layers
        ``stage{s}_block{j}`` are named), two :class:`MapSet` values of that stage's last block at its
        resolution ``h x w``:

        * ``"stage {s} gates"``: ``(batch, L + 1, h, w)``, items ``("level 1", ..., "level L", "global")``,
          the gate of each focal level and of the global context at every position. The gates are linear
          outputs (no softmax or sigmoid), so ``signed=True``: they can be negative.
        * ``"stage {s} modulator norm"``: ``(batch, 1, h, w)``, item ``("modulator norm",)``, the L2 norm of
          the modulator over its channels (``signed=False``).
    """
    outputs = predict_outputs(model, visualization_model, images, batch_size)
    last_block = {}
    for match in filter(None, map(_GATES_KEY.match, outputs)):
        stage, block = int(match.group(1)), int(match.group(2))
        last_block[stage] = max(block, last_block.get(stage, block))
    maps = {}
    for stage, block in sorted(last_block.items()):
        gates = np.transpose(outputs[f"stage{stage}_block{block}_gates"], (0, 3, 1, 2))
        modulator = outputs[f"stage{stage}_block{block}_modulator"]
        maps[f"stage {stage} gates"] = MapSet(
            gates,
            items=numbered("level", gates.shape[1] - 1) + ("global",),
            signed=True,
            description=f"block {block} of stage {stage}: how strongly each focal level (and the global "
            f"context) enters the modulator at each position; a linear output, so it can be negative",
        )
        maps[f"stage {stage} modulator norm"] = MapSet(
            np.linalg.norm(modulator, axis=-1)[:, None],
            items=("modulator norm",),
            signed=False,
            description=f"block {block} of stage {stage}: the L2 norm of the modulator over its channels, how "
            f"strongly the query is rescaled at each position",
        )
    return analysis(outputs, maps)


# --------------------------------------------------------------------------------------------
# Does a level matter? Switch it off.
# --------------------------------------------------------------------------------------------
def without_focal_level(model, level):
    """A copy of a FocalNet in which every block ignores one focal level; ``model`` is unchanged.

    The gates are the last outputs of each block's projection ``f``: one per local level, then one for the
    global context. Zeroing the projection's weights and bias for one gate makes that gate 0 at every
    position, so its level adds nothing to the modulator, while everything else stays as trained.

    Args:
        model: a classifier from :func:`build_model`.
        level: ``"global"``, or a 0-based local level; a stage with fewer levels is left as it is.
    """
    copy = keras.Model.from_config(model.get_config())
    _switch_off(copy, model.get_weights(), level)
    return copy


def _switch_off(copy, weights, level):
    """Give ``copy`` the trained ``weights``, then zero the gate of ``level`` in every block."""
    most = max(block.modulation.focal_level for block in _blocks_by_position(copy).values())
    is_index = isinstance(level, (int, np.integer)) and not isinstance(level, bool)
    if level != "global" and not (is_index and 0 <= level < most):
        raise ValueError(f"level must be 'global' or a local level from 0 to {most - 1}, got {level!r}.")
    copy.set_weights(weights)
    for block in _blocks_by_position(copy).values():
        modulation = block.modulation
        gate = modulation.focal_level if level == "global" else int(level)
        if gate > modulation.focal_level:
            continue
        kernel = keras.ops.convert_to_numpy(modulation.f.kernel).copy()
        bias = keras.ops.convert_to_numpy(modulation.f.bias).copy()
        kernel[:, 2 * modulation.channels + gate], bias[2 * modulation.channels + gate] = 0.0, 0.0
        modulation.f.kernel.assign(kernel)
        modulation.f.bias.assign(bias)


def focal_level_ablation(model, images, labels, batch_size=256):
    """Accuracy of ``model`` on ``images``, and with each focal level switched off in turn (in every block).

    Returns ``{"all levels": accuracy, "without level 1": ..., "without global": ...}`` (fractions in
    [0, 1]): switching off a level the model relies on costs accuracy; one it ignores costs none. One copy
    of the model is reused for every level, so its prediction function is compiled once.
    """
    labels = np.asarray(labels).reshape(-1)
    images = np.asarray(images)

    def accuracy(candidate):
        return float(np.mean(np.argmax(candidate.predict(images, batch_size=batch_size, verbose=0), -1) == labels))

    weights = model.get_weights()
    copy = keras.Model.from_config(model.get_config())
    most = max(block.modulation.focal_level for block in _blocks_by_position(model).values())
    copy.set_weights(weights)
    result = {"all levels": accuracy(copy)}
    for level in (*range(most), "global"):
        _switch_off(copy, weights, level)
        result["without global" if level == "global" else f"without level {level + 1}"] = accuracy(copy)
    return result


# --------------------------------------------------------------------------------------------
# timm weights
# --------------------------------------------------------------------------------------------
TIMM_HOW_TO_FIX = (
    "Build the model with the timm model's configuration: embed_dim, depths, focal_levels, focal_windows, "
    "use_overlap_down, use_post_norm, use_post_norm_in_modulation, normalize_modulator, layer_scale_init "
    "(timm's layerscale_value), num_classes, and include_preprocessing=False."
)


def _timm_plan(model):
    """The key map: ``(timm key, variable, transform)`` for every weight of a :func:`build_model` model."""
    plan = []

    def conv(prefix, layer, transform):
        plan.append((f"{prefix}.weight", layer.kernel, transform))
        if layer.use_bias:
            plan.append((f"{prefix}.bias", layer.bias, timm_weights.same))

    def norm(prefix, layer):
        if layer is not None:
            plan.append((f"{prefix}.weight", layer.gamma, timm_weights.same))
            plan.append((f"{prefix}.bias", layer.beta, timm_weights.same))

    def scale(prefix, layer):
        if layer is not None:
            plan.append((f"{prefix}.gamma", layer.gamma, timm_weights.same))

    def downsample(prefix, layer):
        conv(f"{prefix}.proj", layer.convolution, timm_weights.conv)
        norm(f"{prefix}.norm", layer.norm)

    downsample("stem", model.get_layer("stem"))
    for (stage, block), layer in _blocks_by_position(model).items():
        if stage > 0 and block == 0:
            downsample(f"layers.{stage}.downsample", model.get_layer(f"stage{stage}_downsample"))
        prefix = f"layers.{stage}.blocks.{block}"
        modulation = layer.modulation
        norm(f"{prefix}.norm1", layer.norm1)
        conv(f"{prefix}.modulation.f", modulation.f, timm_weights.linear)
        for level, focal in enumerate(modulation.focal_layers):
            plan.append((f"{prefix}.modulation.focal_layers.{level}.0.weight", focal.kernel, timm_weights.depthwise))
        conv(f"{prefix}.modulation.h", modulation.h, timm_weights.linear)
        norm(f"{prefix}.modulation.norm", modulation.norm)
        conv(f"{prefix}.modulation.proj", modulation.proj, timm_weights.linear)
        norm(f"{prefix}.norm1_post", layer.norm1_post)
        scale(f"{prefix}.ls1", layer.ls1)
        norm(f"{prefix}.norm2", layer.norm2)
        conv(f"{prefix}.mlp.fc1", layer.mlp.hidden, timm_weights.linear)
        conv(f"{prefix}.mlp.fc2", layer.mlp.project, timm_weights.linear)
        norm(f"{prefix}.norm2_post", layer.norm2_post)
        scale(f"{prefix}.ls2", layer.ls2)
    norm("norm", model.get_layer("head_norm"))
    conv("head.fc", model.get_layer("head"), timm_weights.linear)
    return plan


def load_timm_weights(model, state_dict):
    """Copy the weights of a timm ``FocalNet`` into a model from :func:`build_model`, in place.

    Build the Keras model with the same configuration as the timm model (``embed_dim``, ``depths``,
    ``focal_levels``, ``focal_windows``, ``use_overlap_down``, ``use_post_norm``,
    ``use_post_norm_in_modulation``, ``normalize_modulator``, ``layer_scale_init`` (timm's
    ``layerscale_value``), ``num_classes``; ``include_preprocessing=False`` and ``image_size`` to compare on
    the same inputs). Convolution kernels are transposed from PyTorch's ``(out, in, kh, kw)`` to Keras's
    layouts, 1x1 convolutions become ``Dense`` kernels (:mod:`course_utils.models.timm_weights`).

    Args:
        model: the Keras model.
        state_dict: ``timm_model.state_dict()`` (torch tensors) or a dict of numpy arrays.

    Raises:
        ValueError listing every missing key, unused key, shape mismatch and model weight the key map does
        not cover (nothing is copied then).

    Returns:
        ``model``.
    """
    return timm_weights.load_state_dict(model, state_dict, _timm_plan(model), how_to_fix=TIMM_HOW_TO_FIX)


# --------------------------------------------------------------------------------------------
# Profiles
# --------------------------------------------------------------------------------------------
EXAMPLE_CONFIG = dict(
    image_size=48,
    resize_to=52,
    patch_size=4,
    embed_dim=256,
    depths=(2, 3, 2),
    focal_levels=2,
    focal_windows=3,
    mlp_ratio=4.0,
    dropout_rate=0.1,
)

PROFILES = {
    "smoke": Profile(
        name="smoke",
        epochs=1,
        batch_size=64,
        train_samples=512,
        eval_samples=256,
        test_samples=1000,
        learning_rate=1e-3,
        model=dict(image_size=32, embed_dim=16, depths=(1, 1), focal_levels=2, mlp_ratio=2.0, dropout_rate=0.0),
        note="tiny 2-stage FocalNet, 512 images: proves the notebook runs",
    ),
    "workshop": Profile(
        name="workshop",
        epochs=4,
        batch_size=128,
        train_samples=16000,
        eval_samples=2000,
        learning_rate=2e-3,
        warmup_epochs=0.5,
        model=dict(image_size=32, embed_dim=64, depths=(2, 2), focal_levels=2, mlp_ratio=2.0, dropout_rate=0.0),
        note=(
            "a narrow 2-stage FocalNet on 32 px (8x8 then 4x4 gate maps), 16,000 images, 4 epochs: sized for "
            "a 2-core CPU"
        ),
    ),
    "full": Profile(
        name="full",
        epochs=25,
        batch_size=256,
        learning_rate=2.5e-5,
        weight_decay=1e-4,
        warmup_epochs=3.75,
        model=EXAMPLE_CONFIG,
        note=(
            "the keras.io example's model and recipe: 48 px crops of 52 px resizes, widths 256/512/1024, depths "
            "2/3/2, focal level 2, dropout 0.1, AdamW weight decay 1e-4, 25 epochs, 15% warmup (68.8% "
            "validation there). Changed: batch 256 instead of 1024, because training takes about 13-24 MB per "
            "image (measured), so 1024 needs 13-24 GB and does not fit a 16 GB T4; the learning rate scaled "
            "linearly with it, 1e-4 * 256 / 1024 = 2.5e-5 (four times as many, smaller steps); a LayerNorm "
            "before the modulation, as in the paper and timm (the example's block has none); as in timm, no "
            "dropout after the stem, dropout after both MLP layers and LayerNorm epsilon 1e-5 throughout (the "
            "example: 1e-7 in the stem, downsampling and head norms); evaluation on the centre 48 px crop of "
            "the 52 px resize (the example resizes test images straight to 48 px); logits and a from-logits "
            "loss instead of a softmax output"
        ),
    ),
}
