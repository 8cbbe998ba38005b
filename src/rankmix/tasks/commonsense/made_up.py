"""A generated commonsense-style suite for the tiny scale: the 8 test sets of the LLM-Adapters protocol, in
their record format and instruction templates, with made-up content over a small world, deterministic
from a seed.

The world: 12 things with a fixed weight order, a fixed colour and a fixed use, and six people. Each set asks
something the content decides, so a model must read the question, not only the answer format:

- boolq: is thing X heavier than thing Y (the weight order);
- piqa: which of two things serves a purpose (the uses);
- social_i_qa: who holds what after a hand-over (read it from the context; 3 answers);
- hellaswag: the next number word of a count (4 endings);
- winogrande: the blank of "X is heavier than Y, so _ sinks first" (or lighter/floats);
- ARC-Easy: the colour of a thing (4 answers); ARC-Challenge: the heaviest of four things;
- openbookqa: which thing a person needs for a purpose (the uses, 4 answers).

Records: ``{instruction, input, output, answer}``, ``input`` empty, ``output`` = "the correct answer is <label>".
"""

from __future__ import annotations

import random
from collections.abc import Iterator

THINGS = ["pebble", "leaf", "cup", "shoe", "book", "lamp", "kettle", "chair", "drum", "bucket", "anvil", "boulder"]
COLOURS = ["red", "blue", "green", "yellow"]
PEOPLE = ["Ana", "Ben", "Cal", "Dee", "Eli", "Fay"]
NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"]
COLOUR = {t: COLOURS[(5 * i + 1) % len(COLOURS)] for i, t in enumerate(THINGS)}  # fixed, arbitrary
USES = ["drink", "read", "sit", "cook", "play", "carry"]
USE_OF = {"cup": "drink", "book": "read", "chair": "sit", "kettle": "cook", "drum": "play", "bucket": "carry"}
WEIGHT = {t: i for i, t in enumerate(THINGS)}  # list order = weight order

DATASETS = ("boolq", "piqa", "social_i_qa", "hellaswag", "winogrande", "ARC-Easy", "ARC-Challenge", "openbookqa")


def _choices(rng: random.Random, right: str, wrong: list[str]) -> tuple[list[str], int]:
    """``right`` among ``wrong`` in a random order; returns (options, 1-based index of ``right``)."""
    opts = [right, *wrong]
    rng.shuffle(opts)
    return opts, opts.index(right) + 1


def _listed(prefix: str, opts: list[str], sep: str) -> str:
    return sep.join(f"{prefix}{i}: {o}" for i, o in enumerate(opts, 1))


def _fmt(label_prefix: str, n: int) -> str:
    return "/".join(f"{label_prefix}{i}" for i in range(1, n + 1))


def _record(rng: random.Random, name: str) -> tuple[str, str]:
    """(instruction, answer label) of one record of test set ``name``."""
    if name == "boolq":
        a, b = rng.sample(THINGS, 2)
        q = f"is the {a} heavier than the {b} or not?"
        return (f"Please answer the following question with true or false, question: {q}\n\n"
                "Answer format: true/false", "true" if WEIGHT[a] > WEIGHT[b] else "false")
    if name == "piqa":
        use = rng.choice(USES)
        right = next(t for t, u in USE_OF.items() if u == use)
        wrong = rng.choice([t for t in USE_OF if t != right])
        opts, k = _choices(rng, f"take the {right} .", [f"take the {wrong} ."])
        return (f"Please choose the correct solution to the question: how to {use} something\n\n"
                f"{_listed('Solution', opts, chr(10) * 2)}\n\nAnswer format: solution1/solution2", f"solution{k}")
    if name == "social_i_qa":
        giver, taker = rng.sample(PEOPLE, 2)
        thing, *others = rng.sample(THINGS, 3)
        opts, k = _choices(rng, f"the {thing}", [f"the {o}" for o in others])
        return (f"Please choose the correct answer to the question: {giver} gave the {thing} to {taker} . "
                f"What does {taker} hold now?\n\n{_listed('Answer', opts, ' ')}\n\n"
                f"Answer format: {_fmt('answer', 3)}", f"answer{k}")
    if name == "hellaswag":
        start = rng.randrange(len(NUMBERS) - 3)
        count = " ".join(NUMBERS[start:start + 3])
        right = NUMBERS[start + 3]
        opts, k = _choices(rng, right, rng.sample([n for n in NUMBERS if n != right], 3))
        return (f"Please choose the correct ending to complete the given sentence: Counting: {count}\n\n"
                f"{_listed('Ending', opts, ' ')}\n\nAnswer format: {_fmt('ending', 4)}", f"ending{k}")
    if name == "winogrande":
        a, b = rng.sample(THINGS, 2)
        heavier = rng.random() < 0.5
        sinks = rng.random() < 0.5
        first = a if heavier == sinks else b  # the heavier thing sinks first; the lighter one floats longer
        sentence = (f"The {a} is {'heavier' if heavier else 'lighter'} than the {b} , so the _ "
                    f"{'sinks first' if sinks else 'floats longer'} .")
        return (f"Please choose the correct answer to fill in the blank to complete the given sentence: "
                f"{sentence}\n\nOption1: {a} Option2: {b} Answer format: option1/option2",
                "option1" if first == a else "option2")
    if name == "ARC-Easy":
        thing = rng.choice(THINGS)
        opts, k = _choices(rng, COLOUR[thing], [c for c in COLOURS if c != COLOUR[thing]])
        return (f"Please choose the correct answer to the question: What colour is the {thing} ?\n\n"
                f"{_listed('Answer', opts, ' ')}\n\nAnswer format: {_fmt('answer', 4)}", f"answer{k}")
    if name == "ARC-Challenge":
        four = rng.sample(THINGS, 4)
        heaviest = max(four, key=WEIGHT.get)
        opts, k = _choices(rng, heaviest, [t for t in four if t != heaviest])
        return (f"Please choose the correct answer to the question: Which of these is the heaviest ?\n\n"
                f"{_listed('Answer', opts, ' ')}\n\nAnswer format: {_fmt('answer', 4)}", f"answer{k}")
    if name == "openbookqa":
        person, use = rng.choice(PEOPLE), rng.choice(USES)
        right = next(t for t, u in USE_OF.items() if u == use)
        opts, k = _choices(rng, right, rng.sample([t for t in THINGS if t != right], 3))
        return (f"Please choose the correct answer to the question: {person} wants to {use} . What helps ?\n\n"
                f"{_listed('Answer', opts, ' ')}\n\nAnswer format: {_fmt('answer', 4)}", f"answer{k}")
    raise ValueError(f"unknown commonsense-like set {name!r}; available: {', '.join(DATASETS)}")


def generate_commonsense_like(datasets: list[str], n_per_set: int, seed: int) -> Iterator[tuple[str, dict]]:
    """``n_per_set`` records per set, interleaved, as ``(set name, record)`` from ``random.Random(seed)``."""
    unknown = [d for d in datasets if d not in DATASETS]
    if unknown:
        raise ValueError(f"unknown commonsense-like set {unknown[0]!r}; available: {', '.join(DATASETS)}")
    rng = random.Random(seed)
    for _ in range(n_per_set):
        for name in datasets:
            instruction, label = _record(rng, name)
            yield name, {"instruction": instruction, "input": "", "output": f"the correct answer is {label}",
                         "answer": label}
