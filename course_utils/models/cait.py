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
``state_dict`` into a model from :func:`build_cait`; :func:`cait_xxs24_224` has exactly timm's
``cait_xxs24_224`` parameter count.

Typical use in a notebook::

    model = build_cait(**profile.model)
    viz = visualization_model(model)
    probabilities, maps = analyze(viz, images)   # maps: {"class-attention block 1": (B, heads, h, w), ...}
"""

import math

import keras
import numpy as np
from keras import layers, ops

from course_utils.augment import preprocessing
from course_utils.models.blocks import (
    MLP,
    LayerScale,
    PatchEmbedding,
    PositionEmbedding,
    StochasticDepth,
    merge_heads,
    split_heads,
)
from course_utils.validation import (
    PACKAGE,
    require_divisible,
    require_positive_int,
    require_positive_number,
    require_rate,
)
from course_utils.profiles import Profile

NORM_EPSILON = 1e-6  # timm's CaiT uses LayerNorm(eps=1e-6) everywhere
# timm initialises every Linear weight of CaiT from a truncated normal with standard deviation 0.02 (biases
# zero). We do the same: with Keras's default Glorot initialisation the residual branches start much larger;
# in our CIFAR runs even a 4-block model without LayerScale then stayed at chance, which would turn the
# LayerScale experiment into an experiment about initialisation.
INIT_STDDEV = 0.02
VIZ_PREFIX = "class_attention_block_"


# --------------------------------------------------------------------------------------------
# Argument checks shared by the layers below
# --------------------------------------------------------------------------------------------
def _require_token_shape(layer, input_shape, minimum_tokens=1):
    """Check a ``(batch, tokens, channels)`` shape with known channels."""
    if len(input_shape) != 3 or input_shape[-1] is None:
        raise ValueError(
            f"{layer.__class__.__name__} expects tokens shaped (batch, tokens, channels) with a known number "
            f"of channels, got shape {tuple(input_shape)}. Flatten image grids into tokens first."
        )
    tokens = input_shape[1]
    if tokens is not None and tokens < minimum_tokens:
        raise ValueError(
            f"{layer.__class__.__name__} needs at least {minimum_tokens} tokens (the class token first, then "
            f"the patches), got {tokens}. Prepend the class token with ClassToken."
        )


def _require_heads_divide(channels, num_heads):
    require_divisible("channels", channels, "num_heads", num_heads)


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
    """

    def __init__(self, num_heads, qkv_bias=True, attention_dropout=0.0, projection_dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = require_positive_int("num_heads", num_heads)
        self.qkv_bias = bool(qkv_bias)
        self.attention_dropout = require_rate("attention_dropout", attention_dropout)
        self.projection_dropout = require_rate("projection_dropout", projection_dropout)

    def build(self, input_shape):
        _require_token_shape(self, input_shape)
        channels = input_shape[-1]
        _require_heads_divide(channels, self.num_heads)
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
    """

    def __init__(self, num_heads, qkv_bias=True, attention_dropout=0.0, projection_dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = require_positive_int("num_heads", num_heads)
        self.qkv_bias = bool(qkv_bias)
        self.attention_dropout = require_rate("attention_dropout", attention_dropout)
        self.projection_dropout = require_rate("projection_dropout", projection_dropout)

    def build(self, input_shape):
        _require_token_shape(self, input_shape, minimum_tokens=2)
        channels = input_shape[-1]
        _require_heads_divide(channels, self.num_heads)
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
        norm_epsilon=NORM_EPSILON,
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
        self.norm_epsilon = require_positive_number("norm_epsilon", norm_epsilon)

    def _build_branches(self, attention, attention_input_shape, mlp_input_shape):
        channels = attention_input_shape[-1]
        self.norm_1 = layers.LayerNormalization(epsilon=self.norm_epsilon, name="norm_1")
        self.norm_1.build(attention_input_shape)
        self.attention = attention
        self.attention.build(attention_input_shape)
        self.norm_2 = layers.LayerNormalization(epsilon=self.norm_epsilon, name="norm_2")
        self.norm_2.build(mlp_input_shape)
        self.mlp = MLP(int(channels * self.mlp_ratio), dropout_rate=self.dropout_rate, name="mlp")
        self.mlp.build(mlp_input_shape)
        # blocks.MLP uses Keras's default initialiser; re-draw its kernels the way timm initialises them.
        initializer = keras.initializers.TruncatedNormal(stddev=INIT_STDDEV)
        for dense in (self.mlp.hidden, self.mlp.project):
            dense.kernel.assign(initializer(tuple(dense.kernel.shape), dtype=dense.kernel.dtype))
        self.layer_scale_1 = self.layer_scale_2 = None
        if self.use_layer_scale:
            self.layer_scale_1 = LayerScale(self.layer_scale_init, name="layer_scale_1")
            self.layer_scale_1.build(mlp_input_shape)
            self.layer_scale_2 = LayerScale(self.layer_scale_init, name="layer_scale_2")
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
            norm_epsilon=self.norm_epsilon,
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
            :func:`paper_layer_scale_init`, which :func:`build_cait` applies by default).
        dropout_rate: dropout after the attention projection and in the MLP.
        attention_dropout: dropout on the attention weights.
        drop_path_rate: probability of dropping each residual branch per sample (stochastic depth).
        norm_epsilon: LayerNormalization epsilon (1e-6 as in timm).

    Shapes: ``(batch, tokens, channels)`` -> ``((batch, tokens, channels), (batch, heads, tokens, tokens))``,
    the second output being the talking-heads attention weights.
    """

    def build(self, input_shape):
        _require_token_shape(self, input_shape)
        _require_heads_divide(input_shape[-1], self.num_heads)
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
    """

    def build(self, input_shape):
        _require_token_shape(self, input_shape, minimum_tokens=2)
        _require_heads_divide(input_shape[-1], self.num_heads)
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
    """

    def __init__(self, initializer_stddev=0.02, **kwargs):
        super().__init__(**kwargs)
        self.initializer_stddev = require_positive_number("initializer_stddev", initializer_stddev)

    def build(self, input_shape):
        _require_token_shape(self, input_shape)
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
    """

    def build(self, input_shape):
        _require_token_shape(self, input_shape)

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
    """
    require_positive_int("depth", depth)
    if depth <= 18:
        return 0.1
    return 1e-5 if depth <= 24 else 1e-6


def build_cait(
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
    num_classes=10,
    include_preprocessing=True,
    input_size=32,
    resize_to=None,
    name="cait",
):
    """Build a CaiT classifier that returns logits.

    ``patches -> + position embedding -> depth x SelfAttentionBlock -> prepend class token ->
    class_attention_depth x ClassAttentionBlock -> LayerNorm(class token) -> Dense(num_classes)``.
    Every Dense kernel starts from a truncated normal with standard deviation 0.02, as in timm.

    Args:
        image_size: side of the square image the transformer sees; ``patch_size`` must divide it.
        patch_size: side of a square patch; ``(image_size / patch_size) ** 2`` patch tokens.
        embed_dim: token width; ``num_heads`` must divide it.
        depth: number of self-attention (patch) blocks.
        num_heads: attention heads in every block.
        class_attention_depth: number of class-attention blocks (CaiT uses 2).
        mlp_ratio: MLP hidden width as a multiple of ``embed_dim``.
        qkv_bias: bias in the query/key/value projections (timm: True).
        use_layer_scale: LayerScale on every residual branch; ``False`` gives the plain pre-norm blocks
            for the LayerScale experiment.
        layer_scale_init: initial LayerScale value; ``None`` picks the paper's value for ``depth``
            (:func:`paper_layer_scale_init`: 0.1 up to 18 blocks, 1e-5 up to 24, 1e-6 beyond).
        dropout_rate: dropout after the position embedding, attention projections and in the MLPs.
        attention_dropout: dropout on attention weights.
        drop_path_rate: stochastic-depth rate of every self-attention block (the same for all, as in
            CaiT; the class-attention blocks use none).
        num_classes: size of the logits.
        include_preprocessing: if True the model takes uint8 images ``(batch, input_size, input_size, 3)``
            and starts with :func:`course_utils.augment.preprocessing`; if False it takes float images
            ``(batch, image_size, image_size, 3)`` already normalised (as for ported ImageNet weights).
        input_size: side of the uint8 input images (CIFAR: 32); used only with preprocessing.
        resize_to: passed to :func:`preprocessing` (resize before the crop to ``image_size``).
        name: model name.

    Shapes: ``(batch, input_size, input_size, 3)`` uint8 (or float without preprocessing) ->
    ``(batch, num_classes)`` logits.
    """
    for arg_name, value in (
        ("image_size", image_size),
        ("patch_size", patch_size),
        ("embed_dim", embed_dim),
        ("depth", depth),
        ("num_heads", num_heads),
        ("class_attention_depth", class_attention_depth),
        ("num_classes", num_classes),
        ("input_size", input_size),
    ):
        require_positive_int(arg_name, value)
    require_divisible("image_size", image_size, "patch_size", patch_size)
    require_divisible("embed_dim", embed_dim, "num_heads", num_heads)
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
    )
    # Construct the blocks first, so that a bad argument fails here and not halfway through the graph.
    patch_blocks = [
        SelfAttentionBlock(drop_path_rate=drop_path_rate, name=f"self_attention_block_{i + 1}", **block_kwargs)
        for i in range(depth)
    ]
    class_blocks = [
        ClassAttentionBlock(name=f"{VIZ_PREFIX}{i + 1}", **block_kwargs) for i in range(class_attention_depth)
    ]

    if include_preprocessing:
        inputs = keras.Input((input_size, input_size, 3), dtype="uint8", name="images")
        x = preprocessing(image_size, resize_to=resize_to)(inputs)
    else:
        inputs = keras.Input((image_size, image_size, 3), name="images")
        x = inputs
    x = PatchEmbedding(patch_size, embed_dim, name="patch_embedding")(x)
    x = PositionEmbedding(name="position_embedding")(x)
    x = layers.Dropout(dropout_rate, name="position_dropout")(x)
    for block in patch_blocks:
        x, _ = block(x)
    x = ClassToken(name="class_token")(x)
    for block in class_blocks:
        x, _ = block(x)
    x = SelectClassToken(name="select_class_token")(x)
    x = layers.LayerNormalization(epsilon=NORM_EPSILON, name="norm")(x)
    logits = _dense(num_classes, "head")(x)
    return keras.Model(inputs, logits, name=name)


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

    Keyword arguments override entries of :data:`CAIT_XXS24_224`.
    Shapes: ``(batch, 224, 224, 3)`` float -> ``(batch, 1000)`` logits.
    """
    return build_cait(**{**CAIT_XXS24_224, "name": "cait_xxs24_224", **overrides})


def _blocks_of(model, block_type):
    """The model's blocks of ``block_type`` in order (their names end in their 1-based index)."""
    blocks = [layer for layer in model.layers if isinstance(layer, block_type)]
    return sorted(blocks, key=lambda layer: int(layer.name.rsplit("_", 1)[-1]))


