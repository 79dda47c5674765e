"""TokenLearner (Ryoo et al., 2021) and the mini ViT the course trains it in.

A ViT pays for every token in every block. TokenLearner replaces the ``h * w`` patch tokens in the
middle of the network by a handful of learned tokens: each learned token is a weighted average of the
patch features, with weights from a small spatial-attention network. The blocks after it work on
``num_tokens`` tokens instead of ``h * w``.

The model is the course's plain ViT (:mod:`course_utils.models.vit`) with a TokenLearner between two runs
of its blocks, so the two differ in that layer alone. The module follows the course's model-module
protocol (CONTRIBUTING.md)::

    model = build_model(**profile.model)          # ViT + TokenLearner
    baseline = build_baseline(**profile.model)    # the same ViT without it
    viz_model = visualization_model(model)
    probabilities, maps = analyze(viz_model, images)   # maps: {"token attention": MapSet}

Public names:
    TokenLearner, TokenLearnerV11                                 layers
    build_model, build_baseline, visualization_model, analyze     the protocol
    PROFILES                                                      smoke / workshop / full training profiles
"""


import keras
from keras import layers, ops

from course_utils.analysis import MapSet, numbered
from course_utils.models.blocks import MLP
from course_utils.models.common import ImageModel, analysis, find_layer, image_input, predict_outputs, with_outputs
from course_utils.models.vit import (
    LAYER_NORM_EPSILON,
    build_vit_like,
    check_vit_arguments,
    classifier_head,
    patch_tokens,
    transformer_blocks,
)
from course_utils.profiles import Profile
from course_utils.validation import (
    PACKAGE,
    require_choice,
    require_image_shape,
    require_positive_int,
    require_positive_number,
    require_rate,
)

BUILDER = "token_learner.build_model()"
VARIANTS = ("v1.0", "v1.1")
"""The values of ``build_model(token_learner=...)``: :class:`TokenLearner` and :class:`TokenLearnerV11`."""
"""The arguments of :func:`build_model` that the plain ViT of :func:`build_baseline` does not take."""
ATTENTION_OUTPUT = "token_attention"
"""The visualization model's output holding the TokenLearner's maps, ``(batch, num_tokens, h, w)``."""


def _weighted_sum(attention, features):
    """Every token's attention-weighted sum of the features over the positions (no mean, no projection).

    Shapes: ``attention`` ``(batch, tokens, h, w)`` and ``features`` ``(batch, h, w, channels)`` ->
    ``(batch, tokens, channels)``.
    """
    return ops.einsum("bthw,bhwc->btc", attention, features)


