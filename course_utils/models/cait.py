"""CaiT: LayerScale and class attention (Touvron et al., 2021, "Going deeper with Image Transformers").

CaiT changes a ViT in two places:

* **LayerScale** multiplies the output of every residual branch by a learned per-channel vector
  initialised small (0.1 up to 18 blocks, 1e-5 for 24, 1e-6 deeper), so at the start each block is close to
  the identity and a deep stack stays trainable. The layer itself is :class:`course_utils.models.blocks.LayerScale`.
* **Class attention**: the patches are processed by self-attention blocks *without* a class token; only
  afterwards a learned class token is appended and a few class-attention blocks let that token (and only
  that token) read from the patches. The class token's attention weights in those blocks say where the
  classifier looks; :func:`visualization_model` exposes them.

The patch stage uses *talking-heads* attention (Shazeer et al., 2020): the heads' attention logits are
mixed by a learned ``heads x heads`` matrix before the softmax, and the weights again after it.

Everything here follows timm's ``Cait`` closely enough that :func:`load_timm_weights` can copy a timm
``state_dict`` into a model from :func:`build_model`; :func:`cait_xxs24_224` has exactly timm's
``cait_xxs24_224`` parameter count.

The module follows the course's model-module protocol (CONTRIBUTING.md)::

    model = build_model(**profile.model)
    viz_model = visualization_model(model)
    probabilities, maps = analyze(viz_model, images)   # maps: {"class attention, block 1": MapSet, ...}
"""

import math

import keras
import numpy as np
from keras import layers, ops

from course_utils.analysis import MapSet, numbered
from course_utils.models import timm_weights
from course_utils.models.blocks import MLP, LayerScale, StochasticDepth, merge_heads, split_heads
from course_utils.models.common import ImageModel, analysis, find_layers, image_input, predict_outputs, with_outputs
from course_utils.models.vit import check_vit_arguments, patch_tokens
from course_utils.profiles import Profile
from course_utils.validation import (
    PACKAGE,
    require_heads_divide,
    require_positive_int,
    require_positive_number,
    require_rate,
    require_token_shape,
)

LAYER_NORM_EPSILON = 1e-6  # timm's CaiT uses LayerNorm(eps=1e-6) everywhere
# timm initialises every Linear weight of CaiT from a truncated normal with standard deviation 0.02 (biases
# zero). We do the same: with Keras's default Glorot initialisation the residual branches start much larger;
# in our CIFAR runs even a 4-block model without LayerScale then stayed at chance, which would turn the
# LayerScale experiment into an experiment about initialisation.
INIT_STDDEV = 0.02
VIZ_PREFIX = "class_attention_block_"
BUILDER = "cait.build_model()"
CLASS_TOKEN_HINT = "The input is [class token; patches]: prepend the class token with ClassToken."


def _dense(units, name, use_bias=True):
    """A Dense layer initialised like timm's CaiT Linear layers."""
    return layers.Dense(
        units, use_bias=use_bias, kernel_initializer=keras.initializers.TruncatedNormal(stddev=INIT_STDDEV), name=name
    )


