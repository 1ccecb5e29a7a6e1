"""Train REINFORCE policy gradient (the book's chapter 21) with env runners on Ray.

    python jobs/train_pg.py --env CartPole-v0 --seed 1 --out_dir runs/pg --model_base_path models
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/train_pg.py --env CartPole-v0 --num_env_runners 2 --out_dir /tmp/runs/pg
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "lib"))

from tfcluster.train_cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main("pg"))
