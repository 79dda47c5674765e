"""PatchConvNet: a column-shaped convnet whose global pooling is one attention layer.

Touvron et al., "Augmenting Convolutional networks with attention-based aggregation" (2021). A plain
convnet ends with global average pooling: every position counts the same, so nothing in the model says
which part of the image decided the class. PatchConvNet replaces that pooling by a learnable class token
that attends once over the final feature map. The attention weights of that token are, by construction,
the importance of each patch in the pooled vector the classifier reads, so the model explains itself
without any gradient-based saliency method.

The network has three parts, built here as the paper (and its code, deit's ``patchconvnet_models.py``)
has them:

* ``ConvStem``: ``log2(patch_size)`` bias-free 3x3 stride-2 convolutions with a GELU between two of them
  turn the image into a grid of patch vectors, one per ``patch_size x patch_size`` pixels.
* A *non-pyramidal* trunk: ``depth`` residual ``TrunkBlock`` layers that all keep the grid resolution and
  width (a "column", as in a ViT), each with its own weights. A block is
  ``x + gamma * (1x1 conv, GELU, depth-wise 3x3 conv, GELU, squeeze-excitation, 1x1 conv)(LayerNorm(x))``
  with a LayerScale ``gamma`` that starts at 1e-4.
* ``AttentionPooling``: one class-attention block (the class token attends over itself and the patches,
  then an MLP three times as wide as the token, each branch with LayerScale) whose attention weights over
  the patches are returned alongside the pooled vector; then a LayerNorm and the linear classifier.

Public names (the course's model-module protocol, CONTRIBUTING.md):
    ConvStem, SqueezeExcite, TrunkBlock, AttentionPooling   layers
    build_model(...)                                        the classifier (uint8 CIFAR images -> logits)
    patchconvnet_s60(**overrides), PATCHCONVNET_S60         the paper's ImageNet S60
    visualization_model(model), analyze(model, images)      the pooling attention over the patch grid
    trunk_blocks(model)                                     the trunk's blocks, in order
    AttentionRecorder                                       a callback keeping the maps while training
    PROFILES                                                smoke / workshop / full training profiles

The ``full`` profile keeps the size and training recipe of the keras.io example this course started from
("Augmenting convnets with aggregated attention": width 256, two trunk blocks, 48 px crops of 52 px CIFAR
images, AdamW 1e-3 / weight decay 1e-4, 50 epochs, warmup over the first 15 % of the steps) but builds the
paper's network. The example's network differed from the paper's: a full 3x3 convolution instead of the
depth-wise one, squeeze-excitation reducing the channels 8 times without biases, no LayerScale, a pooling
MLP as wide as the token, a stem of two biased convolutions with a GELU after each, and trunk blocks that
all shared one set of weights; it also evaluated on images resized straight to 48 px, where the course
centre-crops the same 52 px resize it trains on.
"""

import keras
import numpy as np
from keras import layers, ops

from course_utils.analysis import MapSet, numbered
from course_utils.models.blocks import MLP, DotProductAttention, LayerScale, StochasticDepth
from course_utils.models.common import (
    ImageModel,
    analysis,
    find_layer,
    find_layers,
    image_input,
    predict_outputs,
    with_outputs,
)
from course_utils.models.vit import check_vit_arguments
from course_utils.profiles import Profile
from course_utils.validation import (
    PACKAGE,
    require_choice,
    require_divisible,
    require_heads_divide,
    require_image_shape,
    require_positive_int,
    require_positive_number,
    require_rate,
    require_token_shape,
)

BUILDER = "patch_convnet.build_model()"
PATCH_SIZES = (2, 4, 8, 16, 32)
"""The patch sizes the stem can make: one stride-2 convolution per halving, so a power of two."""
ATTENTION_OUTPUT = "pooling_attention"
"""The visualization model's output holding the pooling attention, ``(batch, heads, grid, grid)``."""
ATTENTION_MAP = "pooling attention"
"""The name of the pooling attention among ``analyze``'s maps."""


