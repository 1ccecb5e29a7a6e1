"""Ray Tune sweep over Deep Q-Learning hyperparameters.

    python jobs/sweep_dqn.py --env CartPole-v1 --num_samples 8 --scheduler asha --grace_period 5 \
        --t_train_max 50000 --storage_path runs/sweeps --name dqn-sweep --export_best --model_base_path models

Each trial is the DQN algorithm of jobs/train_dqn.py (with the env's preset) as a Ray Tune
trainable; every training iteration (--steps_per_stats env steps) is one result. Workload
flags given here are fixed for every trial.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "lib"))

from tfcluster.sweep_cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main("dqn"))
