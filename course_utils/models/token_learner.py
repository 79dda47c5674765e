"""TokenLearner (Ryoo et al., 2021) and the mini ViT the course trains it in.

A ViT pays for every token in every block. TokenLearner replaces the ``h * w`` patch tokens in the
middle of the network by a handful of learned tokens: each learned token is a weighted average of the
patch features, with weights from a small spatial-attention network. The blocks after it work on
``num_tokens`` tokens instead of ``h * w``.
"""

import keras
from keras import layers, ops

from course_utils.augment import preprocessing
from course_utils.models.blocks import (
    PatchEmbedding,
    PositionEmbedding,
    TransformerBlock,
)
from course_utils.validation import (
    PACKAGE,
    require_divisible,
    require_image_shape,
    require_positive_int,
    require_rate,
)
from course_utils.profiles import Profile


@keras.saving.register_keras_serializable(package=PACKAGE)
class TokenLearner(layers.Layer):
    """The original TokenLearner: sigmoid spatial attention from four small convolutions.

    For each of the ``num_tokens`` outputs, a map ``a_i(x) in [0, 1]^(h x w)`` is computed from the
    normalised features by three 3x3 convolutions with GELU and a fourth with a sigmoid. The i-th token
    is the spatial mean of the features weighted by ``a_i``:
    ``z_i = mean_{p} a_i(x)[p] * x[p]``.

    Args:
        num_tokens: how many tokens to learn.
        layer_norm_epsilon: epsilon of the LayerNorm applied before the attention network.

    Call returns ``(tokens, attention)``.
    Shapes: ``(batch, h, w, channels)`` -> tokens ``(batch, num_tokens, channels)``,
    attention ``(batch, num_tokens, h, w)``.
    """

    def __init__(self, num_tokens=8, layer_norm_epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.num_tokens = require_positive_int("num_tokens", num_tokens)
        self.layer_norm_epsilon = float(layer_norm_epsilon)

    def build(self, input_shape):
        require_image_shape("TokenLearner", input_shape)
        self.norm = layers.LayerNormalization(epsilon=self.layer_norm_epsilon, name="norm")
        self.norm.build(input_shape)
        self.attention_convs = []
        shape = input_shape
        for index, activation in enumerate(["gelu", "gelu", "gelu", "sigmoid"]):
            conv = layers.Conv2D(
                self.num_tokens, 3, padding="same", activation=activation, use_bias=False, name=f"conv_{index}"
            )
            conv.build(shape)
            shape = tuple(shape[:-1]) + (self.num_tokens,)
            self.attention_convs.append(conv)

    def call(self, features):
        maps = self.norm(features)
        for conv in self.attention_convs:
            maps = conv(maps)
        # (batch, h, w, tokens) -> (batch, tokens, h, w): one map per learned token.
        attention = ops.transpose(maps, (0, 3, 1, 2))
        tokens = ops.einsum("bthw,bhwc->btc", attention, features) / ops.cast(
            ops.shape(features)[1] * ops.shape(features)[2], features.dtype
        )
        return tokens, attention

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        return (batch, self.num_tokens, channels), (batch, self.num_tokens, height, width)

    def get_config(self):
        config = super().get_config()
        config.update(num_tokens=self.num_tokens, layer_norm_epsilon=self.layer_norm_epsilon)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class TokenLearnerV11(layers.Layer):
    """TokenLearner v1.1: grouped 1x1 convolutions and a softmax over positions.

    The authors' later variant for small-data regimes. Attention logits come from a grouped 1x1
    convolution with GELU followed by a 1x1 convolution to ``num_tokens`` channels; a softmax over the
    ``h * w`` positions turns each into a distribution. The values are the features after another
    grouped 1x1 convolution, and each token is the attention-weighted sum of the values.

    Grouped 1x1 convolutions are written as a batched matrix product over groups, which every backend
    runs on every device.

    Args:
        num_tokens: how many tokens to learn.
        num_groups: groups of the grouped convolutions; must divide the channel count.
        dropout_rate: dropout on the attention network's hidden features.
        layer_norm_epsilon: epsilon of the LayerNorm before the attention network.

    Call returns ``(tokens, attention)``.
    Shapes: ``(batch, h, w, channels)`` -> tokens ``(batch, num_tokens, channels)``,
    attention ``(batch, num_tokens, h, w)`` (each map sums to 1).
    """

    def __init__(self, num_tokens=8, num_groups=4, dropout_rate=0.0, layer_norm_epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.num_tokens = require_positive_int("num_tokens", num_tokens)
        self.num_groups = require_positive_int("num_groups", num_groups)
        self.dropout_rate = require_rate("dropout_rate", dropout_rate)
        self.layer_norm_epsilon = float(layer_norm_epsilon)

    def build(self, input_shape):
        require_image_shape("TokenLearnerV11", input_shape)
        channels = input_shape[-1]
        require_divisible("channels", channels, "num_groups", self.num_groups)
        per_group = channels // self.num_groups
        grouped_shape = (self.num_groups, per_group, per_group)
        self.norm = layers.LayerNormalization(epsilon=self.layer_norm_epsilon, name="norm")
        self.norm.build(input_shape)
        self.attention_kernel = self.add_weight(name="attention_kernel", shape=grouped_shape)
        self.to_tokens = layers.Dense(self.num_tokens, use_bias=False, name="to_tokens")
        self.to_tokens.build(input_shape)
        self.value_kernel = self.add_weight(name="value_kernel", shape=grouped_shape)
        self.dropout = layers.Dropout(self.dropout_rate)

    def _grouped_pointwise(self, x, kernel):
        batch, height, width, channels = ops.shape(x)
        grouped = ops.reshape(x, (batch, height, width, self.num_groups, channels // self.num_groups))
        mixed = ops.einsum("bhwgi,gio->bhwgo", grouped, ops.cast(kernel, x.dtype))
        return ops.reshape(mixed, (batch, height, width, channels))

    def call(self, features, training=None):
        batch, height, width, _ = ops.shape(features)
        hidden = ops.gelu(self._grouped_pointwise(self.norm(features), self.attention_kernel))
        logits = self.to_tokens(self.dropout(hidden, training=training))
        logits = ops.reshape(ops.transpose(logits, (0, 3, 1, 2)), (batch, self.num_tokens, height * width))
        attention = ops.reshape(ops.softmax(logits, axis=-1), (batch, self.num_tokens, height, width))
        values = self._grouped_pointwise(features, self.value_kernel)
        tokens = ops.einsum("bthw,bhwc->btc", attention, values)
        return tokens, attention

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        return (batch, self.num_tokens, channels), (batch, self.num_tokens, height, width)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_tokens=self.num_tokens,
            num_groups=self.num_groups,
            dropout_rate=self.dropout_rate,
            layer_norm_epsilon=self.layer_norm_epsilon,
        )
        return config


TOKEN_LEARNER_VARIANTS = {"v1.0": TokenLearner, "v1.1": TokenLearnerV11}


def build_vit(
    image_size=32,
    input_size=32,
    resize_to=None,
    patch_size=4,
    embed_dim=128,
    depth=4,
    num_heads=4,
    mlp_ratio=2.0,
    dropout_rate=0.1,
    token_learner=None,
    num_tokens=8,
    token_learner_after=None,
    num_groups=4,
    num_classes=10,
    name=None,
):
    """A mini ViT for CIFAR-10, with a TokenLearner optionally inserted after some blocks.

    ``uint8 images -> preprocessing -> patch embedding + positions -> blocks -> [TokenLearner] -> blocks
    -> LayerNorm -> mean over tokens -> Dense logits``.

    Args:
        image_size: side of the (cropped) image the ViT sees.
        input_size: side of the uint8 images the model is fed (32 for CIFAR-10).
        resize_to: resize before the random/centre crop (default: ``image_size + image_size // 8``).
        patch_size: side of a patch; must divide ``image_size``.
        embed_dim: token width; ``num_heads`` must divide it.
        depth: number of Transformer blocks.
        num_heads: attention heads per block.
        mlp_ratio: MLP hidden width as a multiple of ``embed_dim``.
        dropout_rate: dropout after the embedding, on attention weights and in the MLPs.
        token_learner: ``None`` (plain ViT), ``"v1.0"`` (sigmoid, 4 convs) or ``"v1.1"`` (grouped, softmax).
        num_tokens: tokens the TokenLearner learns.
        token_learner_after: how many blocks run before the TokenLearner (default: ``depth // 2``,
            the middle, which the paper found works well).
        num_groups: groups of the v1.1 variant.
        num_classes: output logits.

    Returns:
        A ``keras.Model`` from uint8 ``(batch, input_size, input_size, 3)`` to logits ``(batch, num_classes)``.
    """
    require_positive_int("depth", depth)
    require_divisible("image_size", image_size, "patch_size", patch_size)
    require_divisible("embed_dim", embed_dim, "num_heads", num_heads)
    if token_learner is not None and token_learner not in TOKEN_LEARNER_VARIANTS:
        raise ValueError(
            f"token_learner must be None or one of {sorted(TOKEN_LEARNER_VARIANTS)}, got {token_learner!r}."
        )
    token_learner_after = depth // 2 if token_learner_after is None else token_learner_after
    if token_learner is not None and not 0 <= token_learner_after <= depth:
        raise ValueError(f"token_learner_after={token_learner_after} must be between 0 and depth={depth}.")

    images = keras.Input((input_size, input_size, 3), dtype="uint8", name="images")
    x = preprocessing(image_size, resize_to=resize_to)(images)
    grid = PatchEmbedding(patch_size, embed_dim, flatten=False, name="patch_embedding")(x)
    grid_side = image_size // patch_size
    tokens = layers.Reshape((grid_side * grid_side, embed_dim), name="flatten_patches")(grid)
    tokens = PositionEmbedding(name="position_embedding")(tokens)
    tokens = layers.Dropout(dropout_rate, name="embedding_dropout")(tokens)

    for index in range(depth):
        if token_learner is not None and index == token_learner_after:
            tokens = _learn_tokens(tokens, grid_side, embed_dim, token_learner, num_tokens, num_groups, dropout_rate)
        tokens, _ = TransformerBlock(num_heads, mlp_ratio, dropout_rate, name=f"block_{index}")(tokens)
    if token_learner is not None and token_learner_after == depth:
        tokens = _learn_tokens(tokens, grid_side, embed_dim, token_learner, num_tokens, num_groups, dropout_rate)

    tokens = layers.LayerNormalization(epsilon=1e-6, name="final_norm")(tokens)
    pooled = layers.GlobalAveragePooling1D(name="pool")(tokens)
    logits = layers.Dense(num_classes, name="logits")(pooled)
    default_name = "vit_token_learner" if token_learner else "vit"
    return keras.Model(images, logits, name=name or default_name)


def _learn_tokens(tokens, grid_side, embed_dim, variant, num_tokens, num_groups, dropout_rate):
    grid = layers.Reshape((grid_side, grid_side, embed_dim), name="tokens_to_grid")(tokens)
    if variant == "v1.0":
        learner = TokenLearner(num_tokens, name="token_learner")
    else:
        learner = TokenLearnerV11(num_tokens, num_groups=num_groups, dropout_rate=dropout_rate, name="token_learner")
    learned, _ = learner(grid)
    return learned


def visualization_model(model):
    """A model on the same weights whose outputs are the logits and the TokenLearner's maps.

    Outputs ``{"logits": (batch, classes), "token_attention": (batch, num_tokens, h, w)}``.
    """
    try:
        learner = model.get_layer("token_learner")
    except ValueError:
        raise ValueError(
            f"Model {model.name!r} has no TokenLearner to visualize: build it with build_vit(token_learner='v1.0')."
        ) from None
    _, attention = learner.output
    return keras.Model(model.inputs, {"logits": model.output, "token_attention": attention}, name=f"{model.name}_viz")


def analyze(viz_model, images):
    """Probabilities and token maps for :func:`course_utils.viz.explore`."""
    # A direct call, not predict(): the explorer sends batches of varying size, which predict would retrace.
    outputs = viz_model(images, training=False)
    probabilities = ops.convert_to_numpy(ops.softmax(outputs["logits"], axis=-1))
    return probabilities, {"token": ops.convert_to_numpy(outputs["token_attention"])}


_EXAMPLE_VIT = dict(
    image_size=48, resize_to=52, patch_size=6, embed_dim=128, depth=4, num_heads=4, mlp_ratio=2.0, dropout_rate=0.1
)

PROFILES = {
    "smoke": Profile(
        name="smoke",
        epochs=1,
        batch_size=64,
        train_samples=512,
        eval_samples=256,
        test_samples=1000,
        model=dict(image_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, dropout_rate=0.0),
        note="tiny model, 512 images: proves the notebook runs",
    ),
    "workshop": Profile(
        name="workshop",
        epochs=6,
        batch_size=128,
        train_samples=10000,
        eval_samples=2000,
        learning_rate=2e-3,
        warmup_epochs=1,
        model=dict(image_size=32, patch_size=4, embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0, dropout_rate=0.0),
        note="a narrower ViT on 32 px (64 patches), 10,000 images: sized for a 2-core CPU",
    ),
    "full": Profile(
        name="full",
        epochs=20,
        batch_size=256,
        learning_rate=1e-3,
        weight_decay=1e-4,
        model=_EXAMPLE_VIT,
        note="the keras.io example: 48 px crops of 52 px, patch 6, width 128, 4 blocks, 8 tokens, batch 256",
    ),
}
