"""The pure functions: epsilon schedule, target Q (DQN and double DQN), discounted and normalized returns."""

import numpy as np
import pytest

from tfcluster.workloads import dqn, pg


def test_epsilon_holds_then_decays_linearly_then_stays():
    f = lambda t: dqn.linearly_decaying_epsilon(t, 1.0, 0.1, t_ep_end=100, t_learn_start=50)  # noqa: E731
    assert f(0) == 1.0 and f(50) == 1.0
    assert f(100) == pytest.approx(0.55)
    assert f(150) == pytest.approx(0.1) and f(10_000) == pytest.approx(0.1)
    assert [f(t) for t in range(0, 200, 10)] == sorted([f(t) for t in range(0, 200, 10)], reverse=True)


def test_target_q_max_and_terminal():
    r = np.array([1.0, 0.5], np.float32)
    done = np.array([False, True])
    nq = np.array([[1.0, 3.0], [10.0, 20.0]], np.float32)
    y = dqn.target_q(r, done, 0.9, nq).numpy()
    np.testing.assert_allclose(y, [1.0 + 0.9 * 3.0, 0.5])


def test_target_q_double_uses_online_argmax_and_target_value():
    r = np.zeros(2, np.float32)
    done = np.zeros(2, bool)
    q_target = np.array([[1.0, 3.0, 2.0], [5.0, 4.0, 0.0]], np.float32)
    q_online = np.array([[9.0, 0.0, 0.0], [0.0, 0.0, 7.0]], np.float32)  # picks a'=0 and a'=2
    y = dqn.target_q(r, done, 1.0, q_target, q_online).numpy()
    np.testing.assert_allclose(y, [1.0, 0.0])
    assert not np.allclose(y, dqn.target_q(r, done, 1.0, q_target).numpy())


def test_discounted_returns():
    np.testing.assert_allclose(pg.discounted_returns(np.array([1.0, 1.0, 1.0]), 0.5), [1.75, 1.5, 1.0])
    np.testing.assert_allclose(pg.discounted_returns(np.array([0.0, 0.0, 8.0]), 0.5), [2.0, 4.0, 8.0])


def test_discount_and_normalize_over_the_whole_batch():
    eps = [np.ones(3, np.float32), np.ones(1, np.float32)]
    adv = pg.discount_and_normalize(eps, 1.0)  # returns 3, 2, 1, 1
    assert adv.shape == (4,)
    assert adv.mean() == pytest.approx(0.0, abs=1e-6) and adv.std() == pytest.approx(1.0, abs=1e-5)
    assert adv[0] > adv[1] > adv[2] == pytest.approx(adv[3])
    np.testing.assert_array_equal(pg.normalize(np.full(5, 3.0)), np.zeros(5))


def test_parse_dims_and_sizes():
    assert dqn.parse_dims("84,84") == dqn.parse_dims("[84, 84]") == dqn.parse_dims("84x84") == (84, 84)
    with pytest.raises(ValueError, match="observation_dims"):
        dqn.parse_dims("84")
    assert dqn.parse_sizes("128,64") == (128, 64)
