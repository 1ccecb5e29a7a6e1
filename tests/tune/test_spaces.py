"""Search spaces: defaults per workload, explicit flags fixed, file overrides."""

import json

import pytest

from tfcluster.errors import UserError
from tfcluster.tune import spaces


def test_explicit_flags_are_never_searched():
    space = spaces.search_space("nmt", {"optimizer": "sgd"}, fixed={"num_units", "attention"})
    assert "num_units" not in space and "attention" not in space
    assert space["learning_rate"] == {"loguniform": [0.1, 2.0]}
    assert spaces.search_space("nmt", {"optimizer": "adam"}, set())["learning_rate"] == {"loguniform": [1e-4, 1e-2]}
    assert {"learning_rate", "beta1", "z_dim"} <= set(spaces.search_space("dcgan", {}, set()))


def test_file_overrides_replace_and_drop(tmp_path):
    path = tmp_path / "space.json"
    path.write_text(json.dumps({"dropout": {"uniform": [0.1, 0.2]}, "attention": None, "num_layers": 2}))
    space = spaces.search_space("nmt", {}, set(), spaces.load_overrides(str(path)), fields={"dropout", "attention",
                                "num_layers", "learning_rate", "num_units", "batch_size"})
    assert space["dropout"] == {"uniform": [0.1, 0.2]} and "attention" not in space and space["num_layers"] == 2
    with pytest.raises(UserError, match="unknown setting"):
        spaces.search_space("nmt", {}, set(), {"no_such_knob": 1}, fields={"dropout"})


def test_specs_become_tune_domains():
    from ray.tune.search.sample import Categorical, Float

    assert isinstance(spaces.to_tune({"loguniform": [1e-4, 1e-2]}), Float)
    assert isinstance(spaces.to_tune({"choice": [1, 2]}), Categorical)
    assert spaces.to_tune(3) == 3
    with pytest.raises(UserError, match="unknown distribution"):
        spaces.to_tune({"gaussian": [0, 1]})
