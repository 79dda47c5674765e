"""Tests for course_utils.models.temporal_latent_bottleneck, on the active Keras backend."""

import collections
import math

import keras
import numpy as np
import pytest

from course_utils.analysis import Analysis, MapSet
from course_utils.models import temporal_latent_bottleneck as tlb
from course_utils.models.blocks import TransformerBlock
from course_utils.models.temporal_latent_bottleneck import (
    AttentionBlock,
    ChunkedPatchEmbedding,
    TemporalLatentBottleneck,
    TLBCell,
)
from helpers import check_layer, check_model_round_trip, random_inputs

# A tiny model: 16 px images, 4 px patches -> a 4x4 grid of 16 tokens -> 4 chunks of 4 tokens.
# num_latents (3) differs from chunk_size (4) so that shapes tell the two streams apart.
TINY = dict(
    image_size=16, resize_to=18, patch_size=4, embed_dim=8, chunk_size=4, num_latents=3, depth=3, r=2,
    num_heads=2, mlp_ratio=2,
)
TINY_BLOCKS = dict(depth=3, r=2, num_heads=2, mlp_ratio=2)


def uint8_images(batch=2, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(batch, size, size, 3), dtype=np.uint8)


def to_numpy(x):
    return keras.ops.convert_to_numpy(x)


# ------------------------------------------------------------------------------------------------
# ChunkedPatchEmbedding
# ------------------------------------------------------------------------------------------------
def test_chunked_patch_embedding_layer(tmp_path):
    layer = check_layer(
        ChunkedPatchEmbedding,
        dict(patch_size=4, embed_dim=8, chunk_size=4),
        input_shape=(2, 16, 16, 3),
        expected_output_shape=(2, 4, 4, 8),
        tmp_path=tmp_path,
    )
    images = random_inputs((2, 16, 16, 3), seed=1)
    chunks = to_numpy(layer(images))
    # The chunks are consecutive runs of the raster-ordered token sequence.
    tokens = to_numpy(layer.norm(layer.positions(layer.patches(images))))
    assert tokens.shape == (2, 16, 8)
    for k in range(4):
        np.testing.assert_allclose(chunks[:, k], tokens[:, 4 * k : 4 * k + 4], atol=1e-6)


def test_chunk_size_must_divide_the_number_of_patches():
    layer = ChunkedPatchEmbedding(patch_size=4, embed_dim=8, chunk_size=3)
    with pytest.raises(ValueError, match=r"chunk_size=3 does not divide the number of patches, 16 \(a 4x4"):
        layer(random_inputs((1, 16, 16, 3)))
    with pytest.raises(ValueError, match=r"chunk_size=5 does not divide the number of patches, 64"):
        tlb.build_model(image_size=32, patch_size=4, chunk_size=5)


def test_patch_size_must_divide_the_image():
    with pytest.raises(ValueError, match=r"`image_size`=32 is not divisible by `patch_size`=5"):
        tlb.build_model(image_size=32, patch_size=5)
    with pytest.raises(ValueError, match=r"patch_size=5 does not divide the image height \(16\)"):
        ChunkedPatchEmbedding(patch_size=5, embed_dim=8, chunk_size=1)(random_inputs((1, 16, 16, 3)))


# ------------------------------------------------------------------------------------------------
# AttentionBlock
# ------------------------------------------------------------------------------------------------
def test_attention_block_self_attention(tmp_path):
    layer = check_layer(
        AttentionBlock,
        dict(num_heads=2, mlp_ratio=2, dropout_rate=0.1, attention_dropout=0.1),
        input_shape=(2, 5, 8),
        expected_output_shape=[(2, 5, 8), (2, 2, 5, 5)],
        tmp_path=tmp_path,
    )
    outputs, scores = layer(random_inputs((2, 5, 8), seed=3))
    np.testing.assert_allclose(to_numpy(scores).sum(axis=-1), 1.0, atol=1e-5)
    assert not np.allclose(to_numpy(outputs), random_inputs((2, 5, 8), seed=3))