def visualization_model(model):
    """A model on the same weights whose outputs expose the class token's attention.

    Returns a ``keras.Model`` with the same input as ``model`` and dict outputs:
    ``"logits"``: ``(batch, num_classes)`` and, for each class-attention block ``i`` (1-based),
    ``"class_attention_block_i"``: ``(batch, heads, 1 + tokens)`` attention weights of the class token
    (index 0: itself; then the patches in row-major grid order).
    """
    blocks = _blocks_of(model, ClassAttentionBlock)
    if not blocks:
        raise ValueError(f"Model {model.name!r} has no ClassAttentionBlock: build it with build_cait().")
    outputs = {"logits": model.output}
    for block in blocks:
        outputs[block.name] = block.output[1]
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return keras.Model(inputs, outputs, name=f"{model.name}_visualization")


def class_attention_maps(scores):
    """Turn class-attention weights ``(batch, heads, 1 + tokens)`` into patch-grid maps.

    The class token's weight on itself (index 0) is dropped; the rest are the weights on the patches, laid
    out as the square patch grid. Shapes: ``(batch, heads, 1 + h * w)`` -> ``(batch, heads, h, w)``.
    """
    scores = np.asarray(scores)
    patches = scores[..., 1:]
    side = math.isqrt(patches.shape[-1])
    if side * side != patches.shape[-1]:
        raise ValueError(f"Expected a square patch grid, got {patches.shape[-1]} patch tokens.")
    return patches.reshape(scores.shape[:-1] + (side, side))


