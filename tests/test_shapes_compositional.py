"""GQA- and NLVR2-style data over the generated shapes: answers and labels follow the scenes, in VL-T5's layouts."""

import json
import random

from rankmix.data.shapes_compositional import gqa_questions, nlvr_statement
from rankmix.data.vl_like import FOLDERS, write_vl_like

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


def test_the_made_up_bundle_is_deterministic_and_balanced(tmp_path):
    """GQA and NLVR2 files of ``rankmix.data.vl_like`` (what the tiny scale and the rehearsal read): the same for a
    seed, questions about their own split's images, true and false statements equally often."""
    counts = {"coco": {"train": 2, "restval": 0, "val": 1, "test": 1}, "gqa": {"train": 30, "valid": 2, "testdev": 4},
              "nlvr": {"train": 15, "dev": 2, "test1": 3}}
    for name in ("a", "b"):
        write_vl_like(tmp_path / name, counts, size=16, seed=5)
    a, b = (tmp_path / name / FOLDERS["data_dir"] for name in ("a", "b"))
    for rel in ("GQA/train.json", "GQA/testdev.json", "nlvr/train.json", "nlvr/test.json", "GQA/trainval_ans2label.json"):
        assert (a / rel).read_text() == (b / rel).read_text()
    gqa = {s: json.loads((a / "GQA" / f"{s}.json").read_text()) for s in ("train", "testdev")}
    images = tmp_path / "a" / FOLDERS["gqa"]
    assert gqa["train"] and all((images / f"{r['img_id']}.jpg").is_file() for recs in gqa.values() for r in recs)
    assert {r["img_id"][0] for r in gqa["testdev"]} == {"n"} and not any(r["img_id"][0] == "n" for r in gqa["train"])
    assert {"img_id", "question_id", "sent", "label"} == set(gqa["train"][0])
    vocab = json.loads((a / "GQA" / "trainval_ans2label.json").read_text())
    assert all(next(iter(r["label"])) in vocab for r in gqa["train"])
    pairs = json.loads((a / "nlvr" / "train.json").read_text())
    assert len(pairs) >= 25 and {"identifier", "img0", "img1", "sent", "label", "uid"} == set(pairs[0])
    assert abs(sum(p["label"] for p in pairs) - len(pairs) / 2) <= 2  # true and false equally often
    nlvr_images = {p.stem for p in (tmp_path / "a" / FOLDERS["nlvr"] / "train").rglob("*.png")}
    assert all(p["img0"] in nlvr_images and p["img1"] in nlvr_images for p in pairs)