# --------------------------------------------------------------------------------------------
# Attention
# --------------------------------------------------------------------------------------------
@keras.saving.register_keras_serializable(package=PACKAGE)
class TalkingHeadAttention(layers.Layer):
    """Multi-head self-attention whose heads talk to each other (Shazeer et al., 2020), as in CaiT.

    For every head ``h`` the logits are ``q_h k_h^T / sqrt(head_channels)``. A learned ``heads x heads``
    linear map (with bias) mixes these logits across heads before the softmax over the keys, and a second
    one mixes the softmax weights across heads after it. The mixed weights then average the values as in
    ordinary attention, and a final Dense layer projects the concatenated heads.

    Args:
        num_heads: number of heads; must divide the token width.
        qkv_bias: give the query/key/value projection a bias (timm's CaiT does).
        attention_dropout: dropout on the (mixed) attention weights.
        projection_dropout: dropout after the output projection.

    Shapes: ``(batch, tokens, channels)`` -> ``((batch, tokens, channels), (batch, heads, tokens, tokens))``;
    the second output holds the attention weights after the post-softmax mixing (what multiplies the
    values). Note that the mixing can make these weights negative and rows need not sum to one.

    Example:
    >>> outputs, weights = TalkingHeadAttention(num_heads=2)(keras.ops.ones((2, 5, 8)))
    >>> tuple(outputs.shape), tuple(weights.shape)
    ((2, 5, 8), (2, 2, 5, 5))
    """

    def __init__(self, num_heads, qkv_bias=True, attention_dropout=0.0, projection_dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = require_positive_int("num_heads", num_heads)
        self.qkv_bias = bool(qkv_bias)
        self.attention_dropout = require_rate("attention_dropout", attention_dropout)
        self.projection_dropout = require_rate("projection_dropout", projection_dropout)

    def build(self, input_shape):
        require_token_shape(self.__class__.__name__, input_shape)
        channels = input_shape[-1]
        require_heads_divide(channels, self.num_heads)
        heads_shape = (None, None, None, self.num_heads)
        self.qkv = _dense(3 * channels, "qkv", use_bias=self.qkv_bias)
        self.qkv.build(input_shape)
        self.pre_softmax_mix = _dense(self.num_heads, "pre_softmax_mix")
        self.pre_softmax_mix.build(heads_shape)
        self.post_softmax_mix = _dense(self.num_heads, "post_softmax_mix")
        self.post_softmax_mix.build(heads_shape)
        self.projection = _dense(channels, "projection")
        self.projection.build(input_shape)
        self.attention_drop = layers.Dropout(self.attention_dropout)
        self.projection_drop = layers.Dropout(self.projection_dropout)

    @staticmethod
    def _mix_heads(dense, scores):
        """Apply ``dense`` across the head axis of ``(batch, heads, queries, keys)`` scores."""
        mixed = dense(ops.transpose(scores, (0, 2, 3, 1)))  # heads last, where Dense acts
        return ops.transpose(mixed, (0, 3, 1, 2))

    def call(self, x, training=None):
        channels = x.shape[-1]
        head_channels = channels // self.num_heads
        query, key, value = ops.split(self.qkv(x), 3, axis=-1)
        query = split_heads(query, self.num_heads) * (head_channels**-0.5)
        key = split_heads(key, self.num_heads)
        value = split_heads(value, self.num_heads)
        logits = ops.matmul(query, ops.transpose(key, (0, 1, 3, 2)))  # (batch, heads, tokens, tokens)
        logits = self._mix_heads(self.pre_softmax_mix, logits)
        weights = ops.softmax(logits, axis=-1)
        weights = self._mix_heads(self.post_softmax_mix, weights)
        mixed = ops.matmul(self.attention_drop(weights, training=training), value)
        outputs = self.projection(merge_heads(mixed))
        return self.projection_drop(outputs, training=training), weights

    def compute_output_shape(self, input_shape):
        batch, tokens = input_shape[0], input_shape[1]
        return tuple(input_shape), (batch, self.num_heads, tokens, tokens)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_heads=self.num_heads,
            qkv_bias=self.qkv_bias,
            attention_dropout=self.attention_dropout,
            projection_dropout=self.projection_dropout,
        )
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class ClassAttention(layers.Layer):
    """Attention in which only the class token asks the question.

    The input is ``[class token; patches]``. The query comes from the class token alone; keys and values
    come from every token (the class token included). So the cost is linear in the number of patches,
    and the result is a new value for the class token only.

    Args:
        num_heads: number of heads; must divide the token width.
        qkv_bias: give the query, key and value projections a bias (timm's CaiT does).
        attention_dropout: dropout on the attention weights.
        projection_dropout: dropout after the output projection.

    Shapes: ``(batch, 1 + tokens, channels)`` -> ``((batch, 1, channels), (batch, heads, 1 + tokens))``;
    the second output is, per head, the softmax weights the class token gives to itself (index 0) and to
    each patch (indices 1..tokens); they sum to one.

    Example:
    >>> outputs, weights = ClassAttention(num_heads=2)(keras.ops.ones((2, 1 + 4, 8)))
    >>> tuple(outputs.shape), tuple(weights.shape)
    ((2, 1, 8), (2, 2, 5))
    """

    def __init__(self, num_heads, qkv_bias=True, attention_dropout=0.0, projection_dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = require_positive_int("num_heads", num_heads)
        self.qkv_bias = bool(qkv_bias)
        self.attention_dropout = require_rate("attention_dropout", attention_dropout)
        self.projection_dropout = require_rate("projection_dropout", projection_dropout)

    def build(self, input_shape):
        require_token_shape(self.__class__.__name__, input_shape, minimum_tokens=2, hint=CLASS_TOKEN_HINT)
        channels = input_shape[-1]
        require_heads_divide(channels, self.num_heads)
        self.query = _dense(channels, "query", use_bias=self.qkv_bias)
        self.key = _dense(channels, "key", use_bias=self.qkv_bias)
        self.value = _dense(channels, "value", use_bias=self.qkv_bias)
        self.projection = _dense(channels, "projection")
        for dense in (self.query, self.key, self.value, self.projection):
            dense.build(input_shape)
        self.attention_drop = layers.Dropout(self.attention_dropout)
        self.projection_drop = layers.Dropout(self.projection_dropout)

    def call(self, x, training=None):
        head_channels = x.shape[-1] // self.num_heads
        class_token = x[:, :1]
        query = split_heads(self.query(class_token), self.num_heads) * (head_channels**-0.5)  # (b, h, 1, c)
        key = split_heads(self.key(x), self.num_heads)  # (batch, heads, 1 + tokens, head_channels)
        value = split_heads(self.value(x), self.num_heads)
        weights = ops.softmax(ops.matmul(query, ops.transpose(key, (0, 1, 3, 2))), axis=-1)  # (b, h, 1, 1+t)
        attended = ops.matmul(self.attention_drop(weights, training=training), value)  # (b, h, 1, c)
        outputs = self.projection_drop(self.projection(merge_heads(attended)), training=training)
        return outputs, ops.squeeze(weights, axis=2)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1, input_shape[-1]), (input_shape[0], self.num_heads, input_shape[1])

    def get_config(self):
        config = super().get_config()
        config.update(
            num_heads=self.num_heads,
            qkv_bias=self.qkv_bias,
            attention_dropout=self.attention_dropout,
            projection_dropout=self.projection_dropout,
        )
        return config


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------
class _ResidualBlock(layers.Layer):
    """What the two CaiT blocks share: arguments, norms, MLP, LayerScale and stochastic depth.

    Each residual branch computes ``drop_path(gamma * branch(norm(x)))`` (``gamma`` only with LayerScale).
    """

    def __init__(
        self,
        num_heads,
        mlp_ratio=4.0,
        qkv_bias=True,
        use_layer_scale=True,
        layer_scale_init=1e-5,
        dropout_rate=0.0,
        attention_dropout=0.0,
        drop_path_rate=0.0,
        layer_norm_epsilon=LAYER_NORM_EPSILON,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_heads = require_positive_int("num_heads", num_heads)
        self.mlp_ratio = require_positive_number("mlp_ratio", mlp_ratio)
        self.qkv_bias = bool(qkv_bias)
        self.use_layer_scale = bool(use_layer_scale)
        self.layer_scale_init = require_positive_number("layer_scale_init", layer_scale_init)
        self.dropout_rate = require_rate("dropout_rate", dropout_rate)
        self.attention_dropout = require_rate("attention_dropout", attention_dropout)
        self.drop_path_rate = require_rate("drop_path_rate", drop_path_rate)
        self.layer_norm_epsilon = require_positive_number("layer_norm_epsilon", layer_norm_epsilon, example="1e-6")

    def _build_branches(self, attention, attention_input_shape, mlp_input_shape):
        channels = attention_input_shape[-1]
        self.norm_1 = layers.LayerNormalization(epsilon=self.layer_norm_epsilon, name="norm_1")
        self.norm_1.build(attention_input_shape)
        self.attention = attention
        self.attention.build(attention_input_shape)
        self.norm_2 = layers.LayerNormalization(epsilon=self.layer_norm_epsilon, name="norm_2")
        self.norm_2.build(mlp_input_shape)
        self.mlp = MLP(int(channels * self.mlp_ratio), dropout_rate=self.dropout_rate, name="mlp")
        self.mlp.build(mlp_input_shape)
        # blocks.MLP uses Keras's default initialiser; re-draw its kernels the way timm initialises them.
        initializer = keras.initializers.TruncatedNormal(stddev=INIT_STDDEV)
        for dense in (self.mlp.hidden, self.mlp.project):
            dense.kernel.assign(initializer(tuple(dense.kernel.shape), dtype=dense.kernel.dtype))
        self.layer_scale_1 = self.layer_scale_2 = None
        if self.use_layer_scale:
            self.layer_scale_1 = LayerScale(layer_scale_init=self.layer_scale_init, name="layer_scale_1")
            self.layer_scale_1.build(mlp_input_shape)
            self.layer_scale_2 = LayerScale(layer_scale_init=self.layer_scale_init, name="layer_scale_2")
            self.layer_scale_2.build(mlp_input_shape)
        self.drop_path = StochasticDepth(self.drop_path_rate, name="drop_path")

    def _residual(self, branch_output, layer_scale, training):
        if layer_scale is not None:
            branch_output = layer_scale(branch_output)
        return self.drop_path(branch_output, training=training)

    def _feed_forward(self, x, training):
        return x + self._residual(self.mlp(self.norm_2(x), training=training), self.layer_scale_2, training)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio,
            qkv_bias=self.qkv_bias,
            use_layer_scale=self.use_layer_scale,
            layer_scale_init=self.layer_scale_init,
            dropout_rate=self.dropout_rate,
            attention_dropout=self.attention_dropout,
            drop_path_rate=self.drop_path_rate,
            layer_norm_epsilon=self.layer_norm_epsilon,
        )
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class SelfAttentionBlock(_ResidualBlock):
    """CaiT's patch block: pre-norm talking-heads self-attention and MLP, each with LayerScale.

    ``x = x + drop_path(gamma_1 * attention(norm_1(x)))`` then
    ``x = x + drop_path(gamma_2 * mlp(norm_2(x)))``; without LayerScale the gammas are left out.

    Args:
        num_heads: attention heads; must divide the token width.
        mlp_ratio: MLP hidden width as a multiple of the token width.
        qkv_bias: bias in the query/key/value projection.
        use_layer_scale: multiply both branches by learned per-channel gammas.
        layer_scale_init: initial value of every gamma (the paper: 0.1 up to 18 blocks, 1e-5 for 24; see
            :func:`paper_layer_scale_init`, which :func:`build_model` applies by default).
        dropout_rate: dropout after the attention projection and in the MLP.
        attention_dropout: dropout on the attention weights.
        drop_path_rate: probability of dropping each residual branch per sample (stochastic depth).
        layer_norm_epsilon: epsilon of both LayerNorms (1e-6 as in timm).

    Shapes: ``(batch, tokens, channels)`` -> ``((batch, tokens, channels), (batch, heads, tokens, tokens))``,
    the second output being the talking-heads attention weights.

    Example:
    >>> outputs, weights = SelfAttentionBlock(num_heads=2, layer_scale_init=0.1)(keras.ops.ones((2, 5, 8)))
    >>> tuple(outputs.shape), tuple(weights.shape)
    ((2, 5, 8), (2, 2, 5, 5))
    """

    def build(self, input_shape):
        require_token_shape(self.__class__.__name__, input_shape)
        require_heads_divide(input_shape[-1], self.num_heads)
        attention = TalkingHeadAttention(
            self.num_heads,
            qkv_bias=self.qkv_bias,
            attention_dropout=self.attention_dropout,
            projection_dropout=self.dropout_rate,
            name="attention",
        )
        self._build_branches(attention, input_shape, input_shape)

    def call(self, x, training=None):
        attended, weights = self.attention(self.norm_1(x), training=training)
        x = x + self._residual(attended, self.layer_scale_1, training)
        return self._feed_forward(x, training), weights

    def compute_output_shape(self, input_shape):
        batch, tokens = input_shape[0], input_shape[1]
        return tuple(input_shape), (batch, self.num_heads, tokens, tokens)