def analyze(viz_model, images, batch_size=128):
    """Predict ``images`` with a :func:`visualization_model` and return what the explorer draws.

    Returns ``(probabilities, maps)``: probabilities ``(batch, num_classes)`` (softmax of the logits) and
    ``maps = {"class-attention block 1": (batch, heads, h, w), ...}`` with the class token's per-head
    attention on each patch (without its weight on itself, so a head's map sums to at most one).
    """
    outputs = viz_model.predict(images, batch_size=batch_size, verbose=0)
    logits = np.asarray(outputs["logits"], dtype=np.float64)
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probabilities = (shifted / shifted.sum(axis=-1, keepdims=True)).astype(np.float32)
    names = sorted((key for key in outputs if key.startswith(VIZ_PREFIX)), key=lambda k: int(k[len(VIZ_PREFIX):]))
    maps = {f"class-attention block {key[len(VIZ_PREFIX):]}": class_attention_maps(outputs[key]) for key in names}
    return probabilities, maps


# --------------------------------------------------------------------------------------------
# timm weights
# --------------------------------------------------------------------------------------------
def _linear(weight):
    return np.transpose(weight)  # torch Linear (out, in) -> Keras Dense (in, out)


def _linear_shape(keras_shape):
    return tuple(reversed(keras_shape))