@keras.saving.register_keras_serializable(package=PACKAGE)
class TokenLearner(layers.Layer):
    """The original TokenLearner: sigmoid spatial attention from four small convolutions.

    For each of the ``num_tokens`` outputs, a map ``a_i(x) in [0, 1]^(h x w)`` is computed from the
    normalised features by three 3x3 convolutions with GELU and a fourth with a sigmoid. The i-th token
    is the spatial mean of the features weighted by ``a_i``:
    ``z_i = mean_{p} a_i(x)[p] * x[p]``.

    This is the module of the paper (Ryoo et al., arXiv:2106.11297), whose pooling is a spatial mean, as
    in the keras.io example; the authors' code (``TokenLearnerModule`` in scenic) sums by default, which
    only scales every token by ``h * w``.

    Args:
        num_tokens: how many tokens to learn.
        layer_norm_epsilon: epsilon of the LayerNorm applied before the attention network.

    Call returns ``(tokens, attention)``.
    Shapes: ``(batch, h, w, channels)`` -> tokens ``(batch, num_tokens, channels)``,
    attention ``(batch, num_tokens, h, w)``.

    Example:
    >>> tokens, attention = TokenLearner(num_tokens=4)(keras.ops.ones((2, 8, 8, 16)))
    >>> tuple(tokens.shape), tuple(attention.shape)
    ((2, 4, 16), (2, 4, 8, 8))
    """

    def __init__(self, num_tokens=8, layer_norm_epsilon=LAYER_NORM_EPSILON, **kwargs):
        super().__init__(**kwargs)
        self.num_tokens = require_positive_int("num_tokens", num_tokens)
        self.layer_norm_epsilon = require_positive_number("layer_norm_epsilon", layer_norm_epsilon, example="1e-6")

    def build(self, input_shape):
        require_image_shape(self.__class__.__name__, input_shape)
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
        positions = ops.cast(ops.shape(features)[1] * ops.shape(features)[2], features.dtype)
        return _weighted_sum(attention, features) / positions, attention

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        return (batch, self.num_tokens, channels), (batch, self.num_tokens, height, width)

    def get_config(self):
        config = super().get_config()
        config.update(num_tokens=self.num_tokens, layer_norm_epsilon=self.layer_norm_epsilon)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class TokenLearnerV11(TokenLearner):
    """TokenLearner v1.1: a small MLP scores every position, a softmax over positions makes the maps.

    The authors' current revision, as in ``google-research/scenic``, file
    ``scenic/projects/token_learner/model.py``, class ``TokenLearnerModuleV11`` (read at commit
    ``03c3032``). Per position ``p`` of the normalised features, an MLP (Dense to ``bottleneck_dim``
    units, GELU, dropout, Dense to ``num_tokens`` units, dropout) gives one score per learned token; for
    each token a softmax over the ``h * w`` positions turns its scores into a map ``a_i`` that sums to 1,
    and the token is the ``a_i``-weighted sum of the *input* features, with no projection of them:
    ``z_i = sum_p a_i[p] * x[p]``.

    The paper (Ryoo et al., arXiv:2106.11297, NeurIPS 2021) describes v1.0; we did not find v1.1 in it,
    so the code is the source here. An earlier revision of that code used two grouped convolutions where
    the MLP now is (the revision the keras.io example quotes); the class's docstring now reports that the
    MLP version works better in general. One small departure: Keras's GELU here is the exact one, where
    Flax's default is its tanh approximation.

    A subclass of :class:`TokenLearner` (same inputs, outputs and output shapes), so code that looks for
    the TokenLearner of a model finds either variant.

    Args:
        num_tokens: how many tokens to learn.
        bottleneck_dim: hidden units of the MLP that scores the positions.
        dropout_rate: dropout after each Dense layer of that MLP (on the scores only, never on the
            features that are summed).
        layer_norm_epsilon: epsilon of the LayerNorm before the MLP.

    Call returns ``(tokens, attention)``.
    Shapes: ``(batch, h, w, channels)`` -> tokens ``(batch, num_tokens, channels)``,
    attention ``(batch, num_tokens, h, w)`` (each map sums to 1).

    Example:
    >>> tokens, attention = TokenLearnerV11(num_tokens=4, bottleneck_dim=32)(keras.ops.ones((2, 8, 8, 16)))
    >>> tuple(tokens.shape), tuple(attention.shape)
    ((2, 4, 16), (2, 4, 8, 8))
    """

    def __init__(
        self, num_tokens=8, bottleneck_dim=64, dropout_rate=0.0, layer_norm_epsilon=LAYER_NORM_EPSILON, **kwargs
    ):
        super().__init__(num_tokens=num_tokens, layer_norm_epsilon=layer_norm_epsilon, **kwargs)
        self.bottleneck_dim = require_positive_int("bottleneck_dim", bottleneck_dim)
        self.dropout_rate = require_rate("dropout_rate", dropout_rate)

    def build(self, input_shape):
        require_image_shape(self.__class__.__name__, input_shape)
        self.norm = layers.LayerNormalization(epsilon=self.layer_norm_epsilon, name="norm")
        self.norm.build(input_shape)
        self.scores = MLP(
            self.bottleneck_dim, output_units=self.num_tokens, dropout_rate=self.dropout_rate, name="scores"
        )
        self.scores.build(input_shape)

    def call(self, features, training=None):
        shape = ops.shape(features)
        batch, height, width = shape[0], shape[1], shape[2]
        scores = self.scores(self.norm(features), training=training)  # (batch, h, w, tokens)
        # One distribution over the h * w positions per token.
        weights = ops.softmax(ops.reshape(scores, (batch, height * width, self.num_tokens)), axis=1)
        attention = ops.transpose(ops.reshape(weights, (batch, height, width, self.num_tokens)), (0, 3, 1, 2))
        return _weighted_sum(attention, features), attention

    def get_config(self):
        config = super().get_config()
        config.update(bottleneck_dim=self.bottleneck_dim, dropout_rate=self.dropout_rate)
        return config


