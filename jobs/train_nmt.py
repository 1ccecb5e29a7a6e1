"""Train neural machine translation (tensorflow/nmt recipe) on Ray Train.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/train_nmt.py --src en --tgt de --train_prefix data/train ...
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "lib"))

from tfcluster.train_cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main("nmt"))
