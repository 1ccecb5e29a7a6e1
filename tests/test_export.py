"""Export helpers: the in-graph shape check runs before the computation it guards."""

import numpy as np
import pytest
import tensorflow as tf

from tfcluster import export


def _guarded(dims, message):
    w = tf.ones((4, 3))

    @tf.function(input_signature=[tf.TensorSpec(None, tf.float32)])
    def f(x):
        x = export.require_shape(x, dims, message)
        return tf.matmul(x, w)  # would fail with its own "Matrix size-incompatible" error first without the check

    return f


@pytest.mark.parametrize("bad", [(1, 3), (2, 5), (4,), (2, 4, 1)])
def test_a_wrong_shape_fails_with_the_message_every_time(bad):
    f = _guarded([4], "observation must have shape [batch, 4]")
    for _ in range(20):  # the ordering is structural, not a race: every call gives the same error
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"observation must have shape \[batch, 4\]") as e:
            f(tf.zeros(bad))
        assert "size-incompatible" not in str(e.value) and "In[0]" not in str(e.value)


def test_the_right_shape_passes_through_unchanged():
    f = _guarded([4], "m")
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_array_equal(f(tf.constant(x)).numpy(), x @ np.ones((4, 3), np.float32))


def test_free_dimensions_and_rank_only():
    @tf.function(input_signature=[tf.TensorSpec(None, tf.string)])
    def g(s):
        return tf.strings.length(export.require_shape(s, [], "source must be string [batch]"))

    assert g(tf.constant(["ab", "c"])).numpy().tolist() == [2, 1]
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"source must be string \[batch\]"):
        g(tf.constant([["ab"]]))

    @tf.function(input_signature=[tf.TensorSpec(None, tf.float32)])
    def h(x):
        return export.require_shape(x, [None, 3], "x must be [batch, n, 3]")

    assert h(tf.zeros((2, 7, 3))).shape == (2, 7, 3)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"x must be \[batch, n, 3\]"):
        h(tf.zeros((2, 7, 2)))