def build_model(
    *,
    image_size=32,
    patch_size=4,
    embed_dim=128,
    depth=4,
    num_heads=4,
    mlp_ratio=2.0,
    dropout_rate=0.1,
    attention_dropout=0.1,
    token_learner="v1.0",
    num_tokens=8,
    token_learner_after=None,
    bottleneck_dim=64,
    num_classes=10,
    input_size=32,
    resize_to=None,
    include_preprocessing=True,
    name="vit_token_learner",
):
    """A mini ViT for CIFAR-10 with a TokenLearner after some of its blocks: uint8 images -> logits.

    ``uint8 images -> preprocessing -> patch embedding + positions -> blocks -> TokenLearner -> blocks
    -> LayerNorm -> mean over tokens -> Dense logits``: :func:`course_utils.models.vit.build_vit` with the
    TokenLearner (layer ``token_learner``, fed the tokens laid back on their ``h x w`` grid) inserted
    between blocks ``block_<token_learner_after - 1>`` and ``block_<token_learner_after>``.

    Args: those of :func:`course_utils.models.vit.build_vit`, with this model's defaults (``dropout_rate``
    also applies inside the v1.1 TokenLearner's scoring MLP, as in the authors' code), and the
    TokenLearner's own:
        token_learner: ``"v1.0"`` (:class:`TokenLearner`: sigmoid maps from 4 convolutions, the paper's) or
            ``"v1.1"`` (:class:`TokenLearnerV11`: an MLP scores the positions, a softmax over them).
        num_tokens: tokens the TokenLearner learns.
        token_learner_after: how many blocks run before the TokenLearner, from 0 to ``depth`` (default
            ``depth // 2``, the middle, which the paper found works well).
        bottleneck_dim: hidden units of the v1.1 TokenLearner's scoring MLP (unused by v1.0).

    Shapes: ``(batch, input_size, input_size, 3)`` uint8 -> ``(batch, num_classes)`` logits.

    Example:
    >>> model = build_model(image_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2, num_tokens=4)
    >>> model.input_shape, model.output_shape
    ((None, 32, 32, 3), (None, 10))
    >>> [tuple(model.get_layer(f"block_{index}").output[0].shape) for index in range(2)]
    [(None, 16, 16), (None, 4, 16)]
    """
    check_vit_arguments(image_size, patch_size, embed_dim, depth, num_heads, num_classes)
    require_choice("token_learner", token_learner, VARIANTS)
    token_learner_after = depth // 2 if token_learner_after is None else token_learner_after
    require_choice("token_learner_after", token_learner_after, range(depth + 1))
    if token_learner == "v1.0":
        learner = TokenLearner(num_tokens, name="token_learner")
    else:
        learner = TokenLearnerV11(
            num_tokens, bottleneck_dim=bottleneck_dim, dropout_rate=dropout_rate, name="token_learner"
        )

    inputs, images = image_input(image_size, input_size, resize_to, include_preprocessing)
    tokens = patch_tokens(images, patch_size, embed_dim, dropout_rate)
    blocks = dict(
        num_heads=num_heads, mlp_ratio=mlp_ratio, dropout_rate=dropout_rate, attention_dropout=attention_dropout
    )
    tokens = transformer_blocks(tokens, range(token_learner_after), **blocks)
    side = image_size // patch_size
    grid = layers.Reshape((side, side, embed_dim), name="tokens_to_grid")(tokens)
    tokens, _ = learner(grid)
    tokens = transformer_blocks(tokens, range(token_learner_after, depth), **blocks)
    return ImageModel(inputs, classifier_head(tokens, num_classes), name=name)


