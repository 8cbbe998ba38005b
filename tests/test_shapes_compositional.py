"""GQA- and NLVR2-style data over the generated shapes: answers and labels follow the scenes, in VL-T5's layouts."""

import json
import random

import pytest

from rankmix.data.shapes import generate_shapes
from rankmix.data.shapes_compositional import generate_compositional, gqa_questions, nlvr_statement
from rankmix.errors import DataError

SCENE = [{"shape": "circle", "colour": "red", "cell": (0, 0)}, {"shape": "square", "colour": "blue", "cell": (0, 1)},
         {"shape": "triangle", "colour": "red", "cell": (1, 0)}]


def test_gqa_answers_follow_the_scene():
    seen = {}
    for seed in range(40):
        seen.update(gqa_questions(random.Random(seed), SCENE))
    cell = {"red circle": (0, 0), "blue square": (0, 1), "red triangle": (1, 0)}
    offset = {"left of": (0, -1), "right of": (0, 1), "above": (-1, 0), "below": (1, 0)}
    verified = 0
    for q, a in seen.items():
        for x in cell:
            for rel, (dr, dc) in offset.items():
                for y in cell:
                    if q == f"is the {x} {rel} the {y}?":  # x sits in the cell next to y in that direction
                        assert a == ("yes" if cell[x] == (cell[y][0] + dr, cell[y][1] + dc) else "no"), q
                        verified += 1
    assert verified >= 3 and "yes" in seen.values() and "no" in seen.values()
    assert seen.get("what color is the shape right of the red circle?", "blue") == "blue"
    assert seen.get("what shape is below the red circle?", "triangle") == "triangle"
    assert seen.get("are the circle and the triangle the same color?", "yes") == "yes"
    assert seen.get("are the circle and the square the same color?", "no") == "no"
    assert all(a == "yes" for q, a in seen.items() if q.startswith("is there a red shape"))


def test_nlvr_statements_are_true_or_false_as_asked():
    left, right = SCENE, [{"shape": "circle", "colour": "yellow", "cell": (1, 1)}]
    rng = random.Random(0)
    for want in (True, False) * 20:
        sent = nlvr_statement(rng, left, right, want)
        if sent == "the left image has more shapes than the right image.":
            assert want
        if sent == "there are four shapes in total.":
            assert want
        if sent == "both images contain a red shape.":
            assert not want
        if sent == "exactly one image contains a circle.":
            assert not want


def test_generated_files_are_deterministic_and_balanced(tmp_path):
    roots = []
    for name in ("a", "b"):
        root = generate_shapes(tmp_path / name, {"train": 30, "val": 4, "test": 6}, seed=5)
        roots.append(generate_compositional(root, seed=1))
    a, b = roots
    for rel in ("GQA/train.json", "GQA/testdev.json", "nlvr/train.json", "nlvr/test.json", "GQA/trainval_ans2label.json"):
        assert (a / rel).read_text() == (b / rel).read_text()
    scenes = json.loads((a / "scenes.json").read_text())
    gqa = json.loads((a / "GQA" / "train.json").read_text())
    assert gqa and all(r["img_id"] in scenes and scenes[r["img_id"]]["split"] == "train" for r in gqa)
    assert {"img_id", "question_id", "sent", "label"} <= set(gqa[0])
    vocab = json.loads((a / "GQA" / "trainval_ans2label.json").read_text())
    assert all(next(iter(r["label"])) in vocab for r in gqa)
    pairs = json.loads((a / "nlvr" / "train.json").read_text())
    assert len(pairs) >= 25 and {"identifier", "img0", "img1", "sent", "label", "uid"} <= set(pairs[0])
    assert abs(sum(p["label"] for p in pairs) - len(pairs) / 2) <= 2  # true and false equally often
    assert all(scenes[p["img0"]]["split"] == scenes[p["img1"]]["split"] == "train" for p in pairs)


def test_a_set_without_scenes_says_how_to_regenerate(tmp_path):
    with pytest.raises(DataError, match="scenes.json not found.*delete"):
        generate_compositional(tmp_path)
