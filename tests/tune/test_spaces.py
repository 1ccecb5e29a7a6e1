"""Search spaces: defaults per workload, explicit flags fixed, file overrides."""

import json

import pytest

from tfcluster import workloads
from tfcluster.errors import UserError
from tfcluster.tune import spaces


def space_of(name, base, fixed, *args, **kwargs):
    """The sweep's space for workload `name`: its contract's default space, then overrides and fixed flags."""
    return spaces.search_space(workloads.get(name).search_space(base), fixed, *args, **kwargs)


def test_explicit_flags_are_never_searched():
    space = space_of("nmt", {"optimizer": "sgd"}, fixed={"num_units", "attention"})
    assert "num_units" not in space and "attention" not in space
    assert space["learning_rate"] == {"loguniform": [0.1, 2.0]}
    assert space_of("nmt", {"optimizer": "adam"}, set())["learning_rate"] == {"loguniform": [1e-4, 1e-2]}
    assert {"learning_rate", "beta1", "z_dim"} <= set(space_of("dcgan", {}, set()))


def test_file_overrides_replace_and_drop(tmp_path):
    path = tmp_path / "space.json"
    path.write_text(json.dumps({"dropout": {"uniform": [0.1, 0.2]}, "attention": None, "num_layers": 2}))
    space = space_of("nmt", {}, set(), spaces.load_overrides(str(path)), fields={"dropout", "attention",
                                "num_layers", "learning_rate", "num_units", "batch_size"})
    assert space["dropout"] == {"uniform": [0.1, 0.2]} and "attention" not in space and space["num_layers"] == 2
    with pytest.raises(UserError, match="unknown setting"):
        space_of("nmt", {}, set(), {"no_such_knob": 1}, fields={"dropout"})


def test_specs_become_tune_domains():
    from ray.tune.search.sample import Categorical, Float

    assert isinstance(spaces.to_tune({"loguniform": [1e-4, 1e-2]}), Float)
    assert isinstance(spaces.to_tune({"choice": [1, 2]}), Categorical)
    assert spaces.to_tune(3) == 3
    with pytest.raises(UserError, match="unknown distribution"):
        spaces.to_tune({"gaussian": [0, 1]})


def test_rl_spaces_and_pbt_stays_inside_the_space():
    from tfcluster.tune.sweep import _clip

    pg = space_of("pg", {}, {"hidden_units"})
    assert "hidden_units" not in pg and pg["learning_rate"] == {"loguniform": [1e-3, 5e-2]}
    dqn = space_of("dqn", {"optimizer": "adam", "t_train_max": 100_000}, set())
    assert dqn["t_ep_end"] == {"choice": [5000, 10_000, 25_000]} and dqn["learning_rate"]["loguniform"][0] == 1e-4
    assert (workloads.get("pg").metric, workloads.get("pg").mode) == ("env_runners/episode_return_mean", "max")
    assert spaces.bounds({"uniform": [0.95, 0.999]}) == (0.95, 0.999) and spaces.bounds({"choice": [1, 2]}) is None
    # PBT multiplies by 1.2 or 0.8; the explored value is clipped back into the range
    explored = _clip({"discount": 0.999 * 1.2, "learning_rate": 1e-4, "hidden_units": 8},
                     bounds={"discount": (0.95, 0.999), "learning_rate": (1e-3, 5e-2)})
    assert explored == {"discount": 0.999, "learning_rate": 1e-3, "hidden_units": 8}