def build_baseline(**model_args):
    """The plain ViT that :func:`build_model` with the same arguments is built on: no TokenLearner.

    ``model_args`` are :func:`build_model`'s (a profile's ``model``); the TokenLearner's own (variant,
    tokens, placement, bottleneck) are dropped and the rest, with :func:`build_model`'s defaults for those
    not given, go to :func:`course_utils.models.vit.build_vit` (through
    :func:`course_utils.models.vit.build_vit_like`). The name defaults to ``"vit"``.

    Example:
    >>> baseline = build_baseline(image_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2, num_tokens=4)
    >>> baseline.name, [tuple(baseline.get_layer(f"block_{index}").output[0].shape) for index in range(2)]
    ('vit', [(None, 16, 16), (None, 16, 16)])
    """
    return build_vit_like(build_model, model_args)


def visualization_model(model):
    """A model on the same weights whose outputs are the logits and the TokenLearner's maps.

    Outputs ``{"logits": (batch, classes), "token_attention": (batch, num_tokens, h, w)}``, for a model made
    by :func:`build_model` (either variant); a ValueError for a model without a TokenLearner.
    """
    learner = find_layer(model, TokenLearner, BUILDER)
    _, attention = learner.output
    return with_outputs(model, {ATTENTION_OUTPUT: attention})


def analyze(model, images, batch_size=128):
    """Probabilities and the TokenLearner's maps for ``images``, what :func:`course_utils.viz.explore` draws.

    ``model`` is a :func:`build_model` classifier or its :func:`visualization_model` (pass the latter when
    calling often); ``images`` are what it takes, predicted ``batch_size`` at a time. Returns an
    :class:`course_utils.analysis.Analysis`: softmax probabilities ``(batch, num_classes)`` and one unsigned
    :class:`MapSet`, ``maps["token attention"]`` ``(batch, num_tokens, h, w)`` on the patch grid, with items
    ``("token 1", ...)``.
    """
    outputs = predict_outputs(model, visualization_model, images, batch_size)
    attention = outputs[ATTENTION_OUTPUT]
    maps = {
        "token attention": MapSet(
            attention,
            items=numbered("token", attention.shape[1]),
            signed=False,
            description="the weight of each patch in a learned token (v1.0: a sigmoid in [0, 1]; v1.1: a "
            "softmax over the patches)",
        )
    }
    return analysis(outputs, maps)


_EXAMPLE_VIT = dict(image_size=48, resize_to=52, patch_size=6, embed_dim=128, depth=4, num_heads=4, mlp_ratio=2.0,
                    dropout_rate=0.1, attention_dropout=0.1)

PROFILES = {
    "smoke": Profile(
        name="smoke",
        epochs=1,
        batch_size=64,
        train_samples=512,
        eval_samples=256,
        test_samples=1000,
        model=dict(image_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, dropout_rate=0.0,
                   attention_dropout=0.0),
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
        model=dict(image_size=32, patch_size=4, embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0, dropout_rate=0.0,
                   attention_dropout=0.0),
        note="a narrower ViT on 32 px (64 patches), 10,000 images: sized for a 2-core CPU",
    ),
    "full": Profile(
        name="full",
        epochs=20,
        batch_size=256,
        learning_rate=1e-3,
        weight_decay=1e-4,
        model=_EXAMPLE_VIT,
        note=(
            "the keras.io example's ViT and recipe (48 px crops of 52 px, patch 6, width 128, 4 blocks of 4 heads, "
            "MLP 256, 8 tokens, dropout 0.1 after the embedding, in the MLPs and on the attention weights, AdamW "
            "1e-3 / wd 1e-4, batch 256, which fits a 16 GB T4), except: the TokenLearner after the second of 4 "
            "blocks (the example's after the third); heads of 32 channels that split the width (its are 128 each); no "
            "GELU after the MLP's second layer; cosine decay (its rate is constant); 20 epochs (its code runs 1 "
            "and its table does not say); the last epoch's weights are tested (it restores the best validation "
            "epoch); evaluation centre-crops the 52 px resize (it resizes to 48 px); one random crop per image "
            "(one per batch)"
        ),
    ),
}
