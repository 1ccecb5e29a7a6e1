"""Train OCR of variable-length digit strings (CNN + LSTM + CTC) on Ray Train.

    python jobs/train_ocr.py --out_dir runs/ocr --model_base_path models
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/train_ocr.py --num_workers 2 --out_dir /tmp/runs/ocr --model_base_path /tmp/models
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "lib"))

from tfcluster.train_cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main("ocr"))
