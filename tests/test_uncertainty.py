"""Standard errors over the test items, paired tests, and how tables show them (rankmix.uncertainty)."""

import csv
import math
import random

import numpy as np
import pytest
from scipy import stats

from rankmix import uncertainty as u
from rankmix.results import write_json_atomic
from rankmix.tables import build_table


def _made_up(n, seed, p=0.6):
    rng = random.Random(seed)
    return [100.0 * (rng.random() < p) for _ in range(n)]


def test_the_se_of_a_mean_is_lm_eval_s_closed_form():
    scores = _made_up(37, 1)
    with u.collecting() as c:
        u.record("em", list(range(37)), scores)
    e = c.entries("test/")["test/em"]
    # independently: sample std (ddof 1) / sqrt(n), as lm-evaluation-harness's mean_stderr
    mean = sum(scores) / len(scores)
    sd = math.sqrt(sum((x - mean) ** 2 for x in scores) / (len(scores) - 1))
    assert e["method"] == "mean" and e["n"] == 37
    assert e["se"] == pytest.approx(sd / math.sqrt(37), rel=1e-5)
    assert u.item_scores(e) == pytest.approx(scores)
    assert e["se"] == pytest.approx(stats.sem(scores), rel=1e-5)


def test_a_mean_over_tasks_has_the_stratified_se():
    a, b = _made_up(10, 2, 0.3), _made_up(30, 3, 0.8)
    with u.collecting() as c:
        u.record("avg", list(range(40)), a + b, ["a"] * 10 + ["b"] * 30)
    e = c.entries()["avg"]
    metric = (np.mean(a) + np.mean(b)) / 2
    assert u.item_scores(e).mean() == pytest.approx(metric, rel=1e-5)  # the scores' mean is the metric
    want = math.sqrt(np.var(a, ddof=1) / 10 + np.var(b, ddof=1) / 30) / 2  # Var(mean_a/2 + mean_b/2)
    assert e["se"] == pytest.approx(want, rel=1e-5)


def test_the_bootstrap_se_of_a_corpus_metric_matches_an_independent_bootstrap():
    rng = random.Random(4)
    hits, totals = [rng.randint(0, 5) for _ in range(50)], [5] * 50

    def corpus(idx):  # a ratio of sums, not a mean of ratios: a corpus metric
        return 100.0 * sum(hits[i] for i in idx) / sum(totals[i] for i in idx)

    with u.collecting() as c:
        u.record_corpus("ratio", list(range(50)), corpus)
    e = c.entries()["ratio"]
    gen = np.random.default_rng(u.BOOTSTRAP_SEED)
    reps = [corpus(gen.integers(0, 50, 50)) for _ in range(u.BOOTSTRAP_ITERS)]
    assert e["method"] == "bootstrap" and e["iters"] == u.BOOTSTRAP_ITERS
    assert e["se"] == pytest.approx(float(np.std(reps, ddof=1)), rel=1e-5)
    # and it is near the delta-method error of the ratio, which it estimates
    p = sum(hits) / sum(totals)
    assert e["se"] == pytest.approx(100 * math.sqrt(np.var([h / 5 - p for h in hits], ddof=1) / 50), rel=0.3)


def test_the_paired_test_over_items_is_scipy_s_paired_t_test():
    a, b = _made_up(60, 5, 0.7), _made_up(60, 6, 0.5)
    with u.collecting() as c:
        u.record("a", range(60), a)
        u.record("b", range(60), b)
    ea, eb = c.entries()["a"], c.entries()["b"]
    diff, p, se = u.paired(ea, eb)
    assert diff == pytest.approx(np.mean(a) - np.mean(b), rel=1e-5)
    assert p == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-4)
    assert se == pytest.approx(stats.sem(np.subtract(a, b)), rel=1e-5)
    with u.collecting() as c:
        u.record("other", range(1, 61), b)  # other test items: no paired test
    assert u.paired(ea, c.entries()["other"]) is None


def test_the_paired_bootstrap_uses_the_shared_resamples():
    base = [1.0] * 30 + [0.0] * 30
    better = [1.0] * 45 + [0.0] * 15
    with u.collecting() as c:
        for name, scores in (("base", base), ("better", better), ("same", base)):
            u.record_corpus(name, range(60), lambda idx, s=scores: float(np.mean(np.asarray(s)[idx])))
    e = c.entries()
    diff, p, _ = u.paired(e["better"], e["base"])
    assert diff > 0 and p < 0.05
    assert u.paired(e["same"], e["base"])[1] == 1.0


def test_flan_average_counts_an_item_in_every_row_it_is_in():
    from rankmix.metrics.flan import score_flan

    recs = [{"idx": i, "domain": d, "task": t, "metric": m, "targets": "a b c d e", "prediction": p}
            for i, (d, t, m, p) in enumerate([("nli", "x", "em", "a b c d e"), ("nli", "x", "em", "no"),
                                              ("nli", "y", "em", "no"), ("struct to text", "s", "rouge", "a b c"),
                                              ("struct to text", "s", "rouge", "a b c d e")])]
    with u.collecting() as c:
        out = score_flan(recs)
    e = c.entries("test/")
    for name in ("cluster/nli/em", "cluster/struct to text/rouge1", "average"):
        assert u.item_scores(e[f"test/{name}"]).mean() == pytest.approx(out[name], abs=0.051)  # rounding to 0.1
    assert e["test/average"]["n"] == 5  # five records, each once, with its share of the four rows