@keras.saving.register_keras_serializable(package=PACKAGE)
class ClassAttentionBlock(_ResidualBlock):
    """CaiT's class block: the class token reads the patches; the patches pass through unchanged.

    With ``x = [cls; patches]``:
    ``cls = cls + drop_path(gamma_1 * class_attention(norm_1(x)))`` then
    ``cls = cls + drop_path(gamma_2 * mlp(norm_2(cls)))``, and the block returns ``[cls; patches]`` so
    several blocks stack directly. Arguments are those of :class:`SelfAttentionBlock`.

    Shapes: ``(batch, 1 + tokens, channels)`` ->
    ``((batch, 1 + tokens, channels), (batch, heads, 1 + tokens))``, the second output being the class
    token's attention weights (index 0: itself, then one per patch).

    Example:
    >>> outputs, weights = ClassAttentionBlock(num_heads=2)(keras.ops.ones((2, 1 + 4, 8)))
    >>> tuple(outputs.shape), tuple(weights.shape)
    ((2, 5, 8), (2, 2, 5))
    """

    def build(self, input_shape):
        require_token_shape(self.__class__.__name__, input_shape, minimum_tokens=2, hint=CLASS_TOKEN_HINT)
        require_heads_divide(input_shape[-1], self.num_heads)
        attention = ClassAttention(
            self.num_heads,
            qkv_bias=self.qkv_bias,
            attention_dropout=self.attention_dropout,
            projection_dropout=self.dropout_rate,
            name="attention",
        )
        self._build_branches(attention, input_shape, (input_shape[0], 1, input_shape[-1]))

    def call(self, x, training=None):
        class_token, patches = x[:, :1], x[:, 1:]
        attended, weights = self.attention(self.norm_1(x), training=training)
        class_token = class_token + self._residual(attended, self.layer_scale_1, training)
        class_token = self._feed_forward(class_token, training)
        return ops.concatenate([class_token, patches], axis=1), weights

    def compute_output_shape(self, input_shape):
        return tuple(input_shape), (input_shape[0], self.num_heads, input_shape[1])


