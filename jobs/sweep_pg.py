"""Ray Tune sweep over REINFORCE (policy gradient) hyperparameters.

    python jobs/sweep_pg.py --env CartPole-v0 --num_samples 8 --scheduler asha --grace_period 2 \
        --total_episodes 2000 --storage_path runs/sweeps --name pg-sweep --export_best --model_base_path models

Each trial is the REINFORCE algorithm of jobs/train_pg.py as a Ray Tune trainable; every
training iteration (--steps_per_stats updates) is one result. Workload flags given here
are fixed for every trial.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "lib"))

from tfcluster.sweep_cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main("pg"))