def test_attention_block_cross_attention(tmp_path):
    block = AttentionBlock(num_heads=2, mlp_ratio=2, cross_attention=True)
    query, context = random_inputs((2, 5, 8), seed=1), random_inputs((2, 3, 8), seed=2)
    outputs, scores = block(query, context)
    assert tuple(outputs.shape) == (2, 5, 8)
    assert tuple(scores.shape) == (2, 2, 5, 3)
    np.testing.assert_allclose(to_numpy(scores).sum(axis=-1), 1.0, atol=1e-5)
    assert block.get_config()["cross_attention"] is True
    # The context matters: another context gives other outputs.
    other, _ = block(query, random_inputs((2, 3, 8), seed=7))
    assert not np.allclose(to_numpy(other), to_numpy(outputs))
    # Save/load inside a two-input model.
    q_in, c_in = keras.Input((5, 8)), keras.Input((3, 8))
    model = keras.Model([q_in, c_in], AttentionBlock.from_config(block.get_config())(q_in, c_in))
    check_model_round_trip(model, [query, context], tmp_path)


def test_attention_block_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"num_heads=3 does not divide the token width \(8 channels\)"):
        AttentionBlock(num_heads=3)(random_inputs((1, 4, 8)))
    with pytest.raises(ValueError, match=r"`num_heads` must be a positive integer"):
        AttentionBlock(num_heads=0)
    with pytest.raises(ValueError, match=r"`dropout_rate` must be a number in \[0, 1\)"):
        AttentionBlock(num_heads=1, dropout_rate=1.5)
    with pytest.raises(ValueError, match=r"`attention_dropout` must be a number in \[0, 1\)"):
        AttentionBlock(num_heads=1, attention_dropout=-0.1)
    with pytest.raises(ValueError, match=r"`mlp_ratio` must be a number >= 1"):
        AttentionBlock(num_heads=1, mlp_ratio=0)
    with pytest.raises(ValueError, match="pass the sequence to read as `context`"):
        AttentionBlock(num_heads=1, cross_attention=True)(random_inputs((1, 4, 8)))
    with pytest.raises(ValueError, match="build it with cross_attention=True"):
        AttentionBlock(num_heads=1)(random_inputs((1, 4, 8)), random_inputs((1, 2, 8)))


# ------------------------------------------------------------------------------------------------
# TLBCell and the recurrence
# ------------------------------------------------------------------------------------------------
def make_cell(**overrides):
    kwargs = dict(embed_dim=8, chunk_size=4, num_latents=3, **TINY_BLOCKS)
    kwargs.update(overrides)
    cell = TLBCell(**kwargs)
    cell.build((None, kwargs["chunk_size"], kwargs["embed_dim"]))
    return cell


def test_cell_sizes_config_and_blocks():
    cell = make_cell()
    assert cell.state_size == 3 * 8
    assert cell.output_size == 2 * 3 * 4
    config = cell.get_config()
    for name, value in dict(embed_dim=8, chunk_size=4, num_latents=3, **TINY_BLOCKS).items():
        assert config[name] == value, name
    clone = TLBCell.from_config(config)
    assert (clone.state_size, clone.output_size) == (cell.state_size, cell.output_size)
    # 3 self-attention layers, cross-attention after layers 0 and 2, one latent update.
    assert [b.name for b in cell.self_attention] == [f"perceptual_self_attention_{i}" for i in range(3)]
    assert [b.name for b in cell.cross_attention] == ["perceptual_cross_attention_0", "perceptual_cross_attention_1"]
    assert all(b.cross_attention for b in cell.cross_attention) and cell.latent_update.cross_attention
    assert not any(b.cross_attention for b in cell.self_attention)


def test_cell_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"num_heads=3 does not divide the token width \(8 channels\)"):
        TLBCell(embed_dim=8, chunk_size=4, num_latents=3, depth=2, r=1, num_heads=3)
    with pytest.raises(ValueError, match=r"`r` must be a positive integer"):
        TLBCell(embed_dim=8, chunk_size=4, num_latents=3, depth=2, r=0)
    with pytest.raises(ValueError, match=r"`num_latents` must be a positive integer"):
        TemporalLatentBottleneck(num_latents=0, depth=2, r=1)
    cell = TLBCell(embed_dim=8, chunk_size=4, num_latents=3, depth=2, r=1)
    with pytest.raises(ValueError, match=r"configured for chunks of shape \(batch, 4, 8\) but received"):
        cell.build((None, 5, 8))


def record_block_calls(cell):
    """Wrap ``call`` of every AttentionBlock of ``cell``; return the list the calls are appended to."""
    trace = []
    for block in [*cell.self_attention, *cell.cross_attention, cell.latent_update]:

        def wrapper(query, context=None, training=None, _block=block, _call=block.call):
            trace.append((_block, tuple(query.shape), None if context is None else tuple(context.shape)))
            return _call(query, context, training=training)

        block.call = wrapper
    return trace


