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