# --------------------------------------------------------------------------------------------
# Class token in and out
# --------------------------------------------------------------------------------------------
@keras.saving.register_keras_serializable(package=PACKAGE)
class ClassToken(layers.Layer):
    """Put one learned class token in front of the patch tokens.

    Args:
        initializer_stddev: standard deviation of the truncated-normal initial token (0.02 as in timm).

    Shapes: ``(batch, tokens, channels)`` -> ``(batch, 1 + tokens, channels)``.

    Example:
    >>> tuple(ClassToken()(keras.ops.ones((2, 4, 8))).shape)
    (2, 5, 8)
    """

    def __init__(self, initializer_stddev=0.02, **kwargs):
        super().__init__(**kwargs)
        self.initializer_stddev = require_positive_number("initializer_stddev", initializer_stddev)

    def build(self, input_shape):
        require_token_shape(self.__class__.__name__, input_shape)
        self.token = self.add_weight(
            name="token",
            shape=(1, 1, input_shape[-1]),
            initializer=keras.initializers.TruncatedNormal(stddev=self.initializer_stddev),
        )

    def call(self, x):
        token = ops.broadcast_to(ops.cast(self.token, x.dtype), (ops.shape(x)[0], 1, x.shape[-1]))
        return ops.concatenate([token, x], axis=1)

    def compute_output_shape(self, input_shape):
        tokens = None if input_shape[1] is None else input_shape[1] + 1
        return (input_shape[0], tokens, input_shape[2])

    def get_config(self):
        config = super().get_config()
        config.update(initializer_stddev=self.initializer_stddev)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class SelectClassToken(layers.Layer):
    """Keep only the class token (the first token), which the classifier head reads.

    Shapes: ``(batch, 1 + tokens, channels)`` -> ``(batch, channels)``.

    Example:
    >>> tuple(SelectClassToken()(keras.ops.ones((2, 5, 8))).shape)
    (2, 8)
    """

    def build(self, input_shape):
        require_token_shape(self.__class__.__name__, input_shape)

    def call(self, x):
        return x[:, 0]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[2])


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------
def paper_layer_scale_init(depth):
    """The CaiT paper's LayerScale initial value for a model with ``depth`` self-attention blocks.

    0.1 up to 18 blocks, 1e-5 up to 24 blocks, 1e-6 beyond: the deeper the stack, the closer each block
    starts to the identity.

    Example:
    >>> [paper_layer_scale_init(depth) for depth in (12, 24, 36)]
    [0.1, 1e-05, 1e-06]
    """
    require_positive_int("depth", depth)
    if depth <= 18:
        return 0.1
    return 1e-5 if depth <= 24 else 1e-6