def _run(key, em, entry, table, seed=0):
    return {"status": "ok", "run": {"key": key, "scale": "tiny"}, "metrics": {"test/em": em},
            "evaluation": {"items": {"test/em": entry}}, "config": {"table": table, "seed": seed}}


def test_a_table_cell_shows_its_se_and_a_paired_test_against_the_reference_row(tmp_path):
    (tmp_path / "paper").mkdir()
    (tmp_path / "paper" / "p.csv").write_text("fn,value\nnone,50.0\nmul,55.0\n")
    spec = {"id": "u-1", "paper_csv": "p.csv", "ttest": {"fn": "none"},
            "cells": [{"label": "EM", "match": {}, "metric": "test/em"}]}
    base, better = _made_up(80, 7, 0.5), _made_up(80, 8, 0.85)
    with u.collecting() as c:
        u.record("none", range(80), base)
        u.record("mul", range(80), better)
    e = c.entries()
    runs = tmp_path / "r" / "u-1" / "runs"
    for fn, scores in (("none", base), ("mul", better)):
        write_json_atomic(runs / f"{fn}.json", _run(fn, float(np.mean(scores)), e[fn], {**spec, "match": {"fn": fn}}))
    md = build_table("u-1", tmp_path / "r", tmp_path / "paper")
    rows = {r["run"]: r for r in csv.DictReader(open(md.parent / "table.csv"))}
    assert float(rows["mul"]["se"]) == pytest.approx(stats.sem(better), abs=0.006)
    assert float(rows["mul"]["p"]) == pytest.approx(stats.ttest_rel(better, base).pvalue, rel=1e-3)
    assert rows["none"]["p"] == ""  # the reference is not tested against itself
    text = md.read_text()
    assert f"{np.mean(better):.2f} ± {stats.sem(better):.2f} (p=" in text and "holds at 95 %" in text
    assert text.count("Scale `tiny`") == 1 and "not evidence about the paper's numbers" in text


def test_same_computation_columns_are_shown_once_with_both_paper_values(tmp_path):
    (tmp_path / "paper").mkdir()
    (tmp_path / "paper" / "p.csv").write_text("backbone,value\n7b,50.0\n13b,60.0\n")
    spec = {"id": "u-2", "paper_csv": "p.csv", "cells": [{"label": "EM", "match": {}, "metric": "test/em"}]}
    runs = tmp_path / "r" / "u-2" / "runs"
    with u.collecting() as c:
        u.record("em", range(20), _made_up(20, 9))
    e = c.entries()["em"]
    write_json_atomic(runs / "lora.json", _run("lora", 40.0, e, {**spec, "match": {"backbone": "7b"}}))
    reused = _run("lora_13b", 40.0, e, {**spec, "match": {"backbone": "13b"}})
    reused["run"]["reused_from"] = str(runs / "lora.json")
    write_json_atomic(runs / "lora_13b.json", reused)
    text = build_table("u-2", tmp_path / "r", tmp_path / "paper").read_text()
    assert "| cell | lora = lora_13b |" in text and "/ 50.0; 60.0 |" in text
    assert "same computation at this scale (`lora_13b` is `lora`)" in text


def test_caption_corpus_metrics_get_bootstrap_errors_on_shared_resamples():
    from rankmix.metrics.captioning import score_captions

    words = "a man rides a red bike down the street near a dog".split()
    rng = random.Random(10)
    recs = [{"idx": i, "prediction": " ".join(rng.sample(words, 6)), "references": [" ".join(rng.sample(words, 7)),
                                                                                       " ".join(words[:8])]}
            for i in range(12)]
    with u.collecting() as c:
        scores, _ = score_captions(recs, ("BLEU-4", "ROUGE-L", "CIDEr"), java_tokenizer=False)
    e = c.entries("test/")
    assert {k: v["method"] for k, v in e.items()} == dict.fromkeys(("test/BLEU-4", "test/ROUGE-L", "test/CIDEr"),
                                                                   "bootstrap")
    # CIDEr recomputed on the first shared resample (document frequencies from the resampled references)
    idx = next(u.bootstrap_indices(12))
    again, _ = score_captions([{**recs[j], "idx": k} for k, j in enumerate(idx)], ("CIDEr",), java_tokenizer=False)
    assert u.decode(e["test/CIDEr"]["replicates"])[0] == pytest.approx(again["CIDEr"], rel=1e-5)
    assert all(v["se"] > 0 and v["n"] == 12 for v in e.values())
    with u.collecting() as c2:  # outside a test evaluation nothing is resampled: no cost at validation
        pass
    assert score_captions(recs, ("CIDEr",), java_tokenizer=False)[0] == {"CIDEr": scores["CIDEr"]}
    assert c2.entries() == {}
