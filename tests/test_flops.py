import keras

from course_utils.flops import count_flops


def dense_model(units_in=16, units_out=8):
    inputs = keras.Input((units_in,))
    return keras.Model(inputs, keras.layers.Dense(units_out, use_bias=False)(inputs))


def test_flops_of_a_matrix_multiply_are_two_per_multiply_add():
    # A (1 x 16) @ (16 x 8) product is 128 multiply-adds, 256 floating-point operations.
    assert count_flops(dense_model()) == 256


def test_flops_scale_with_the_work_and_are_per_image():
    assert count_flops(dense_model(32, 8)) == 2 * count_flops(dense_model(16, 8))
    assert count_flops(dense_model(), batch_size=4) == count_flops(dense_model())


def test_flops_of_a_course_model_saved_on_any_backend():
    # Exercises the path through a saved .keras file (a subprocess on TensorFlow and PyTorch), which must
    # find the course's custom layers.
    from course_utils.models import token_learner as tl

    tiny = dict(image_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2)
    plain, learned = tl.build_baseline(**tiny), tl.build_model(num_tokens=2, **tiny)
    assert 0 < count_flops(learned) < count_flops(plain)
