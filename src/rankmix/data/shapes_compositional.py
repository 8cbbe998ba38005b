"""GQA-style compositional questions and NLVR2-style statements about image pairs, over the objects of the
generated shapes scenes (``rankmix.data.shapes``), for the made-up CLIP-BART multitask data
(``rankmix.data.vl_like``, routing functions §5).

- ``gqa_questions``: questions that take two steps over the scene: a relation then an attribute ("what color is
  the shape left of the blue circle?"), a relation to verify ("is the red square above the green triangle?"), an
  attribute comparison ("are the circle and the square the same color?") or a disjunction ("is there a red shape
  or a blue circle?"), each with its answer, which depends on the image only.
- ``nlvr_statement``: a statement about the two images of a pair ("both images contain a yellow shape.", "the left
  image has more shapes than the right image.") that is true or false as asked.

Deterministic in the ``random.Random`` given.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from rankmix.data.shapes import COLOURS, SHAPES

COUNT_WORDS = {0: "no", 1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}


def _name(o: dict) -> str:
    return f"{o['colour']} {o['shape']}"


def _unique(objects: list[dict], o: dict) -> bool:
    return sum(x["colour"] == o["colour"] and x["shape"] == o["shape"] for x in objects) == 1


def _neighbour(objects: list[dict], o: dict, relation: str) -> dict | None:
    """The object ``relation`` (left of / right of / above / below) of ``o``: same row or column, adjacent cell."""
    r, c = o["cell"]
    target = {"left of": (r, c - 1), "right of": (r, c + 1), "above": (r - 1, c), "below": (r + 1, c)}[relation]
    return next((x for x in objects if tuple(x["cell"]) == target), None)


def gqa_questions(rng: random.Random, objects: list[dict]) -> list[tuple[str, str]]:
    """(question, answer) pairs about one scene; every question names objects that are unique in it."""
    qs = []
    named = [o for o in objects if _unique(objects, o)]
    for o in named:
        for relation in ("left of", "right of", "above", "below"):
            other = _neighbour(objects, o, relation)
            if other is not None:
                if rng.random() < 0.5:
                    qs.append((f"what color is the shape {relation} the {_name(o)}?", other["colour"]))
                else:
                    qs.append((f"what shape is {relation} the {_name(o)}?", other["shape"]))
                break
    if len(named) >= 2:
        a, b = rng.sample(named, 2)
        relation = rng.choice(["left of", "right of", "above", "below"])
        truth = _neighbour(objects, b, relation) is a
        qs.append((f"is the {_name(a)} {relation} the {_name(b)}?", "yes" if truth else "no"))
        if a["shape"] != b["shape"] and sum(x["shape"] in (a["shape"], b["shape"]) for x in objects) == 2:
            qs.append((f"are the {a['shape']} and the {b['shape']} the same color?",
                       "yes" if a["colour"] == b["colour"] else "no"))
    colour, (c2, s2) = rng.choice(list(COLOURS)), (rng.choice(list(COLOURS)), rng.choice(SHAPES))
    truth = any(x["colour"] == colour for x in objects) or any(x["colour"] == c2 and x["shape"] == s2 for x in objects)
    qs.append((f"is there a {colour} shape or a {c2} {s2}?", "yes" if truth else "no"))
    return qs


def _statements(rng: random.Random) -> tuple[str, Callable[[list[dict], list[dict]], bool]]:
    """A random NLVR-style statement template and its truth function over (left objects, right objects)."""
    colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
    kind = rng.randrange(5)
    if kind == 0:
        n = rng.randint(2, 6)
        return f"there are {COUNT_WORDS[n]} shapes in total.", lambda a, b: len(a) + len(b) == n
    if kind == 1:
        return (f"both images contain a {colour} shape.",
                lambda a, b: any(o["colour"] == colour for o in a) and any(o["colour"] == colour for o in b))
    if kind == 2:
        return "the left image has more shapes than the right image.", lambda a, b: len(a) > len(b)
    if kind == 3:
        return (f"exactly one image contains a {shape}.",
                lambda a, b: any(o["shape"] == shape for o in a) != any(o["shape"] == shape for o in b))
    return (f"there is a {colour} {shape} in the right image.",
            lambda a, b: any(o["colour"] == colour and o["shape"] == shape for o in b))


def nlvr_statement(rng: random.Random, left: list[dict], right: list[dict], want: bool) -> str | None:
    """A statement about the pair whose truth is ``want`` (None when 50 draws find none)."""
    for _ in range(50):
        sent, truth = _statements(rng)
        if truth(left, right) == want:
            return sent
    return None