def build_model(
    *,
    image_size=32,
    patch_size=4,
    embed_dim=128,
    depth=6,
    num_heads=4,
    class_attention_depth=2,
    mlp_ratio=4.0,
    qkv_bias=True,
    use_layer_scale=True,
    layer_scale_init=None,
    dropout_rate=0.0,
    attention_dropout=0.0,
    drop_path_rate=0.0,
    layer_norm_epsilon=LAYER_NORM_EPSILON,
    num_classes=10,
    input_size=32,
    resize_to=None,
    include_preprocessing=True,
    name="cait",
):
    """Build a CaiT classifier that returns logits.

    ``patches -> + position embedding -> depth x SelfAttentionBlock -> prepend class token ->
    class_attention_depth x ClassAttentionBlock -> LayerNorm(class token) -> Dense(num_classes)``.
    Every Dense kernel of the blocks and the head starts from a truncated normal with standard deviation
    0.02, as in timm. The self-attention blocks are named ``self_attention_block_<i>`` and the
    class-attention blocks ``class_attention_block_<i>``, both counted from 1.

    Args:
        image_size: side of the square image the transformer sees; ``patch_size`` must divide it.
        patch_size: side of a square patch; ``(image_size / patch_size) ** 2`` patch tokens.
        embed_dim: token width; ``num_heads`` must divide it.
        depth: number of self-attention (patch) blocks.
        num_heads: attention heads in every block.
        class_attention_depth: number of class-attention blocks (CaiT uses 2; timm's ``depth_token_only``).
        mlp_ratio: MLP hidden width as a multiple of ``embed_dim``.
        qkv_bias: bias in the query/key/value projections (timm: True).
        use_layer_scale: LayerScale on every residual branch; ``False`` gives the plain pre-norm blocks
            for the LayerScale experiment.
        layer_scale_init: initial LayerScale value; ``None`` picks the paper's value for ``depth``
            (:func:`paper_layer_scale_init`: 0.1 up to 18 blocks, 1e-5 up to 24, 1e-6 beyond).
        dropout_rate: dropout after the position embedding, and after the attention projections and in
            the MLPs of the self-attention blocks (the class-attention blocks use none, as in timm).
        attention_dropout: dropout on the attention weights of the self-attention blocks.
        drop_path_rate: stochastic-depth rate of every self-attention block (the same for all, as in
            CaiT; the class-attention blocks use none).
        layer_norm_epsilon: epsilon of every LayerNorm (1e-6 as in timm).
        num_classes: size of the logits.
        input_size: side of the uint8 input images (CIFAR: 32); used only with preprocessing.
        resize_to: resize before the random/centre crop to ``image_size`` (default
            ``image_size + image_size // 8``).
        include_preprocessing: if True the model takes uint8 images ``(batch, input_size, input_size, 3)``
            (see :func:`course_utils.models.common.image_input`); if False it takes float images
            ``(batch, image_size, image_size, 3)`` as they are (as for ported ImageNet weights).
        name: model name.

    Shapes: ``(batch, input_size, input_size, 3)`` uint8 (or float without preprocessing) ->
    ``(batch, num_classes)`` logits.

    Example:
    >>> model = build_model(image_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2)
    >>> model.input_shape, model.output_shape
    ((None, 32, 32, 3), (None, 10))
    """
    check_vit_arguments(image_size, patch_size, embed_dim, depth, num_heads, num_classes)
    require_positive_int("class_attention_depth", class_attention_depth)
    if layer_scale_init is None:
        layer_scale_init = paper_layer_scale_init(depth)
    block_kwargs = dict(
        num_heads=num_heads,
        mlp_ratio=mlp_ratio,
        qkv_bias=qkv_bias,
        use_layer_scale=use_layer_scale,
        layer_scale_init=layer_scale_init,
        dropout_rate=dropout_rate,
        attention_dropout=attention_dropout,
        layer_norm_epsilon=layer_norm_epsilon,
    )
    # Construct the blocks first, so that a bad argument fails here and not halfway through the graph.
    patch_blocks = [
        SelfAttentionBlock(drop_path_rate=drop_path_rate, name=f"self_attention_block_{i + 1}", **block_kwargs)
        for i in range(depth)
    ]
    # As in timm, the class-attention blocks use no dropout and no stochastic depth (drop_path_rate stays 0).
    class_kwargs = {**block_kwargs, "dropout_rate": 0.0, "attention_dropout": 0.0}
    class_blocks = [
        ClassAttentionBlock(name=f"{VIZ_PREFIX}{i + 1}", **class_kwargs) for i in range(class_attention_depth)
    ]

    inputs, images = image_input(image_size, input_size, resize_to, include_preprocessing)
    x = patch_tokens(images, patch_size, embed_dim, dropout_rate)
    for block in patch_blocks:
        x, _ = block(x)
    x = ClassToken(name="class_token")(x)
    for block in class_blocks:
        x, _ = block(x)
    x = SelectClassToken(name="select_class_token")(x)
    x = layers.LayerNormalization(epsilon=layer_norm_epsilon, name="norm")(x)
    logits = _dense(num_classes, "head")(x)
    return ImageModel(inputs, logits, name=name)


