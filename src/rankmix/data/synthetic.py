"""A generated multi-task text dataset: small symbolic tasks a tiny LM can learn on a CPU.

Records have the FLAN-style fields ``{inputs, targets, task, domain, metric}`` so the same data module,
metrics and tables serve generated and real instruction data. Generation is deterministic for a seed.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

SYMBOLS = [chr(ord("a") + i) for i in range(12)]


def _shift(xs: list[str]) -> list[str]:
    return [SYMBOLS[(SYMBOLS.index(x) + 1) % len(SYMBOLS)] for x in xs]


TASKS: dict[str, Callable[[list[str]], list[str]]] = {
    "copy": lambda xs: list(xs),
    "reverse": lambda xs: xs[::-1],
    "sort": sorted,
    "shift": _shift,
    "first": lambda xs: xs[:1],
    "last": lambda xs: xs[-1:],
}


def vocabulary() -> list[str]:
    """Every word the generated records can contain."""
    return [*TASKS, ":", *SYMBOLS]


def generate_records(tasks: list[str], n_per_task: int, min_len: int, max_len: int, seed: int) -> Iterator[dict]:
    """``n_per_task`` records per task, interleaved task by task, from ``random.Random(seed)``."""
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown generated task {unknown[0]!r}; available: {', '.join(TASKS)}")
    rng = random.Random(seed)
    for _ in range(n_per_task):
        for task in tasks:
            xs = [rng.choice(SYMBOLS) for _ in range(rng.randint(min_len, max_len))]
            yield {
                "inputs": f"{task} : {' '.join(xs)}",
                "targets": " ".join(TASKS[task](xs)),
                "task": task,
                "domain": "generated",
                "metric": "em",
            }
