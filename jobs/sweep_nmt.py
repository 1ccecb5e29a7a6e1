"""Ray Tune sweep over nmt hyperparameters, each trial running the train loop of jobs/train_nmt.py.

    python jobs/sweep_nmt.py --num_samples 8 --scheduler asha [workload flags: fixed for every trial] \
        --storage_path runs/sweeps --name nmt-sweep --export_best --model_base_path models
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "lib"))

from tfcluster.sweep_cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main("nmt"))