@pytest.mark.parametrize("depth, r", [(3, 2), (4, 2), (4, 1), (2, 3)])
def test_every_perceptual_layer_is_used_once_per_chunk_in_the_papers_order(depth, r):
    batch, chunk_size, num_latents, dim = 2, 4, 3, 8
    cell = make_cell(depth=depth, r=r, num_heads=1)
    trace = record_block_calls(cell)
    chunk_shape, slow_shape = (batch, chunk_size, dim), (batch, num_latents, dim)
    state = keras.ops.convert_to_tensor(random_inputs((batch, num_latents * dim), seed=1))
    for k in range(3):  # three chunks, one cell call each
        trace.clear()
        cell(random_inputs(chunk_shape, seed=10 + k), [state])
        # The paper's order, written out independently of the cell's code.
        expected = []
        for i in range(depth):
            expected.append((f"perceptual_self_attention_{i}", chunk_shape, None))
            if i % r == 0:
                expected.append((f"perceptual_cross_attention_{i // r}", chunk_shape, slow_shape))
        expected.append(("latent_update", slow_shape, chunk_shape))
        assert [(b.name, q, c) for b, q, c in trace] == expected
        # Each block object exactly once: no object called twice, none left out.
        counts = collections.Counter(id(block) for block, _, _ in trace)
        assert set(counts.values()) == {1}
        assert len(counts) == depth + math.ceil(depth / r) + 1
    # And there are no other attention blocks with weights in the cell.
    block_names = {w.path.split("/")[1] for w in cell.weights}
    assert block_names == {b.name for b, _, _ in trace}


def test_bottleneck_layer(tmp_path):
    layer = check_layer(
        TemporalLatentBottleneck,
        dict(num_latents=3, dropout_rate=0.1, attention_dropout=0.1, **TINY_BLOCKS),
        input_shape=(2, 5, 4, 8),
        expected_output_shape=[(2, 3, 8), (2, 5, 2, 3, 4)],
        tmp_path=tmp_path,
    )
    x = random_inputs((2, 5, 4, 8), seed=4)
    slow, scores = layer(x, training=False)
    np.testing.assert_allclose(to_numpy(scores).sum(axis=-1), 1.0, atol=1e-5)
    again, _ = layer(x, training=False)
    np.testing.assert_allclose(to_numpy(again), to_numpy(slow), atol=1e-6)
    dropped, _ = layer(x, training=True)
    assert not np.allclose(to_numpy(dropped), to_numpy(slow), atol=1e-4), "dropout inactive in training"


def test_recurrence_equals_running_the_chunks_by_hand():
    layer = TemporalLatentBottleneck(num_latents=3, **TINY_BLOCKS)
    chunks = random_inputs((2, 5, 4, 8), seed=5)
    slow, scores = layer(chunks)
    slow, scores = to_numpy(slow), to_numpy(scores)

    state = np.tile(to_numpy(layer.initial_latents).reshape(1, -1), (2, 1))
    for k in range(5):
        step_scores, (state,) = layer.cell(chunks[:, k], [state], training=False)
        state = to_numpy(state)
        np.testing.assert_allclose(
            to_numpy(step_scores).reshape(2, 2, 3, 4), scores[:, k], rtol=1e-5, atol=1e-5, err_msg=f"chunk {k}"
        )
    # rtol too: on JAX the scanned and the step-by-step graphs round differently (1.2e-5 on values near 6.6)
    np.testing.assert_allclose(state.reshape(2, 3, 8), slow, rtol=1e-5, atol=1e-5)
    # The slow stream carries information: changing the first chunk changes the final state.
    changed = chunks.copy()
    changed[:, 0] = random_inputs((2, 4, 8), seed=9)
    assert not np.allclose(to_numpy(layer(changed)[0]), slow, atol=1e-4)


# ------------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------------
def test_build_model_tiny_and_round_trip(tmp_path):
    model = tlb.build_model(**TINY)
    assert model.input.dtype == "uint8" and tuple(model.input.shape) == (None, 32, 32, 3)
    images = uint8_images()
    logits = to_numpy(model(images, training=False))
    assert logits.shape == (2, 10)
    assert not np.allclose(logits.sum(axis=-1), 1.0), "the model must output logits, not probabilities"
    check_model_round_trip(model, images, tmp_path)

    bare = tlb.build_model(**{**TINY, "include_preprocessing": False})
    assert tuple(bare.input.shape) == (None, 16, 16, 3)
    assert to_numpy(bare(random_inputs((2, 16, 16, 3)))).shape == (2, 10)