def _gelu(x):
    """The exact (erf) GELU, as PyTorch's ``nn.GELU()`` the paper's code uses (``ops.gelu`` defaults to tanh)."""
    return ops.gelu(x, approximate=False)


# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------
@keras.saving.register_keras_serializable(package=PACKAGE)
class ConvStem(layers.Layer):
    """Map pixels to a grid of patch vectors with 3x3, stride-2 convolutions (the paper's stem).

    One convolution per halving of the image, ``log2(patch_size)`` in all, without biases and with a GELU
    between two convolutions (none after the last: the trunk starts with a LayerNorm). The widths double
    up to ``embed_dim``: ``embed_dim / 2, embed_dim`` for 4 px patches, ``embed_dim / 8, / 4, / 2,
    embed_dim`` for 16 px patches. Every convolution pads its input by one pixel on each side, so output
    position ``i`` looks at a 3x3 window centred on input pixel ``2 i``.

    Args:
        embed_dim: channels of the patch vectors (``d`` in the paper); ``patch_size / 2`` must divide it.
        patch_size: side of the block of pixels one vector stands for, one of :data:`PATCH_SIZES`.

    Shapes: ``(batch, height, width, channels)`` -> ``(batch, height / patch_size, width / patch_size,
    embed_dim)``; ``patch_size`` must divide ``height`` and ``width``.

    Example:
    >>> stem = ConvStem(embed_dim=64, patch_size=4)
    >>> tuple(stem(keras.ops.ones((2, 48, 48, 3))).shape), [conv.filters for conv in stem.convolutions]
    ((2, 12, 12, 64), [32, 64])
    """

    def __init__(self, embed_dim, patch_size=4, **kwargs):
        super().__init__(**kwargs)
        self.patch_size = require_choice("patch_size", patch_size, PATCH_SIZES)
        self.embed_dim = require_positive_int("embed_dim", embed_dim)
        require_divisible("embed_dim", embed_dim, "patch_size / 2", patch_size // 2)

    def build(self, input_shape):
        require_image_shape(self.__class__.__name__, input_shape)
        for side_name, side in (("image height", input_shape[1]), ("image width", input_shape[2])):
            if side is not None:
                require_divisible(side_name, side, "patch_size", self.patch_size)
        count = self.patch_size.bit_length() - 1  # log2(patch_size) halvings
        widths = [self.embed_dim >> (count - 1 - index) for index in range(count)]
        self.convolutions = []
        shape = tuple(input_shape)
        for index, width in enumerate(widths):
            conv = layers.Conv2D(width, 3, strides=2, use_bias=False, name=f"conv_{index + 1}")
            conv.build(self._padded(shape))
            shape = conv.compute_output_shape(self._padded(shape))
            self.convolutions.append(conv)

    @staticmethod
    def _padded(shape):
        """The shape after padding one pixel on each side of the height and width."""
        return (shape[0], *(None if side is None else side + 2 for side in shape[1:3]), shape[3])

    def call(self, images):
        x = images
        for index, conv in enumerate(self.convolutions):
            if index:
                x = _gelu(x)
            x = conv(ops.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))))
        return x

    def compute_output_shape(self, input_shape):
        def shrink(side):
            return None if side is None else side // self.patch_size

        return (input_shape[0], shrink(input_shape[1]), shrink(input_shape[2]), self.embed_dim)

    def get_config(self):
        config = super().get_config()
        config.update(embed_dim=self.embed_dim, patch_size=self.patch_size)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class SqueezeExcite(layers.Layer):
    """Squeeze-and-excitation (Hu et al., 2018): rescale each channel by a gate computed from the whole map.

    ``gate = sigmoid(W2 relu(W1 mean_hw(x) + b1) + b2)``, ``y = x * gate``. ``W1`` maps the channels to a
    bottleneck of ``round(channels * hidden_ratio)`` and ``W2`` back; both have biases (timm's
    ``SqueezeExcite``, which the paper's code uses, writes them as 1x1 convolutions of the 1x1 averaged map,
    which is what a Dense layer computes). The gate lies in (0, 1) per sample and channel.

    Args:
        hidden_ratio: bottleneck width as a fraction of the channels (the paper: 1/4, timm's ``rd_ratio``).

    Shapes: ``(batch, height, width, channels)`` -> same.

    Example:
    >>> se = SqueezeExcite(hidden_ratio=0.25)
    >>> tuple(se(keras.ops.ones((2, 12, 12, 64))).shape), se.reduce.units
    ((2, 12, 12, 64), 16)
    """

    def __init__(self, hidden_ratio=0.25, **kwargs):
        super().__init__(**kwargs)
        self.hidden_ratio = require_positive_number("hidden_ratio", hidden_ratio, example="0.25")

    def build(self, input_shape):
        channels = input_shape[-1]
        hidden = require_positive_int("round(channels * hidden_ratio)", round(channels * self.hidden_ratio))
        self.reduce = layers.Dense(hidden, activation="relu", name="reduce")
        self.reduce.build((input_shape[0], channels))
        self.expand = layers.Dense(channels, activation="sigmoid", name="expand")
        self.expand.build((input_shape[0], hidden))

    def call(self, x):
        summary = ops.mean(x, axis=(1, 2))  # (batch, channels)
        gate = self.expand(self.reduce(summary))
        return x * gate[:, None, None, :]

    def get_config(self):
        config = super().get_config()
        config.update(hidden_ratio=self.hidden_ratio)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class TrunkBlock(layers.Layer):
    """One residual block of the non-pyramidal trunk (the paper's convolutional block); grid and width stay.

    ``y = x + drop_path(gamma * branch(LayerNorm(x)))`` with the branch
    ``Conv1x1 -> GELU -> DepthwiseConv3x3 -> GELU -> SqueezeExcite(1/4) -> Conv1x1``. Every convolution
    keeps the channel count and has a bias; the depth-wise one filters each channel over its own 3x3
    neighbourhood (the only spatial mixing in the block), the 1x1 convolutions mix channels at each
    position. ``gamma`` is a LayerScale vector starting at ``layer_scale_init``, so a new block starts
    close to the identity. Every instance creates its own weights.

    Args:
        layer_scale_init: start value of ``gamma`` (1e-4 in the paper).
        drop_path_rate: probability of dropping the branch for a sample during training (stochastic depth).
        layer_norm_epsilon: LayerNormalization epsilon.

    Shapes: ``(batch, height, width, channels)`` -> same.

    Example:
    >>> block = TrunkBlock()
    >>> tuple(block(keras.ops.ones((2, 12, 12, 64))).shape), block.count_params()
    ((2, 12, 12, 64), 11280)
    """

    def __init__(self, layer_scale_init=1e-4, drop_path_rate=0.0, layer_norm_epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.layer_scale_init = require_positive_number("layer_scale_init", layer_scale_init, example="1e-4")
        self.drop_path_rate = require_rate("drop_path_rate", drop_path_rate)
        self.layer_norm_epsilon = require_positive_number("layer_norm_epsilon", layer_norm_epsilon, example="1e-6")

    def build(self, input_shape):
        require_image_shape(self.__class__.__name__, input_shape)
        channels = input_shape[-1]
        self.norm = layers.LayerNormalization(epsilon=self.layer_norm_epsilon, name="norm")
        self.pointwise = layers.Conv2D(channels, 1, name="pointwise")
        self.depthwise = layers.DepthwiseConv2D(3, padding="same", name="depthwise")
        self.squeeze_excite = SqueezeExcite(name="squeeze_excite")
        self.project = layers.Conv2D(channels, 1, name="project")
        self.layer_scale = LayerScale(self.layer_scale_init, name="layer_scale")
        for layer in (self.norm, self.pointwise, self.depthwise, self.squeeze_excite, self.project,
                      self.layer_scale):
            layer.build(input_shape)  # none of them changes the shape
        self.drop_path = StochasticDepth(self.drop_path_rate, name="drop_path")

    def call(self, x, training=None):
        branch = _gelu(self.pointwise(self.norm(x)))
        branch = self.squeeze_excite(_gelu(self.depthwise(branch)))
        return x + self.drop_path(self.layer_scale(self.project(branch)), training=training)

    def get_config(self):
        config = super().get_config()
        config.update(
            layer_scale_init=self.layer_scale_init,
            drop_path_rate=self.drop_path_rate,
            layer_norm_epsilon=self.layer_norm_epsilon,
        )
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class AttentionPooling(layers.Layer):
    """Pool patch vectors into one vector: the paper's class-attention block with a learned class token.

    With ``tokens = LayerNorm([cls, patches])``::

        cls <- cls + gamma_1 * Dropout(Attention(query = tokens[0], keys = values = tokens))
        cls <- cls + gamma_2 * MLP(LayerNorm(cls))

    The query is the class token alone, so the attention has one softmax row per head, over the class
    token itself and every patch. The attention is :class:`~course_utils.models.blocks.DotProductAttention`
    (query, key, value and output projections, all with biases); the MLP is ``mlp_ratio`` times as wide as
    the token; ``gamma_1`` and ``gamma_2`` are LayerScale vectors starting at ``layer_scale_init``.

    Args:
        num_heads: attention heads; must divide the channels (each head gets ``channels // num_heads``).
        mlp_ratio: hidden width of the MLP as a multiple of the channels (the paper: 3).
        dropout_rate: dropout after the attention's output projection and inside the MLP (training only).
        attention_dropout: dropout on the attention weights (training only).
        layer_scale_init: start value of both LayerScale vectors (the paper: 1e-4).
        layer_norm_epsilon: LayerNormalization epsilon.

    Shapes: ``(batch, patches, channels)`` -> ``[(batch, channels), (batch, num_heads, patches)]``: the
    pooled vector and the class token's attention weights on the patches, before dropout. The weight the
    token keeps on itself is left out, so a row sums to less than 1; :meth:`attend` returns whole rows.

    Example:
    >>> pooled, weights = AttentionPooling(num_heads=1)(keras.ops.ones((2, 144, 64)))
    >>> tuple(pooled.shape), tuple(weights.shape)
    ((2, 64), (2, 1, 144))
    """

    def __init__(
        self,
        num_heads=1,
        mlp_ratio=3.0,
        dropout_rate=0.0,
        attention_dropout=0.0,
        layer_scale_init=1e-4,
        layer_norm_epsilon=1e-6,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_heads = require_positive_int("num_heads", num_heads)
        self.mlp_ratio = require_positive_number("mlp_ratio", mlp_ratio, example="3.0")
        self.dropout_rate = require_rate("dropout_rate", dropout_rate)
        self.attention_dropout = require_rate("attention_dropout", attention_dropout)
        self.layer_scale_init = require_positive_number("layer_scale_init", layer_scale_init, example="1e-4")
        self.layer_norm_epsilon = require_positive_number("layer_norm_epsilon", layer_norm_epsilon, example="1e-6")

    def build(self, input_shape):
        require_token_shape(
            self.__class__.__name__, input_shape, hint="Flatten a (batch, height, width, channels) grid first."
        )
        channels = input_shape[-1]
        require_heads_divide(channels, self.num_heads)
        self.class_token = self.add_weight(
            name="class_token",
            shape=(1, 1, channels),
            initializer=keras.initializers.TruncatedNormal(stddev=0.02),
        )
        tokens_shape = (input_shape[0], None if input_shape[1] is None else input_shape[1] + 1, channels)
        query_shape = (input_shape[0], 1, channels)
        self.token_norm = layers.LayerNormalization(epsilon=self.layer_norm_epsilon, name="token_norm")
        self.token_norm.build(tokens_shape)
        self.attention = DotProductAttention(self.num_heads, self.attention_dropout, name="attention")
        self.attention.build(query_shape, tokens_shape)
        self.attention_output_dropout = layers.Dropout(self.dropout_rate)
        self.attention_scale = LayerScale(self.layer_scale_init, name="attention_scale")
        self.attention_scale.build(query_shape)
        self.mlp_norm = layers.LayerNormalization(epsilon=self.layer_norm_epsilon, name="mlp_norm")
        self.mlp_norm.build(query_shape)
        self.mlp = MLP(int(channels * self.mlp_ratio), dropout_rate=self.dropout_rate, name="mlp")
        self.mlp.build(query_shape)
        self.mlp_scale = LayerScale(self.layer_scale_init, name="mlp_scale")
        self.mlp_scale.build(query_shape)

    def attend(self, patches, training=None):
        """The attention step alone: ``(class_token, update, weights)``.

        ``class_token`` ``(batch, 1, channels)`` is the learned token repeated over the batch; ``update``
        ``(batch, 1, channels)`` the attention's output after dropout, before LayerScale; ``weights``
        ``(batch, num_heads, 1 + patches)`` the class token's softmax row, its weight on itself first.
        """
        batch, channels = ops.shape(patches)[0], patches.shape[-1]
        class_token = ops.broadcast_to(ops.cast(self.class_token, patches.dtype), (batch, 1, channels))
        tokens = self.token_norm(ops.concatenate([class_token, patches], axis=1))
        update, weights = self.attention(tokens[:, :1], tokens, training=training)
        return class_token, self.attention_output_dropout(update, training=training), weights[:, :, 0, :]

    def call(self, patches, training=None):
        cls, update, weights = self.attend(patches, training=training)
        cls = cls + self.attention_scale(update)
        cls = cls + self.mlp_scale(self.mlp(self.mlp_norm(cls), training=training))
        return cls[:, 0, :], weights[:, :, 1:]  # the patches' weights; column 0 is the token on itself

    def compute_output_shape(self, input_shape):
        return [(input_shape[0], input_shape[-1]), (input_shape[0], self.num_heads, input_shape[1])]

    def get_config(self):
        config = super().get_config()
        config.update(
            num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio,
            dropout_rate=self.dropout_rate,
            attention_dropout=self.attention_dropout,
            layer_scale_init=self.layer_scale_init,
            layer_norm_epsilon=self.layer_norm_epsilon,
        )
        return config


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------
def build_model(
    *,
    image_size=48,
    patch_size=4,
    embed_dim=256,
    depth=2,
    num_heads=1,
    mlp_ratio=3.0,
    qkv_bias=True,
    dropout_rate=0.0,
    attention_dropout=0.0,
    drop_path_rate=0.0,
    layer_scale_init=1e-4,
    layer_norm_epsilon=1e-6,
    num_classes=10,
    input_size=32,
    resize_to=None,
    include_preprocessing=True,
    name="patch_convnet",
):
    """Build the paper's PatchConvNet, mapping images to logits.

    uint8 ``(batch, input_size, input_size, 3)`` -> preprocessing (rescale, resize to ``resize_to``, crop
    ``image_size``: random in training, centred at inference; random flip) -> ``ConvStem`` ->
    ``depth`` x ``TrunkBlock`` (layers ``trunk_block_0`` ...) -> flatten to ``(batch, patches, embed_dim)``
    -> ``AttentionPooling`` -> LayerNorm -> Dense -> logits ``(batch, num_classes)``. The attention map has
    ``(image_size / patch_size) ** 2`` patches (12x12 for 48 px images and 4 px patches).

    The defaults are the paper's block, stem and pooling at the size of the ``full`` profile (its 52 px
    resize and dropout are set by the profile). :func:`patchconvnet_s60` builds the paper's ImageNet S60.

    Args:
        image_size: side of the images the stem sees; ``patch_size`` must divide it.
        patch_size: pixels per patch side, one of :data:`PATCH_SIZES` (one stem convolution per halving).
        embed_dim: width of the stem output and of the whole trunk; ``patch_size / 2`` and ``num_heads``
            must divide it.
        depth: number of trunk blocks, each with its own weights.
        num_heads: heads of the attention pooling (the paper uses 1).
        mlp_ratio: hidden width of the pooling's MLP as a multiple of ``embed_dim`` (the paper: 3).
        qkv_bias: biases in the pooling's query, key and value projections. Only ``True`` (every
            PatchConvNet of the paper) is available: the projections are those of ``blocks.DotProductAttention``.
        dropout_rate: dropout after the pooling's attention projection and inside its MLP (training only).
        attention_dropout: dropout on the pooling's attention weights (training only).
        drop_path_rate: stochastic-depth rate, the same in every trunk block (the paper's constant rate).
        layer_scale_init: start value of every LayerScale (trunk blocks and both pooling branches).
        layer_norm_epsilon: epsilon of every LayerNorm (trunk blocks, pooling, classifier head).
        num_classes: number of classes.
        input_size: side of the uint8 input images.
        resize_to: side to resize to before cropping ``image_size`` (the augmentation margin); default
            ``image_size + image_size // 8``.
        include_preprocessing: if False, the model takes float images ``(batch, image_size, image_size,
            3)`` already scaled, with no resizing or augmentation (``input_size`` and ``resize_to`` unused).
        name: model name.

    Shapes: ``(batch, input_size, input_size, 3)`` uint8 -> ``(batch, num_classes)`` logits.

    Example:
    >>> model = build_model(image_size=16, embed_dim=16, depth=1)
    >>> model.input_shape, model.output_shape
    ((None, 32, 32, 3), (None, 10))
    """
    require_choice("qkv_bias", qkv_bias, (True,))
    # Construct the layers first, so that a bad argument fails here and not halfway through the graph.
    stem = ConvStem(embed_dim, patch_size, name="stem")  # a power-of-two patch and a width it can halve
    check_vit_arguments(image_size, patch_size, embed_dim, depth, num_heads, num_classes)
    blocks = [
        TrunkBlock(
            layer_scale_init=layer_scale_init,
            drop_path_rate=drop_path_rate,
            layer_norm_epsilon=layer_norm_epsilon,
            name=f"trunk_block_{index}",
        )
        for index in range(depth)
    ]
    pooling = AttentionPooling(
        num_heads=num_heads,
        mlp_ratio=mlp_ratio,
        dropout_rate=dropout_rate,
        attention_dropout=attention_dropout,
        layer_scale_init=layer_scale_init,
        layer_norm_epsilon=layer_norm_epsilon,
        name="attention_pooling",
    )

    inputs, images = image_input(image_size, input_size, resize_to, include_preprocessing)
    grid = stem(images)
    for block in blocks:
        grid = block(grid)
    side = image_size // patch_size
    patches = layers.Reshape((side * side, embed_dim), name="flatten_patches")(grid)
    pooled, _ = pooling(patches)
    pooled = layers.LayerNormalization(epsilon=layer_norm_epsilon, name="head_norm")(pooled)
    logits = layers.Dense(num_classes, name="logits")(pooled)
    return ImageModel(inputs, logits, name=name)


PATCHCONVNET_S60 = dict(
    image_size=224,
    patch_size=16,
    embed_dim=384,
    depth=60,
    num_heads=1,
    mlp_ratio=3.0,
    qkv_bias=True,
    layer_scale_init=1e-4,
    layer_norm_epsilon=1e-6,
    num_classes=1000,
    include_preprocessing=False,
)
"""The paper's ``S60`` (deit's ``patchconvnet_models.S60``): ImageNet, 224 px float images, 60 trunk blocks."""


def patchconvnet_s60(**overrides):
    """Build the paper's ImageNet ``S60`` (25,231,096 parameters, as deit's ``S60``).

    Keyword arguments override entries of :data:`PATCHCONVNET_S60` (any argument of :func:`build_model`).
    Shapes: ``(batch, 224, 224, 3)`` float -> ``(batch, 1000)`` logits.
    """
    return build_model(**{**PATCHCONVNET_S60, "name": "patchconvnet_s60", **overrides})


def trunk_blocks(model):
    """The ``TrunkBlock`` layers of a model from :func:`build_model`, in order."""
    return find_layers(model, TrunkBlock, BUILDER)


def _grid(model):
    """``(rows, columns)`` of the patch grid: the stem's output, which the trunk and the map keep."""
    return tuple(find_layer(model, ConvStem, BUILDER).output.shape[1:3])


def visualization_model(model):
    """A model on the same weights as ``model`` that also returns the attention-pooling weights.

    Outputs a dict: ``"logits"`` ``(batch, num_classes)`` and ``"pooling_attention"``
    (:data:`ATTENTION_OUTPUT`) ``(batch, num_heads, grid, grid)``: the class token's weight on every
    patch, laid out on the stem's grid (row-major, as the patches were flattened). Training ``model``
    further updates this model too.
    """
    pooling = find_layer(model, AttentionPooling, BUILDER)
    _, weights = pooling.output
    maps = layers.Reshape((pooling.num_heads, *_grid(model)), name="attention_grid")(weights)
    return with_outputs(model, {ATTENTION_OUTPUT: maps})


def analyze(model, images, batch_size=128):
    """Probabilities, and the pooling attention of every head over the patch grid.

    Args:
        model: a model from :func:`build_model`, or (cheaper when called often) its
            :func:`visualization_model`.
        images: uint8 ``(batch, height, width, 3)`` (or what the model takes).
        batch_size: images per prediction step.

    Returns:
        :class:`course_utils.analysis.Analysis` ``(probabilities, maps)``: softmax probabilities
        ``(batch, num_classes)`` and ``maps["pooling attention"]`` (:data:`ATTENTION_MAP`), a
        :class:`MapSet` ``(batch, heads, grid, grid)`` with items ``("head 1", ...)``, not signed.

    Example:
    >>> model = build_model(image_size=16, embed_dim=16, depth=1, num_heads=2)
    >>> probabilities, maps = analyze(model, np.zeros((3, 32, 32, 3), "uint8"))
    >>> probabilities.shape, maps["pooling attention"].values.shape, maps["pooling attention"].items
    ((3, 10), (3, 2, 4, 4), ('head 1', 'head 2'))
    """
    outputs = predict_outputs(model, visualization_model, images, batch_size)
    attention = outputs[ATTENTION_OUTPUT]
    maps = {
        ATTENTION_MAP: MapSet(
            attention,
            items=numbered("head", attention.shape[1]),
            signed=False,
            description="the class token's attention weight on each patch of the stem's grid: the share of "
            "that patch in the pooled vector the classifier reads (the weight the token keeps on itself is "
            "left out, so a map sums to less than 1)",
        )
    }
    return analysis(outputs, maps)


# --------------------------------------------------------------------------------------------
# Watching attention during training
# --------------------------------------------------------------------------------------------
class AttentionRecorder(keras.callbacks.Callback):
    """Record the attention maps of a fixed set of images while a PatchConvNet trains.

    At the end of epochs ``every``, ``2 * every``, ... (counting epochs from 1, as Keras's progress bar
    does) the maps of ``images`` are computed in inference mode on the current weights and appended to
    ``frames`` (one numpy array ``(batch, grid, grid)`` per recording: the ``"pooling attention"`` map of
    :func:`analyze`, averaged over heads), with the epoch number in ``epochs``. With
    ``record_initial=True`` the untrained model's maps are recorded first, as epoch 0. Fitting again with
    the same recorder keeps appending (Keras numbers the epochs of each fit call from ``initial_epoch``).

    Args:
        images: the uint8 images to follow, ``(batch, height, width, 3)``; keep a handful.
        every: record every this many epochs.
        record_initial: also record before the first epoch.
        batch_size: batch size of the inference passes.
    """

    def __init__(self, images, every=5, record_initial=False, batch_size=128):
        super().__init__()
        images = np.asarray(images)
        if images.ndim != 4:
            raise ValueError(f"`images` must be shaped (batch, height, width, channels), got {images.shape}.")
        self.images = images
        self.every = require_positive_int("every", every)
        self.record_initial = bool(record_initial)
        self.batch_size = require_positive_int("batch_size", batch_size)
        self.frames = []
        self.epochs = []
        self._viz_model = None

    def on_train_begin(self, logs=None):
        self._viz_model = visualization_model(self.model)  # cheap: no new weights, just a new graph
        if self.record_initial and not self.epochs:
            self._record(0)

    def on_epoch_end(self, epoch, logs=None):
        finished = epoch + 1  # Keras passes the 0-based index of the epoch that just ended
        if finished % self.every == 0:
            self._record(finished)

    def _record(self, epoch):
        _, maps = analyze(self._viz_model, self.images, batch_size=self.batch_size)
        self.frames.append(maps[ATTENTION_MAP].values.mean(axis=1))
        self.epochs.append(int(epoch))


# --------------------------------------------------------------------------------------------
# Profiles
# --------------------------------------------------------------------------------------------
PROFILES = {
    "smoke": Profile(
        name="smoke",
        epochs=1,
        batch_size=64,
        train_samples=512,
        eval_samples=256,
        test_samples=1000,
        learning_rate=1e-3,
        weight_decay=1e-4,
        warmup_epochs=0.0,
        model=dict(embed_dim=32, depth=1, patch_size=4, image_size=32, resize_to=36),
        note="a tiny model on 512 images: checks that everything runs, not that it learns",
    ),
    "workshop": Profile(
        name="workshop",
        epochs=8,
        batch_size=64,
        train_samples=10000,
        eval_samples=1000,
        learning_rate=2e-3,
        weight_decay=1e-4,
        warmup_epochs=1.0,
        model=dict(embed_dim=64, depth=2, num_heads=1, patch_size=4, image_size=32, resize_to=36),
        note=(
            "width 64 on 32 px crops (an 8x8 map, one patch per 4x4 input pixels), 10,000 images x 8 epochs: "
            "95-115 s of training measured on a busy shared 2-core CPU, below the about 140 s the example's "
            "block took at this size (its full 3x3 convolution costs more than the depth-wise one)"
        ),
    ),
    "full": Profile(
        name="full",
        epochs=50,
        batch_size=128,
        train_samples=None,
        eval_samples=None,
        learning_rate=1e-3,
        weight_decay=1e-4,
        warmup_epochs=7.5,
        model=dict(
            embed_dim=256,
            depth=2,
            num_heads=1,
            patch_size=4,
            image_size=48,
            resize_to=52,
            dropout_rate=0.2,
            attention_dropout=0.2,
        ),
        note=(
            "the keras.io example's size and recipe (width 256, 2 trunk blocks, one pooling head, 48 px crops "
            "of 52 px resizes, dropout 0.2 in the pooling, AdamW 1e-3 / wd 1e-4, 50 epochs, warmup over the "
            "first 15 % of steps, batch 128) with the paper's network, which differs from the example's in: "
            "the trunk block (depth-wise instead of full 3x3 convolution, squeeze-excitation to 1/4 of the "
            "channels with biases instead of 1/8 without, LayerScale from 1e-4), the stem (bias-free "
            "convolutions, no GELU after the last), the pooling (MLP 3x wide instead of 1x, LayerScale on "
            "both branches, dropout also after the attention projection and the MLP's second layer), "
            "no weight sharing between trunk blocks, and evaluation on centre crops of the 52 px resize "
            "instead of images resized to 48 px. Batch 128 fits a 16 GB T4 easily (1.3 M parameters, "
            "12x12x256 feature maps), so batch size and learning rate are kept as they are"
        ),
    ),
}
