"""Run by test_rllib.py in a process of its own with TF_USE_LEGACY_KERAS=1 (RLlib's TF policies need
Keras 2): builds tfcluster_dqn and tfcluster_pg through RLlib's ModelCatalog and checks that, with the
same weights, they compute what tfcluster's own (Keras 3) networks compute. Prints one JSON line."""

import json
import os
import sys

assert os.environ.get("TF_USE_LEGACY_KERAS") == "1"
import tensorflow  # noqa: E402,F401  (before RLlib: see tfcluster.rl.rllib)
import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
from ray.rllib.models import ModelCatalog  # noqa: E402

from tfcluster.rl import register_envs  # noqa: E402
from tfcluster.workloads import dqn, pg  # noqa: E402

register_envs()
rng = np.random.default_rng(0)
report = {}
cases = [
    ("tfcluster_dqn", gym.spaces.Box(0, 255, (80, 80, 4), np.uint8), 4,
     {"network_header_type": "nature", "dueling": True}),
    ("tfcluster_dqn", gym.spaces.Box(-1, 1, (4,), np.float32), 2,
     {"network_header_type": "mlp", "mlp_hidden_sizes": "32,16", "dueling": False}),
    ("tfcluster_pg", gym.spaces.Box(-1, 1, (4,), np.float32), 2, {"hidden_units": 10}),
]
for name, space, n, opts in cases:
    model = ModelCatalog.get_model_v2(space, gym.spaces.Discrete(n), n,
                                      {"custom_model": name, "custom_model_config": opts}, framework="tf2")
    obs = rng.uniform(space.low, np.minimum(space.high, 255), size=(5, *space.shape)).astype(np.float32)
    logits, _ = model({"obs": obs}, [], None)
    value = model.value_function().numpy()
    if name == "tfcluster_dqn":
        sizes = dqn.parse_sizes(opts.get("mlp_hidden_sizes", "64,64"))
        ours = dqn.build_q_network(space.shape, "float32", n, opts["network_header_type"], sizes, opts["dueling"])
    else:
        ours = pg.build_model(4, n, opts["hidden_units"], "softmax")
    ours.set_weights(model.base_model.get_weights())
    diff = float(np.abs(ours(obs).numpy() - logits.numpy()).max())
    report[f"{name}/{opts.get('network_header_type', 'pg')}"] = {"max_abs_diff": diff, "logits_shape": list(logits.shape),
                                                                 "value_shape": list(value.shape)}
print(json.dumps(report))
sys.exit(0)