CAIT_XXS24_224 = dict(
    image_size=224,
    patch_size=16,
    embed_dim=192,
    depth=24,
    num_heads=4,
    class_attention_depth=2,
    mlp_ratio=4.0,
    qkv_bias=True,
    layer_scale_init=1e-5,
    num_classes=1000,
    include_preprocessing=False,
)
"""timm's / the paper's ``cait_xxs24_224``: ImageNet, 224 px, float input normalised with ImageNet stats."""


def cait_xxs24_224(**overrides):
    """Build the ImageNet ``cait_xxs24_224`` configuration (11,956,264 parameters, as in timm).

    Keyword arguments override entries of :data:`CAIT_XXS24_224` (any argument of :func:`build_model`).
    Shapes: ``(batch, 224, 224, 3)`` float -> ``(batch, 1000)`` logits.
    """
    return build_model(**{**CAIT_XXS24_224, "name": "cait_xxs24_224", **overrides})


# --------------------------------------------------------------------------------------------
# Class attention maps
# --------------------------------------------------------------------------------------------
def visualization_model(model):
    """A model on the same weights whose outputs expose the class token's attention.

    Returns a ``keras.Model`` with the same input as ``model`` and dict outputs:
    ``"logits"``: ``(batch, num_classes)`` and, for each class-attention block ``i`` (counted from 1),
    ``"class_attention_block_i"``: ``(batch, heads, 1 + tokens)`` attention weights of the class token
    (index 0: itself; then the patches in row-major grid order).
    """
    blocks = find_layers(model, ClassAttentionBlock, BUILDER)
    return with_outputs(model, {block.name: block.output[1] for block in blocks})


def class_attention_maps(scores):
    """Turn class-attention weights ``(batch, heads, 1 + tokens)`` into patch-grid maps.

    The class token's weight on itself (index 0) is dropped; the rest are the weights on the patches, laid
    out as the square patch grid. Shapes: ``(batch, heads, 1 + h * w)`` -> ``(batch, heads, h, w)``.

    Example:
    >>> class_attention_maps(np.ones((2, 4, 1 + 9))).shape
    (2, 4, 3, 3)
    """
    scores = np.asarray(scores)
    patches = scores[..., 1:]
    side = math.isqrt(patches.shape[-1])
    if side * side != patches.shape[-1]:
        raise ValueError(f"Expected a square patch grid, got {patches.shape[-1]} patch tokens.")
    return patches.reshape(scores.shape[:-1] + (side, side))