def _conv(weight):
    return np.transpose(weight, (2, 3, 1, 0))  # torch (out, in, kh, kw) -> Keras (kh, kw, in, out)


def _conv_shape(keras_shape):
    kh, kw, cin, cout = keras_shape
    return (cout, cin, kh, kw)


def _same(weight):
    return weight


def _same_shape(keras_shape):
    return tuple(keras_shape)


_LINEAR, _CONV, _SAME = (_linear, _linear_shape), (_conv, _conv_shape), (_same, _same_shape)


def _timm_targets(model):
    """Map every timm ``Cait`` state_dict key to ``(our variable, (to_keras, timm_shape))``."""
    targets = {}

    def dense(prefix, layer):
        targets[f"{prefix}.weight"] = (layer.kernel, _LINEAR)
        if layer.use_bias:
            targets[f"{prefix}.bias"] = (layer.bias, _SAME)

    def norm(prefix, layer):
        targets[f"{prefix}.weight"] = (layer.gamma, _SAME)
        targets[f"{prefix}.bias"] = (layer.beta, _SAME)

    def residual_parts(prefix, block):
        norm(f"{prefix}.norm1", block.norm_1)
        norm(f"{prefix}.norm2", block.norm_2)
        dense(f"{prefix}.mlp.fc1", block.mlp.hidden)
        dense(f"{prefix}.mlp.fc2", block.mlp.project)
        dense(f"{prefix}.attn.proj", block.attention.projection)
        if block.use_layer_scale:
            targets[f"{prefix}.gamma_1"] = (block.layer_scale_1.gamma, _SAME)
            targets[f"{prefix}.gamma_2"] = (block.layer_scale_2.gamma, _SAME)

    try:
        patch = model.get_layer("patch_embedding").projection
        targets["patch_embed.proj.weight"] = (patch.kernel, _CONV)
        targets["patch_embed.proj.bias"] = (patch.bias, _SAME)
        targets["pos_embed"] = (model.get_layer("position_embedding").embedding, _SAME)
        targets["cls_token"] = (model.get_layer("class_token").token, _SAME)
        norm("norm", model.get_layer("norm"))
        dense("head", model.get_layer("head"))
    except ValueError as error:
        raise ValueError(f"load_timm_weights needs a model from build_cait(): {error}") from error
    for i, block in enumerate(_blocks_of(model, SelfAttentionBlock)):
        prefix = f"blocks.{i}"
        residual_parts(prefix, block)
        dense(f"{prefix}.attn.qkv", block.attention.qkv)
        dense(f"{prefix}.attn.proj_l", block.attention.pre_softmax_mix)
        dense(f"{prefix}.attn.proj_w", block.attention.post_softmax_mix)
    for i, block in enumerate(_blocks_of(model, ClassAttentionBlock)):
        prefix = f"blocks_token_only.{i}"
        residual_parts(prefix, block)
        dense(f"{prefix}.attn.q", block.attention.query)
        dense(f"{prefix}.attn.k", block.attention.key)
        dense(f"{prefix}.attn.v", block.attention.value)
    return targets


