"""What every benchmark ends with: its result printed as JSON and, with a path, written there."""

from __future__ import annotations

import json
import os
from typing import Any


def emit(result: Any, path: str | None) -> None:
    text = json.dumps(result, indent=2)
    print(text)
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            f.write(text + "\n")