def test_build_model_takes_other_input_sizes():
    model = tlb.build_model(**TINY, input_size=48)
    assert model.input.dtype == "uint8" and tuple(model.input.shape) == (None, 48, 48, 3)
    assert to_numpy(model(uint8_images(size=48), training=False)).shape == (2, 10)
    # The network behind the stem is the same: same weights, whatever the input size.
    assert model.count_params() == tlb.build_model(**TINY).count_params()


def test_build_model_passes_depth_to_the_bottleneck():
    bottleneck = tlb.build_model(**TINY).get_layer("temporal_latent_bottleneck")
    assert bottleneck.depth == TINY["depth"] and bottleneck.cell.depth == TINY["depth"]
    assert len(bottleneck.cell.self_attention) == TINY["depth"]


def test_build_model_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"num_heads=4 does not divide the token width \(10 channels\)"):
        tlb.build_model(**{**TINY, "embed_dim": 10, "num_heads": 4})
    with pytest.raises(ValueError, match=r"`num_classes` must be a positive integer"):
        tlb.build_model(**{**TINY, "num_classes": 0})
    with pytest.raises(ValueError, match=r"`depth` must be a positive integer"):
        tlb.build_model(**{**TINY, "depth": 0})
    with pytest.raises(ValueError, match=r"`input_size` must be a positive integer"):
        tlb.build_model(**{**TINY, "input_size": 0})
    with pytest.raises(ValueError, match=r"resize_to=12 is smaller than image_size=16"):
        tlb.build_model(**{**TINY, "resize_to": 12})
    with pytest.raises(TypeError):
        tlb.build_model(**TINY, num_layers=3)  # the old name of depth
    with pytest.raises(TypeError):
        tlb.build_model(16)  # keyword arguments only


def test_visualization_model_and_analyze():
    model = tlb.build_model(**TINY)
    viz = tlb.visualization_model(model)
    assert len(viz.weights) == len(model.weights), "the visualization model must share the weights"
    images = uint8_images(batch=3)
    outputs = viz.predict(images, verbose=0)
    assert set(outputs) == {"logits", "slow_stream_attention"}
    np.testing.assert_allclose(outputs["logits"], model.predict(images, verbose=0), atol=1e-5)
    scores = np.asarray(outputs["slow_stream_attention"])
    assert scores.shape == (3, 4, 2, 3, 4)  # (batch, chunks, heads, latents, chunk tokens)
    np.testing.assert_allclose(scores.sum(axis=-1), 1.0, atol=1e-5)

    result = tlb.analyze(viz, images, batch_size=2)
    assert isinstance(result, Analysis)
    probabilities, maps = result
    assert probabilities.shape == (3, 10)
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, atol=1e-5)
    assert list(maps) == ["slow-stream attention, chunk by chunk", "slow-stream attention, all chunks"]
    assert all(isinstance(value, MapSet) and not value.signed and value.description for value in maps.values())
    chunk_by_chunk, all_chunks = maps.values()
    assert chunk_by_chunk.items == ("chunk 1", "chunk 2", "chunk 3", "chunk 4")
    assert all_chunks.items == ("all chunks",)
    per_chunk = chunk_by_chunk.values
    assert per_chunk.shape == (3, 4, 4, 4)
    np.testing.assert_allclose(per_chunk.sum(axis=(2, 3)), 1.0, atol=1e-5)
    # With a 4x4 grid and chunks of 4 tokens, chunk k is row k of the grid.
    for k in range(4):
        outside = np.delete(per_chunk[:, k], k, axis=1)
        assert np.all(outside == 0)
        np.testing.assert_allclose(per_chunk[:, k, k], scores[:, k].mean(axis=(1, 2)), atol=1e-6)
    np.testing.assert_allclose(all_chunks.values[:, 0], per_chunk.sum(axis=1), atol=1e-6)
    # The classifier itself is accepted too.
    np.testing.assert_allclose(tlb.analyze(model, images).probabilities, probabilities, atol=1e-6)

    with pytest.raises(ValueError, match="has no TemporalLatentBottleneck layer"):
        tlb.visualization_model(tlb.build_baseline(**TINY))