def _to_numpy(value):
    if hasattr(value, "detach"):  # a torch tensor; torch itself is never imported here
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _short_list(keys, limit=12):
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_timm_weights(model, state_dict):
    """Copy a timm ``Cait`` ``state_dict`` into a model from :func:`build_cait` (in place).

    ``state_dict`` maps timm names (``blocks.0.attn.qkv.weight``, ...) to torch tensors or numpy arrays.
    Linear weights are transposed to Keras's ``(in, out)`` layout and the patch convolution to
    ``(kh, kw, in, out)``. Nothing is assigned unless every key fits: a ``ValueError`` names every missing
    key (the model has a weight timm's dict lacks), unused key (for example LayerScale gammas for a model
    built with ``use_layer_scale=False``, or a different depth) and mis-shaped key.

    Returns ``model``.
    """
    targets = _timm_targets(model)
    covered = {id(variable) for variable, _ in targets.values()}
    unknown = [v.path for v in model.trainable_variables if id(v) not in covered]
    if unknown:
        raise ValueError(f"load_timm_weights does not know where these weights come from in timm: {unknown}.")
    arrays = {key: _to_numpy(value) for key, value in state_dict.items()}
    missing = set(targets) - set(arrays)
    unused = set(arrays) - set(targets)
    converted, misshaped = {}, []
    for key in sorted(set(targets) & set(arrays)):
        variable, (to_keras, timm_shape) = targets[key]
        expected = timm_shape(tuple(variable.shape))
        if tuple(arrays[key].shape) != expected:
            misshaped.append(f"{key}: expected {expected}, got {tuple(arrays[key].shape)}")
            continue
        converted[key] = to_keras(arrays[key])
    problems = []
    if missing:
        problems.append(f"missing keys (in our model, not in the state_dict): {_short_list(missing)}")
    if unused:
        problems.append(f"unused keys (in the state_dict, not in our model): {_short_list(unused)}")
    if misshaped:
        problems.append("mis-shaped keys (timm layout): " + "; ".join(misshaped))
    if problems:
        raise ValueError(
            "Cannot load the timm state_dict into this CaiT: " + " | ".join(problems) + ". Build the model "
            "with the same configuration as the timm model (depth, embed_dim, patch_size, image_size, "
            "num_classes, use_layer_scale)."
        )
    for key, array in converted.items():
        variable = targets[key][0]
        variable.assign(array.astype(variable.dtype))
    return model


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
        note="cait_xxs24's widths and depths (192 wide, 24 + 2 blocks) on 32 px CIFAR with 4 px patches. The "
        "example trains nothing, so the recipe is ours: AdamW, weight decay 0.05 and stochastic depth 0.05 "
        "as in the paper, 5 warmup epochs, peak 1e-3 at batch 128 (about 4.5 GB of activations, well "
        "within a 16 GB T4); 40 epochs is about an hour on a T4 (estimated from the ~4.3 GFLOPs per "
        "training image, not measured)",
    ),
}

# The LayerScale experiment: the same deep model trained twice, with and without LayerScale
# (build_cait(**profile.model, use_layer_scale=...)), comparing the training-loss curves.
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
        "T4, estimated)",
    ),
}
