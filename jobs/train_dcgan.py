"""Train DCGAN (DCGAN-tensorflow's flags) on Ray Train, or visualize a trained run.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/train_dcgan.py --dataset anime_faces --data_dir data --input_height 96 \
        --output_height 48 --crop --num_workers 2 --out_dir runs/anime --model_base_path models
    python jobs/train_dcgan.py --out_dir runs/anime --visualize
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "lib"))

from tfcluster.train_cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main("dcgan"))
