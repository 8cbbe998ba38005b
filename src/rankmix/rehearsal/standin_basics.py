"""What the stand-ins of ``rankmix.rehearsal.standins`` (transformers models) and ``rankmix.rehearsal.pipelines``
(diffusers pipelines) share: their size (``LAYERS`` layers, widths divided by ``WIDTH_DIVISOR``), the seed of their
weights, the built-in English corpus their tokenizers are trained on, and writing a stand-in once."""

from __future__ import annotations

import json
import random
from pathlib import Path

from rankmix.atomic import atomic_folder

WIDTH_DIVISOR = 16  # every model and feed-forward width is divided by this; head counts are kept
LAYERS = 2  # depth of every stack (BART: encoder and decoder)
SEED = 0
WIDTHS = ("reduced", "full")
_NAMES = ["Anna", "Ben", "Carla", "David", "Emma", "Frank", "Grace", "Henry", "Iris", "Jack", "Lena", "Mark"]
_NOUNS = ["man", "woman", "child", "dog", "cat", "horse", "bird", "car", "bus", "train", "bicycle", "table",
          "chair", "window", "door", "tree", "flower", "river", "mountain", "street", "kitchen", "plate",
          "pizza", "apple", "banana", "sandwich", "book", "phone", "computer", "ball", "kite", "boat", "sign",
          "shirt", "hat", "umbrella", "clock", "bed", "road", "building", "question", "answer", "picture"]
_ADJECTIVES = ["red", "blue", "green", "yellow", "white", "black", "small", "large", "old", "young", "happy",
               "wooden", "bright", "dark", "quiet", "busy", "empty", "tall", "short", "beautiful"]
_VERBS = ["holds", "watches", "carries", "finds", "likes", "opens", "paints", "reads", "sees", "throws",
          "cleans", "follows", "buys", "sells", "builds", "moves"]
_PLACES = ["in the park", "on the beach", "near the station", "at the market", "under the bridge",
           "in the kitchen", "on the table", "by the window", "across the street", "behind the house"]
_TEMPLATES = [
    "The {adj} {noun} {verb} the {noun2} {place}.",
    "A {adj} {noun} is standing {place}.",
    "{name} {verb} a {adj} {noun} every {day}.",
    "What color is the {noun} {place}?",
    "How many {noun}s are there in the picture? There are {num}.",
    "Is the {noun} {adj}? Yes, it is.",
    "Is there a {noun} {place}? No, there is not.",
    "On {day}, {name} paid ${num}.{cents} for {num2} {noun}s.",
    "Question: which {noun} {verb} the {noun2}? Answer: the {adj} one.",
    "\"Look at the {noun}!\" said {name}; the {noun2} was {adj}, too.",
    "In {year}, {num2} people (and {num} dogs) lived {place}.",
    "{name}'s {noun} isn't {adj} - it's very {adj2}.",
]
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_CORPUS_SIZE = 400
_TRAIN_VOCAB = 8000  # an upper bound: training stops when no pair occurs twice


def corpus() -> list[str]:
    """The built-in English text the stand-in tokenizers are trained on (fixed): lines of one to three made-up
    sentences, then the digits and the ASCII punctuation."""
    rng = random.Random(SEED)
    lines = [" ".join(_sentence(rng) for _ in range(rng.randint(1, 3))) for _ in range(_CORPUS_SIZE)]
    return [*lines, "0 1 2 3 4 5 6 7 8 9 10 100 1000", " ".join("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")]


def _sentence(rng: random.Random) -> str:
    return rng.choice(_TEMPLATES).format(
        name=rng.choice(_NAMES), noun=rng.choice(_NOUNS), noun2=rng.choice(_NOUNS),
        adj=rng.choice(_ADJECTIVES), adj2=rng.choice(_ADJECTIVES), verb=rng.choice(_VERBS),
        place=rng.choice(_PLACES), day=rng.choice(_DAYS),
        num=rng.randint(2, 99), num2=rng.randint(2, 999), cents=f"{rng.randint(0, 99):02d}",
        year=rng.randint(1900, 2024))


def train_bpe(pre_tokenizer, alphabet: list[str], normalizer=None, **trainer) -> tuple[list[str], list[tuple[str, str]]]:
    """The tokens (by id) and merges of a BPE trained on ``corpus()`` after ``normalizer`` and ``pre_tokenizer``
    (``trainer``: more ``BpeTrainer`` settings, e.g. CLIP's ``end_of_word_suffix``)."""
    from tokenizers import Tokenizer, models, trainers

    tok = Tokenizer(models.BPE(**{k: v for k, v in trainer.items() if k == "end_of_word_suffix"}))
    tok.pre_tokenizer, tok.normalizer = pre_tokenizer, normalizer
    tok.train_from_iterator(corpus(), trainers.BpeTrainer(
        vocab_size=_TRAIN_VOCAB, min_frequency=2, initial_alphabet=alphabet, show_progress=False, **trainer))
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return sorted(model["vocab"], key=model["vocab"].get), merges


def layout_vocab(fixed: dict[int, str], tokens: list[str], size: int) -> dict[str, int]:
    """``fixed`` tokens at their ids, ``tokens`` in order in the other ids, then unreachable filler up to
    ``size``."""
    taken = set(fixed.values())
    free = iter([t for t in tokens if t not in taken])
    n = max(size, len(fixed) + len(tokens))
    return {(fixed[i] if i in fixed else next(free, f"<filler_{i}>")): i for i in range(n)}


def build_once(path: Path, write) -> Path:
    """``path``, written by ``write(tmp)`` whole or not at all (``rankmix.atomic.atomic_folder``), unless it exists."""
    if not path.is_dir():
        with atomic_folder(path) as own:
            write(own)
    return path
