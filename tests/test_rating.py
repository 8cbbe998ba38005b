"""The rating page of MoSLoRA Tab. 6: blind left/right pairs, votes kept as given, and the table of all raters'
votes; one round clicked through in a real headless Chromium."""

import csv
import json
import shutil
import threading

import pytest
from PIL import Image

from conftest import REPO
from rankmix import rating, tables

CRITERIA = [{"name": "subject similarity", "label": "Sub-simi", "question": "Which shows the subject better?"},
            {"name": "prompt consistency", "label": "Pro-cons", "question": "Which follows the prompt better?"}]
SPEC = {"first": {"method": "MoSLoRA"}, "second": {"method": "LoRA"}, "n_prompts": 3, "seed": 0, "criteria": CRITERIA}


def _table_dir(tmp_path):
    """A table folder with two finished runs whose images differ by colour (first: red, second: blue)."""
    table = tmp_path / "moslora-6"
    prompts = [f"A picture of a ikat cat {w}" for w in ("in the snow", "on the beach", "in the jungle", "wet")]
    refs = tmp_path / "refs"
    refs.mkdir()
    Image.new("RGB", (8, 8), (0, 255, 0)).save(refs / "00.png")
    for key, method, colour in (("moslora", "MoSLoRA", (255, 0, 0)), ("lora", "LoRA", (0, 0, 255))):
        run_dir = tmp_path / "runs" / key
        (run_dir / "images").mkdir(parents=True)
        images = []
        for i, p in enumerate(prompts):
            Image.new("RGB", (8, 8), colour).save(run_dir / "images" / f"{i:03d}_0.png")
            images.append({"prompt": p, "file": f"{i:03d}_0.png"})
        (run_dir / "images" / "index.json").write_text(json.dumps({"references": [str(refs / "00.png")],
                                                                    "images": images}))
        (table / "runs").mkdir(parents=True, exist_ok=True)
        (table / "runs" / f"{key}.json").write_text(json.dumps({
            "status": "ok", "run": {"key": key, "scale": "tiny", "run_dir": str(run_dir)}, "metrics": {},
            "config": {"table": {"id": "moslora-6", "match": {"method": method}, "cells": [], "ratings": SPEC,
                                 "paper_csv": "moslora_table6.csv"}}}))
    return table


def test_pairs_are_blind_and_votes_become_the_first_methods_outcomes(tmp_path):
    table = _table_dir(tmp_path)
    pairs = rating.write_pairs(table, SPEC)
    manifest = json.loads(pairs.read_text())
    assert len(manifest["pairs"]) == 3 and all((pairs.parent / p["first"]).is_file() for p in manifest["pairs"])
    session = rating.RatingSession(pairs, "ann")
    q = session.next_question()
    assert q["number"] == 1 and q["total"] == 6 and "MoSLoRA" not in json.dumps(q) and "lora" not in json.dumps(q).lower()
    first_left = rating.first_on_left("ann", q["pair"])
    red_side = "left" if first_left else "right"
    assert Image.open(session.image(q["pair"], red_side)).getpixel((0, 0)) == (255, 0, 0)
    session.record(q["pair"], q["criterion"], red_side)      # the first method's image chosen: a win
    assert session.next_question()["number"] == 2             # resumes after the answered question
    again = rating.RatingSession(pairs, "ann")                 # a new session of the same rater goes on
    assert again.next_question()["number"] == 2
    rows = list(csv.DictReader(open(table / "ratings" / "ann.csv")))
    assert rows[0]["outcome"] == "win" and rows[0]["choice"] == red_side
    assert [rating.outcome(c, True) for c in rating.CHOICES] == ["win", "tie", "loss"]
    assert [rating.outcome(c, False) for c in rating.CHOICES] == ["loss", "tie", "win"]
    with pytest.raises(ValueError):
        session.record(q["pair"], q["criterion"], "both")


def _votes(path, rater, outcomes):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=rating.FIELDS)
        w.writeheader()
        for i, (criterion, o) in enumerate(outcomes):
            w.writerow({"rater": rater, "pair": i % 4, "prompt": "p", "criterion": criterion, "left": "", "right": "",
                        "choice": "", "outcome": o})


def test_the_table_is_win_tie_loss_delta_with_fleiss_kappa(tmp_path):
    from statsmodels.stats.inter_rater import fleiss_kappa

    table = _table_dir(tmp_path)
    (table / "ratings").mkdir()
    sub = "subject similarity"
    a = [(sub, o) for o in ("win", "win", "tie", "loss")]
    b = [(sub, o) for o in ("win", "tie", "tie", "loss")]
    _votes(table / "ratings" / "a.csv", "a", a)
    _votes(table / "ratings" / "b.csv", "b", b)
    s = rating.summarise(table / "ratings", CRITERIA)[sub]
    assert (s["win"], s["tie"], s["loss"], s["delta"]) == (37.5, 37.5, 25.0, 12.5)
    assert s["kappa"] == pytest.approx(fleiss_kappa([[2, 0, 0], [1, 1, 0], [0, 2, 0], [0, 0, 2]]))
    md = tables.build_table("moslora-6", tmp_path, REPO / "results" / "paper").read_text()
    assert "| Sub-simi Win | 37.50 / 23.1 |" in md and "| Sub-simi Delta | 12.50 / +6.6 |" in md
    assert "Pro-cons Win | missing" in md and "Fleiss' kappa, 2 raters, 8 votes" in md


def test_a_bad_rating_file_is_named(tmp_path):
    (tmp_path / "x.csv").write_text("rater,pair\nann,1\n")
    with pytest.raises(Exception, match=r"x.csv:2: not a rating row"):
        rating.read_votes(tmp_path)


def test_one_rating_round_in_a_headless_chromium(tmp_path):
    from playwright.sync_api import sync_playwright

    browser_path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser_path, "the browser test needs Chromium (apt-get install chromium)"
    table = _table_dir(tmp_path)
    pairs = rating.write_pairs(table, SPEC)
    server = rating.serve(pairs, "bot", port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    clicks = {"subject similarity": "tie", "prompt consistency": "left"}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(url)
            for n in range(1, 7):
                page.wait_for_function(f"document.getElementById('progress').textContent.startsWith('Question {n} ')")
                for side in ("#left", "#right"):  # the question shows only once both images are on screen
                    assert page.locator(side).evaluate("img => img.complete && img.naturalWidth") == 8
                assert page.locator("#vote-tie").is_enabled()
                question = page.locator("#question").text_content()
                criterion = "subject similarity" if "subject" in question else "prompt consistency"
                page.click(f"#vote-{clicks[criterion]}")
            page.wait_for_selector("#done", state="visible")
            browser.close()
    finally:
        server.shutdown()
    rows = list(csv.DictReader(open(table / "ratings" / "bot.csv")))
    assert len(rows) == 6
    for r in rows:
        expected = "tie" if r["criterion"] == "subject similarity" else (
            "win" if rating.first_on_left("bot", int(r["pair"])) else "loss")
        assert r["outcome"] == expected and r["choice"] == clicks[r["criterion"]]
    s = rating.summarise(table / "ratings", CRITERIA)
    assert s["subject similarity"]["tie"] == 100.0
    assert s["prompt consistency"]["win"] + s["prompt consistency"]["loss"] == 100.0