def test_chunk_maps_places_chunks_in_raster_order():
    # A 6x6 grid of 36 tokens in 4 chunks of 9; every chunk puts all its attention on its first token.
    scores = np.zeros((1, 4, 1, 1, 9), dtype="float32")
    scores[0, :, 0, 0, 0] = 1.0
    per_chunk = tlb.chunk_maps(scores)
    assert per_chunk.shape == (1, 4, 6, 6)
    expected = np.zeros(36)
    expected[[0, 9, 18, 27]] = 1.0  # tokens 0, 9, 18, 27 in raster order
    np.testing.assert_array_equal(per_chunk[0].sum(axis=0), expected.reshape(6, 6))
    assert per_chunk[0, 2, 3, 0] == 1.0  # token 18 = row 3, column 0
    with pytest.raises(ValueError, match="Cannot lay 10 patches"):
        tlb.chunk_maps(np.zeros((1, 2, 1, 1, 5)))


def test_chunk_maps_average_over_heads_and_latents():
    scores = np.zeros((1, 1, 2, 2, 4), dtype="float32")
    scores[0, 0, 0, 0, 0] = scores[0, 0, 1, 1, 3] = 1.0  # two (head, latent) pairs on tokens 0 and 3
    scores[0, 0, 0, 1, 1] = scores[0, 0, 1, 0, 1] = 1.0  # the other two on token 1
    np.testing.assert_allclose(tlb.chunk_maps(scores)[0, 0], [[0.25, 0.5], [0.0, 0.25]])


def test_baseline_is_the_course_vit_with_the_same_width_depth_and_heads(tmp_path):
    baseline = tlb.build_baseline(**TINY)
    assert baseline.name == "vit"
    blocks = [layer for layer in baseline.layers if isinstance(layer, TransformerBlock)]
    assert len(blocks) == TINY["depth"]
    assert {(b.num_heads, b.mlp_ratio) for b in blocks} == {(TINY["num_heads"], TINY["mlp_ratio"])}
    assert blocks[0].input.shape[1:] == (16, TINY["embed_dim"])  # all 16 patch tokens at once, no chunks
    assert not any(isinstance(layer, TemporalLatentBottleneck) for layer in baseline.layers)
    images = uint8_images()
    assert to_numpy(baseline(images)).shape == (2, 10)
    check_model_round_trip(baseline, images, tmp_path)


def test_baseline_takes_the_tlb_defaults_for_arguments_not_given():
    # mlp_ratio and num_heads are not in the smoke profile: the ViT takes the TLB's 4 and 1, not its own.
    smoke = tlb.PROFILES["smoke"].model
    assert "mlp_ratio" not in smoke
    block = tlb.build_baseline(**smoke).get_layer("block_0")
    assert (block.mlp_ratio, block.num_heads) == (4, smoke["num_heads"])
    assert tlb.build_baseline(**smoke, input_size=40).input_shape == (None, 40, 40, 3)
    assert tlb.build_baseline(name="plain").name == "plain"
    with pytest.raises(TypeError):
        tlb.build_baseline(num_tokens=4)  # not an argument of either model


# ------------------------------------------------------------------------------------------------
# Profiles
# ------------------------------------------------------------------------------------------------
def test_the_full_profile_is_the_keras_io_example_and_its_note_names_every_change():
    profile = tlb.PROFILES["full"]
    assert (profile.epochs, profile.train_samples, profile.weight_decay) == (30, None, 1e-4)
    # The example's batch of 2048 at 1e-4, halved together.
    assert (profile.batch_size, profile.learning_rate) == (1024, 5e-5)
    model = profile.model
    assert (model["image_size"], model["resize_to"], model["patch_size"], model["chunk_size"]) == (48, 52, 4, 8)
    assert (model["depth"], model["r"], model["embed_dim"], model["num_heads"]) == (4, 2, 64, 1)
    assert (model["dropout_rate"], model["attention_dropout"]) == (0.2, 0.2)
    assert model["num_latents"] == model["chunk_size"], "as many latents as the example's state holds"
    for words in ("2048", "1e-4", "float16", "T4", "cosine", "constant", "final slow stream",
                  "last chunk's fast stream", "learned vectors", "zeros", "6 self-attention", "LayerNorm",
                  "centre-crops", "reshuffled", "validation"):
        assert words in profile.note, words
    assert "accuracy" in profile.note and "%" not in profile.note  # says what is reported, never a number
    built = tlb.build_model(**model)
    cell = built.get_layer("temporal_latent_bottleneck").cell
    assert (len(cell.self_attention), len(cell.cross_attention)) == (4, 2)
    bottleneck = built.get_layer("temporal_latent_bottleneck")
    assert bottleneck.initial_latents.shape == (8, 64)
    # The classifier's LayerNorm reads the bottleneck's first output, the final slow stream.
    assert built.get_layer("final_norm").input is bottleneck.output[0]