def analyze(model, images, batch_size=128):
    """Probabilities and the class token's attention maps for ``images``.

    ``model`` is the classifier from :func:`build_model` or, cheaper when called often, its
    :func:`visualization_model`; ``images`` are what it takes, predicted ``batch_size`` at a time.

    Returns:
        :class:`course_utils.analysis.Analysis` ``(probabilities, maps)``: softmax probabilities
        ``(batch, num_classes)`` and, per class-attention block ``i`` (counted from 1),
        ``maps["class attention, block i"]``, a :class:`MapSet` ``(batch, heads, h, w)`` with items
        ``("head 1", ...)``: the class token's attention on each patch, unsigned. Its weight on itself is
        left out, so a head's map sums to at most one.
    """
    outputs = predict_outputs(model, visualization_model, images, batch_size)
    keys = sorted((key for key in outputs if key.startswith(VIZ_PREFIX)), key=lambda key: int(key[len(VIZ_PREFIX):]))
    maps = {}
    for key in keys:
        values = class_attention_maps(outputs[key])
        maps[f"class attention, block {key[len(VIZ_PREFIX):]}"] = MapSet(
            values,
            items=numbered("head", values.shape[1]),
            signed=False,
            description="the class token's attention weight on each patch (its weight on itself left out)",
        )
    return analysis(outputs, maps)


# --------------------------------------------------------------------------------------------
# timm weights
# --------------------------------------------------------------------------------------------
TIMM_HOW_TO_FIX = (
    "Build the model with the timm model's configuration: depth, class_attention_depth (timm's "
    "depth_token_only), embed_dim, num_heads, patch_size, image_size, num_classes, qkv_bias, use_layer_scale "
    "(timm always has LayerScale) and include_preprocessing=False."
)


def _timm_plan(model):
    """The key map: ``(timm key, variable, transform)`` for every weight of a :func:`build_model` model."""
    plan = []

    def dense(prefix, layer):
        plan.append((f"{prefix}.weight", layer.kernel, timm_weights.linear))
        if layer.use_bias:
            plan.append((f"{prefix}.bias", layer.bias, timm_weights.same))

    def norm(prefix, layer):
        plan.append((f"{prefix}.weight", layer.gamma, timm_weights.same))
        plan.append((f"{prefix}.bias", layer.beta, timm_weights.same))

    def residual_parts(prefix, block):
        norm(f"{prefix}.norm1", block.norm_1)
        norm(f"{prefix}.norm2", block.norm_2)
        dense(f"{prefix}.mlp.fc1", block.mlp.hidden)
        dense(f"{prefix}.mlp.fc2", block.mlp.project)
        dense(f"{prefix}.attn.proj", block.attention.projection)
        if block.use_layer_scale:
            plan.append((f"{prefix}.gamma_1", block.layer_scale_1.gamma, timm_weights.same))
            plan.append((f"{prefix}.gamma_2", block.layer_scale_2.gamma, timm_weights.same))

    try:
        patch = model.get_layer("patch_embedding").projection
        plan.append(("patch_embed.proj.weight", patch.kernel, timm_weights.conv))
        plan.append(("patch_embed.proj.bias", patch.bias, timm_weights.same))
        plan.append(("pos_embed", model.get_layer("position_embedding").embedding, timm_weights.same))
        plan.append(("cls_token", model.get_layer("class_token").token, timm_weights.same))
        norm("norm", model.get_layer("norm"))
        dense("head", model.get_layer("head"))
    except ValueError as error:
        raise ValueError(f"load_timm_weights needs a model made by {BUILDER}: {error}") from error
    for i, block in enumerate(find_layers(model, SelfAttentionBlock, BUILDER)):
        prefix = f"blocks.{i}"
        residual_parts(prefix, block)
        dense(f"{prefix}.attn.qkv", block.attention.qkv)
        dense(f"{prefix}.attn.proj_l", block.attention.pre_softmax_mix)
        dense(f"{prefix}.attn.proj_w", block.attention.post_softmax_mix)
    for i, block in enumerate(find_layers(model, ClassAttentionBlock, BUILDER)):
        prefix = f"blocks_token_only.{i}"
        residual_parts(prefix, block)
        dense(f"{prefix}.attn.q", block.attention.query)
        dense(f"{prefix}.attn.k", block.attention.key)
        dense(f"{prefix}.attn.v", block.attention.value)
    return plan


def load_timm_weights(model, state_dict):
    """Copy a timm ``Cait`` ``state_dict`` into a model from :func:`build_model` (in place).

    ``state_dict`` maps timm names (``blocks.0.attn.qkv.weight``, ...) to torch tensors or numpy arrays.
    Linear weights are transposed to Keras's ``(in, out)`` layout and the patch convolution to
    ``(kh, kw, in, out)`` (:mod:`course_utils.models.timm_weights`). Nothing is assigned unless
    everything fits: otherwise a ``ValueError`` lists every key missing from the state_dict, every key the
    model does not use (for example LayerScale gammas for a model built with ``use_layer_scale=False``, or
    a different depth), every shape mismatch and every model weight the key map does not cover.

    Returns ``model``.
    """
    return timm_weights.load_state_dict(model, state_dict, _timm_plan(model), how_to_fix=TIMM_HOW_TO_FIX)


