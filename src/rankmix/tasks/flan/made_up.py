"""A generated FLAN-like suite for the tiny scale: SMoRA's 10 clusters, its three metric kinds, one or two
tasks per cluster, deterministic from a seed.

Every task reads short strings of the same symbols, so the tasks compete for the same features and differ
only in what they ask: copying vs reversing vs ciphering the same string, "first" vs "last" of the same
passage, "yes" for a contained symbol vs "yes" for a permutation. That makes multi-task interference real
(a low-rank adapter cannot serve them all equally), which is what SMoRA's rank routing is meant to relieve.
Records: ``{inputs, targets, task, domain, metric}``, as FLAN's test file.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

SYMBOLS = [chr(ord("a") + i) for i in range(12)]
_CAPITAL = {s: SYMBOLS[(7 * i + 5) % len(SYMBOLS)] for i, s in enumerate(SYMBOLS)}  # a fixed, arbitrary map


def _shift(xs, n=1):
    return [SYMBOLS[(SYMBOLS.index(x) + n) % len(SYMBOLS)] for x in xs]


def _options(rng, right: str, wrong: str) -> str:
    opts = [right, wrong] if rng.random() < 0.5 else [wrong, right]
    return " OPTIONS : " + " | ".join(opts)


def _task(rng: random.Random, name: str, xs: list[str]) -> tuple[str, str]:
    """(inputs, targets) of one record of task ``name`` on symbols ``xs``."""
    s = " ".join(xs)
    if name == "describe":
        return f"describe : {s}", f"item {xs[0]} has " + " and ".join(xs[1:])
    if name == "encode":
        return f"encode : {s}", " ".join(_shift(xs, 3))
    if name == "decode":
        return f"decode : {s}", " ".join(_shift(xs, -3))
    if name == "next":
        right, wrong = _shift(xs[-1:])[0], _shift(xs[-1:], 5)[0]
        return f"next : {s}" + _options(rng, right, wrong), right
    if name == "mood":
        up = sum(SYMBOLS.index(x) < 6 for x in xs) * 2 >= len(xs)
        return f"mood : {s}" + _options(rng, "positive", "negative"), "positive" if up else "negative"
    if name == "first":
        return f"passage : {s} question : which", xs[0]
    if name == "last":
        return f"story : {s} question : which", xs[-1]
    if name == "capital":
        return f"capital : {xs[0]}", _CAPITAL[xs[0]]
    if name == "refer":
        return f"refer : {s} it" + _options(rng, xs[1], xs[0]), xs[1]
    if name == "same":
        other = xs[::-1] if rng.random() < 0.5 else _shift(xs)
        return f"same : {s} | {' '.join(other)}" + _options(rng, "yes", "no"), "yes" if other == xs[::-1] else "no"
    if name == "entail":
        probe = rng.choice(SYMBOLS)
        return f"premise : {s} hypothesis : {probe}" + _options(rng, "yes", "no"), "yes" if probe in xs else "no"
    raise ValueError(name)


# task → (cluster, metric, min length, max length)
TASKS: dict[str, tuple[str, str, int, int]] = {
    "describe": ("struct to text", "rouge", 3, 5),
    "encode": ("translation", "bleu", 4, 6),
    "decode": ("translation", "bleu", 4, 6),
    "next": ("commonsense", "em", 2, 5),
    "mood": ("sentiment", "em", 3, 6),
    "first": ("reading comp", "em", 3, 6),
    "capital": ("closed_book QA", "em", 1, 1),
    "refer": ("coreference", "em", 2, 4),
    "last": ("read.comp.w:commonsense", "em", 3, 6),
    "same": ("paraphrase", "em", 3, 5),
    "entail": ("nli", "em", 3, 6),
}


def generate_flan_like(tasks: list[str], n_per_task: int, seed: int, **_unused) -> Iterator[dict]:
    """``n_per_task`` records per task, interleaved, from ``random.Random(seed)``."""
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown FLAN-like task {unknown[0]!r}; available: {', '.join(TASKS)}")
    rng = random.Random(seed)
    for _ in range(n_per_task):
        for name in tasks:
            domain, metric, lo, hi = TASKS[name]
            xs = [rng.choice(SYMBOLS) for _ in range(rng.randint(lo, hi))]
            inputs, targets = _task(rng, name, xs)
            yield {"inputs": inputs, "targets": targets, "task": name, "domain": domain, "metric": metric}


