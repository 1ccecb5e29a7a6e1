"""A small synthetic parallel corpus in tensorflow/nmt's file layout, for tests and the demo.

The "translation" maps each source word to its own target word (a fixed dictionary)
and keeps the order, so a small attention model learns it in a few hundred steps and
its output can be checked exactly.
"""

from __future__ import annotations

import gzip
import os
import random

SRC_WORDS = "a man woman dog cat rides walks sees big small red blue bike street park ball".split()


def translate_word(w: str) -> str:
    return w.upper() + "_"


def sentence(rng: random.Random, min_len: int = 3, max_len: int = 8) -> str:
    return " ".join(rng.choice(SRC_WORDS) for _ in range(rng.randint(min_len, max_len)))


def reference(src: str) -> str:
    return " ".join(translate_word(w) for w in src.split())


def write_corpus(directory: str, src: str = "src", tgt: str = "tgt", sizes: dict[str, int] | None = None,
                 seed: int = 0, gz: bool = False, vocab: bool = True) -> dict[str, str]:
    """Write train/dev/test `prefix.src` and `prefix.tgt` (and vocab.*) under `directory`; returns the prefixes."""
    rng = random.Random(seed)
    sizes = sizes or {"train": 2000, "dev": 50, "test": 50}
    os.makedirs(directory, exist_ok=True)
    prefixes = {}
    for split, n in sizes.items():
        lines = [sentence(rng) for _ in range(n)]
        prefix = os.path.join(directory, split)
        for lang, rows in ((src, lines), (tgt, [reference(l) for l in lines])):
            path = f"{prefix}.{lang}" + (".gz" if gz else "")
            opener = gzip.open if gz else open
            with opener(path, "wt", encoding="utf-8") as f:
                f.write("\n".join(rows) + "\n")
        prefixes[split] = prefix
    if vocab:
        prefix = os.path.join(directory, "vocab")
        with open(f"{prefix}.{src}", "w") as f:
            f.write("\n".join(["<unk>", "<s>", "</s>"] + SRC_WORDS) + "\n")
        with open(f"{prefix}.{tgt}", "w") as f:
            f.write("\n".join(["<unk>", "<s>", "</s>"] + [translate_word(w) for w in SRC_WORDS]) + "\n")
        prefixes["vocab"] = prefix
    return prefixes