# --------------------------------------------------------------------------------------------
# Profiles
# --------------------------------------------------------------------------------------------
# The CIFAR-10 counterpart of cait_xxs24_224: the same widths and depths (192 wide, 24 + 2 blocks, 4 heads,
# LayerScale 1e-5), on 32 px images cut into 4 px patches (an 8 x 8 grid of 64 tokens instead of 196).
CAIT_XXS24_CIFAR = dict(
    image_size=32,
    patch_size=4,
    embed_dim=192,
    depth=24,
    num_heads=4,
    class_attention_depth=2,
    mlp_ratio=4.0,
    layer_scale_init=1e-5,
    drop_path_rate=0.05,  # the paper's stochastic-depth rate for XXS-24
    num_classes=10,
)

PROFILES = {
    "smoke": Profile(
        name="smoke",
        epochs=1,
        batch_size=64,
        train_samples=512,
        eval_samples=256,
        test_samples=1000,
        learning_rate=2e-3,
        weight_decay=0.05,
        model=dict(image_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, class_attention_depth=2,
                   mlp_ratio=2.0),
        note="tiny CaiT (2 + 2 blocks, width 32, 4 x 4 patch grid), 512 images: proves the notebook runs",
    ),
    "workshop": Profile(
        name="workshop",
        epochs=4,
        batch_size=64,
        train_samples=6000,
        eval_samples=1000,
        learning_rate=2e-3,
        weight_decay=0.05,
        warmup_epochs=1,
        model=dict(image_size=32, patch_size=4, embed_dim=64, depth=4, num_heads=4, class_attention_depth=2,
                   mlp_ratio=2.0),
        note="a narrow CaiT (4 + 2 blocks, width 64) on an 8 x 8 grid of 4 px patches, 6,000 images x 4 "
        "epochs: about 1.5 minutes of training on a 2-core CPU, about 37% test accuracy",
    ),
    "full": Profile(
        name="full",
        epochs=40,
        batch_size=128,
        learning_rate=1e-3,
        weight_decay=0.05,
        warmup_epochs=5,
        model=CAIT_XXS24_CIFAR,
        note="the example's cait_xxs24_224 widths and depths (192 wide, 24 + 2 blocks, 4 heads, LayerScale 1e-5) "
        "on 32 px CIFAR-10 in 4 px patches (64 tokens instead of 196 at 224 px) with a 10-class head. The "
        "example trains nothing (it runs ported ImageNet weights), so the recipe is ours: AdamW, weight decay "
        "0.05 and stochastic depth 0.05 as in the paper, 5 warmup epochs, peak 1e-3 at batch 128 (about 4.5 "
        "GB of activations, well within a 16 GB T4), random crops and flips only, pixels scaled to [0, 1] "
        "instead of ImageNet-normalised, timm's initialisation. The MLPs use timm's exact GELU (the example's "
        "ops.gelu is the tanh approximation), and the class-attention blocks no dropout, as in timm. 40 epochs "
        "is about an hour on a T4 (estimated from the ~4.3 GFLOPs per training image, not measured)",
    ),
}

# The LayerScale experiment: the same deep model trained twice, with and without LayerScale
# (build_model(**profile.model, use_layer_scale=...)), comparing the training-loss curves.
LAYER_SCALE_PROFILES = {
    "smoke": Profile(
        name="smoke",
        epochs=1,
        batch_size=64,
        train_samples=256,
        eval_samples=128,
        learning_rate=4e-3,
        weight_decay=0.05,
        model=dict(image_size=32, patch_size=8, embed_dim=16, depth=4, num_heads=2, class_attention_depth=1,
                   mlp_ratio=2.0),
        note="a tiny 4-block model, 256 images: proves the experiment runs",
    ),
    "workshop": Profile(
        name="workshop",
        epochs=3,
        batch_size=128,
        train_samples=2000,
        eval_samples=500,
        learning_rate=4e-3,
        weight_decay=0.05,
        warmup_epochs=0.5,
        model=dict(image_size=32, patch_size=4, embed_dim=32, depth=12, num_heads=2, class_attention_depth=2,
                   mlp_ratio=2.0),
        note="a deep, narrow CaiT (12 + 2 blocks, width 32), 2,000 images x 3 epochs, trained twice; peak "
        "learning rate 4e-3, twice the main model's, as a stability test (at this rate a 4-block version "
        "of it trains without LayerScale too)",
    ),
    "full": Profile(
        name="full",
        epochs=10,
        batch_size=128,
        learning_rate=1e-3,
        weight_decay=0.05,
        warmup_epochs=1,
        model={**CAIT_XXS24_CIFAR, "drop_path_rate": 0.0},
        note="the full profile's 24 + 2 block model for 10 epochs, trained twice (about 15 minutes each on a "
        "T4, estimated), without stochastic depth; the example has no such experiment (it trains nothing)",
    ),
}
