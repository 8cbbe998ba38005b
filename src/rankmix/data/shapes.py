"""A generated image set for the tiny vision-language scale: coloured shapes on a canvas, VQA-style
questions and captions, deterministic from a seed, written in the formats of the real benchmarks.

Each image is a ``size`` × ``size`` RGB canvas cut into a 2 × 2 grid; one to three of its cells hold a shape
(square, circle or triangle) of one of four colours. Questions (answers depend on the image only):

- ``what color is the <shape>?`` (answer type "other"; asked when that shape is unique),
- ``how many shapes are there?`` (number),
- ``is there a <colour> <shape>?`` and ``is the <shape> on the left?`` (yes/no),
- ``what shape is at the <top|bottom> <left|right>?`` (other; the cell may be empty: "nothing"),
- ``where is the <shape>?`` (other: "top left" ...; asked when that shape is unique).

Each question has 10 annotator answers, as VQA v2: all the true answer, except that with probability
``noise`` one annotator gives another answer, so the leave-one-out accuracy and soft labels are exercised.
Each image has three reference captions (COCO has five), all naming every shape (``captions``): "a red square at
the top left and a blue circle at the bottom right", "Two shapes: a red square and a blue circle." and "A red
square is at the top left, a blue circle is at the bottom right." (case and punctuation as people write them:
the PTB tokenizer of the COCO evaluation lower-cases and drops punctuation).

The made-up copies the tasks read (``rankmix.data.coco_like``, ``rankmix.data.vl_like``, ``rankmix.data.llava_like``)
rename and re-encode what this writes into the real layouts. Files written under ``root``:
``images/<img_id>.png``; ``vqa/karpathy_{train,val,test}.json`` (``img_id, question_id, sent, label,
answer_type, question_type, is_topk_optimal``); ``vqa/v2_mscoco_{train,val}2014_annotations.json``
(``annotations: [{question_id, image_id, answers: [{answer, answer_confidence, answer_id}], answer_type,
question_type, multiple_choice_answer}]``; val holds the val and test questions); ``vqa/trainval_ans2label.json``;
``COCO/dataset_coco.json`` (``images: [{filename, cocoid, split, sentences: [{raw, tokens}]}]``); and
``scenes.json`` (``{img_id: {split, objects: [{shape, colour, cell}]}}``, what the GQA- and NLVR2-style writers
ask about, ``rankmix.data.shapes_compositional``).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np

from rankmix.atomic import one_writer

SHAPES = ("square", "circle", "triangle")
COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 80, 230), "yellow": (230, 210, 40)}
CELLS = {(0, 0): "top left", (0, 1): "top right", (1, 0): "bottom left", (1, 1): "bottom right"}
NUMBER_WORDS = {1: "1", 2: "2", 3: "3"}
COUNT_WORDS = {1: "One shape", 2: "Two shapes", 3: "Three shapes"}
SPLITS = ("train", "val", "test")


def draw(objects: list[dict], size: int) -> np.ndarray:
    """The RGB canvas (uint8) for ``[{shape, colour, cell: (row, col)}]``."""
    img = np.full((size, size, 3), 16, dtype=np.uint8)
    half = size // 2
    yy, xx = np.mgrid[0:half, 0:half]
    c, r = (half - 1) / 2, half * 0.38
    masks = {"square": (abs(yy - c) <= r) & (abs(xx - c) <= r),
             "circle": (yy - c) ** 2 + (xx - c) ** 2 <= r ** 2,
             "triangle": (yy >= c - r) & (yy <= c + r) & (abs(xx - c) <= (yy - (c - r)) / 2)}
    for o in objects:
        row, col = o["cell"]
        patch = img[row * half:(row + 1) * half, col * half:(col + 1) * half]
        patch[masks[o["shape"]]] = COLOURS[o["colour"]]
    return img


def captions(objects: list[dict]) -> list[str]:
    """Three reference captions of ``objects``, shapes in reading order (top left first)."""
    objs = sorted(objects, key=lambda o: o["cell"])
    where = [f"a {o['colour']} {o['shape']} at the {CELLS[o['cell']]}" for o in objs]
    what = [f"a {o['colour']} {o['shape']}" for o in objs]
    sentence = ", ".join(f"{w} is at the {CELLS[o['cell']]}" for w, o in zip(what, objs, strict=True))
    return [" and ".join(where), f"{COUNT_WORDS[len(objs)]}: {' and '.join(what)}.",
            sentence[0].upper() + sentence[1:] + "."]


def _questions(rng: random.Random, objects: list[dict]) -> list[tuple[str, str, str, str]]:
    """(question, answer, answer_type, question_type) about ``objects``."""
    by_shape = Counter(o["shape"] for o in objects)
    qs = [("how many shapes are there?", NUMBER_WORDS[len(objects)], "number", "how many")]
    unique = [o for o in objects if by_shape[o["shape"]] == 1]
    if unique:
        o = rng.choice(unique)
        qs.append((f"what color is the {o['shape']}?", o["colour"], "other", "what color is the"))
        left = o["cell"][1] == 0
        qs.append((f"is the {o['shape']} on the left?", "yes" if left else "no", "yes/no", "is the"))
        qs.append((f"where is the {o['shape']}?", CELLS[o["cell"]], "other", "where is the"))
    shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
    present = any(o["shape"] == shape and o["colour"] == colour for o in objects)
    qs.append((f"is there a {colour} {shape}?", "yes" if present else "no", "yes/no", "is there a"))
    cell = rng.choice(list(CELLS))
    at = next((o["shape"] for o in objects if o["cell"] == cell), "nothing")
    qs.append((f"what shape is at the {CELLS[cell]}?", at, "other", "what shape is"))
    return qs


def _annotators(rng: random.Random, answer: str, answer_type: str, noise: float) -> list[str]:
    answers = [answer] * 10
    if rng.random() < noise:
        pool = {"yes/no": ["yes", "no"], "number": ["1", "2", "3"]}.get(answer_type,
                                                                       [*COLOURS, *SHAPES, *CELLS.values()])
        answers[rng.randrange(10)] = rng.choice([a for a in pool if a != answer])
    return answers


def soft_label(answers: list[str]) -> dict[str, float]:
    """VL-T5/LXMERT soft scores from annotator counts: 1 → 0.3, 2 → 0.6, 3 → 0.9, 4+ → 1."""
    return {a: min(1.0, round(0.3 * n, 1)) for a, n in Counter(answers).items()}


def generate_shapes(root: Path, n_images: dict[str, int], size: int = 32, seed: int = 0, noise: float = 0.2) -> Path:
    """Write the data set under ``root`` (skipped when ``root/done.json`` says it holds these settings); runs side
    by side wait for the first to write it."""
    with one_writer(root):
        return _generate_shapes(Path(root), n_images, size, seed, noise)


def _generate_shapes(root: Path, n_images: dict[str, int], size: int, seed: int, noise: float) -> Path:
    from PIL import Image

    settings = {"n_images": n_images, "size": size, "seed": seed, "noise": noise}
    stamp = root / "done.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == settings:
        return root
    rng = random.Random(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    records = {s: [] for s in SPLITS}
    annotations = {"train": [], "val": []}
    coco, vocab, qid, image_id, scenes = [], Counter(), 0, 0, {}
    for split in SPLITS:
        for _ in range(int(n_images.get(split, 0))):
            image_id += 1
            img_id = f"SHAPES_{split}_{image_id:06d}"
            cells = rng.sample(list(CELLS), rng.randint(1, 3))
            objects = [{"shape": rng.choice(SHAPES), "colour": rng.choice(list(COLOURS)), "cell": c} for c in cells]
            Image.fromarray(draw(objects, size)).save(root / "images" / f"{img_id}.png")
            scenes[img_id] = {"split": split, "objects": objects}
            coco.append({"filename": f"{img_id}.png", "cocoid": image_id, "split": split,
                         "sentences": [{"raw": c, "tokens": c.lower().replace(",", "").replace(":", "")
                                        .rstrip(".").split()} for c in captions(objects)]})
            for sent, answer, a_type, q_type in _questions(rng, objects):
                qid += 1
                answers = _annotators(rng, answer, a_type, noise)
                vocab.update([answer])
                records[split].append({"img_id": img_id, "question_id": qid, "sent": sent, "label": soft_label(answers),
                                       "answer_type": a_type, "question_type": q_type, "is_topk_optimal": True})
                annotations["train" if split == "train" else "val"].append({
                    "question_id": qid, "image_id": image_id, "answer_type": a_type, "question_type": q_type,
                    "multiple_choice_answer": answer,
                    "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)]})
    (root / "vqa").mkdir(exist_ok=True)
    (root / "COCO").mkdir(exist_ok=True)
    for split in SPLITS:
        (root / "vqa" / f"karpathy_{split}.json").write_text(json.dumps(records[split]))
    for split, anns in annotations.items():
        (root / "vqa" / f"v2_mscoco_{split}2014_annotations.json").write_text(json.dumps({"annotations": anns}))
    (root / "vqa" / "trainval_ans2label.json").write_text(json.dumps({a: i for i, a in enumerate(sorted(vocab))}))
    (root / "COCO" / "dataset_coco.json").write_text(json.dumps({"images": coco, "dataset": "coco"}))
    (root / "scenes.json").write_text(json.dumps(scenes))
    stamp.write_text(json.dumps(settings))
    return root
