"""SMoRA's FLAN protocol: scorers on hand-worked examples, the loaders on the fixtures, the generated suite."""

import json
import math
from pathlib import Path

import pytest

from rankmix.data import flan
from rankmix.data.sources import build_splits
from rankmix.errors import ConfigError, DataError
from rankmix.metrics.flan import CLUSTERS, flan_bleu, flan_em, record_scores, score_flan
from rankmix.tasks.flan.made_up import TASKS, generate_flan_like

FIXTURES = Path(__file__).parent / "fixtures" / "flan"


def test_em_follows_the_protocol():
    assert flan_em("Yes.", "yes") == 100.0  # case and periods ignored
    assert flan_em("rain was forecast", "rain was forecast\n\nBecause an umbrella keeps you dry.") == 100.0
    assert flan_em("the room gets brighter!", "the room gets brighter") == 0.0  # only periods are removed
    assert flan_em("", "") == 100.0 and flan_em("", "x") == 0.0


def test_bleu_hand_worked():
    # p1..p4 = 4/5, 3/4, 2/3, 1/2, same length (no brevity penalty): BLEU = (0.2)^(1/4)
    assert flan_bleu("a b c d e", "a b c d f") == pytest.approx(100 * 0.2 ** 0.25)
    assert flan_bleu("a b c", "a b c") == pytest.approx(0.0, abs=1e-9)  # < 4 tokens: unsmoothed BLEU is 0
    # brevity penalty: hypothesis of 4 tokens against a reference of 5, all n-grams matching
    assert flan_bleu("a b c d", "a b c d e") == pytest.approx(100 * math.exp(1 - 5 / 4))
    assert flan_bleu("", "German") == 0.0


def test_rouge_rows_and_empty_predictions():
    assert set(record_scores("item a", "item a has b", "rouge")) == {"rouge1", "rouge2", "rougeL"}
    assert record_scores("", "item a has b", "rouge") == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    with pytest.raises(ValueError, match="em, bleu or rouge"):
        record_scores("a", "a", "accuracy")


def test_task_scores_then_cluster_means_then_average():
    recs = [
        {"task": "t1", "domain": "nli", "metric": "em", "targets": "yes", "prediction": "yes"},
        {"task": "t1", "domain": "nli", "metric": "em", "targets": "no", "prediction": "yes"},
        {"task": "t2", "domain": "nli", "metric": "em", "targets": "no", "prediction": "no"},
        {"task": "t3", "domain": "translation", "metric": "bleu", "targets": "a b c d", "prediction": "a b c d"},
    ]
    s = score_flan(recs)
    assert s["task/t1/em"] == 50.0 and s["task/t2/em"] == 100.0
    assert s["cluster/nli/em"] == 75.0  # mean of task means, not of records (which gives 66.7)
    assert s["cluster/translation/bleu"] == pytest.approx(100.0)
    assert s["average"] == pytest.approx((75.0 + 100.0) / 2)


def test_fixture_test_file_loads_and_scores():
    records = flan.load_test(FIXTURES / "combined_test.json")
    assert {r["domain"] for r in records} == set(CLUSTERS)
    assert any("OPTIONS:" in r["inputs"] for r in records) and any(r["targets"] == "" for r in records)
    assert any(r["inputs"].endswith("Which language is this?") for r in records)
    perfect = score_flan([{**r, "prediction": r["targets"].split("\n\n")[0]} for r in records])
    assert perfect["cluster/nli/em"] == 100.0
    assert perfect["cluster/struct to text/rouge1"] == pytest.approx(100.0)  # the package's f carries a 1e-8 epsilon
    assert perfect["cluster/translation/bleu"] == 50.0  # the one-word "German" target cannot reach 4-gram BLEU
    empty = score_flan([{**r, "prediction": ""} for r in records])
    assert empty["cluster/reading comp/em"] == 50.0  # the empty DROP target matches an empty prediction
    assert len([k for k in perfect if k.startswith("cluster/")]) == 12


def test_flan_rouge_is_the_protocols_package_and_rouge_score_an_option():
    """The protocol scores with the PyPI `rouge` package (case and punctuation kept); rouge-score is an option."""
    from rouge import Rouge

    rec = next(r for r in flan.load_test(FIXTURES / "combined_test.json") if r["metric"] == "rouge")
    pred = "the copper kettle serves italian food by the riverside"
    protocol = record_scores(pred, rec["targets"], "rouge")
    google = record_scores(pred, rec["targets"], "rouge", rouge_package="rouge_score")
    theirs = Rouge().get_scores([pred], [rec["targets"]], avg=True)
    for ours, name in (("rouge1", "rouge-1"), ("rouge2", "rouge-2"), ("rougeL", "rouge-l")):
        assert protocol[ours] == pytest.approx(100 * theirs[name]["f"], abs=1e-9)
    assert google["rouge1"] == pytest.approx(100.0)  # rouge-score: case and the final period do not matter
    assert protocol["rouge1"] < 70.0  # rouge: "The", "Copper", "Kettle", "Italian", "riverside." differ
    # the package raises on a hypothesis with no text between periods: the protocol's record scores 0 here
    with pytest.raises(ValueError, match="Hypothesis is empty"):
        Rouge().get_scores(["."], [rec["targets"]])
    assert record_scores(".", rec["targets"], "rouge") == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    assert score_flan([{**rec, "prediction": pred}])["task/" + rec["task"] + "/rouge1"] == round(protocol["rouge1"], 1)
    assert score_flan([{**rec, "prediction": pred}], rouge_package="rouge_score")[
        "task/" + rec["task"] + "/rouge1"] == pytest.approx(100.0)


def test_training_files_are_sampled_with_a_fixed_seed():
    a = flan.sample_train(FIXTURES / "train", ["snli_10templates", "sst2"], 4, seed=1)
    assert a == flan.sample_train(FIXTURES / "train", ["snli", "sst2_10templates"], 4, seed=1)
    assert a != flan.sample_train(FIXTURES / "train", ["snli", "sst2"], 4, seed=2)
    assert sorted({r["task"] for r in a}) == ["snli", "sst2"] and len(a) == 8


def test_flan_source_splits_train_and_validation_per_task(tmp_path):
    test = [r for r in flan.load_test(FIXTURES / "combined_test.json") if flan.base_task(r["task"]) in ("snli", "sst2")]
    path = tmp_path / "test.json"
    path.write_text(json.dumps(test))
    splits = build_splits({"kind": "flan", "test_file": str(path), "train_dir": str(FIXTURES / "train"),
                           "n_train": 4, "n_validation": 2, "seed": 0})
    assert len(splits["train"]) == 8 and len(splits["validation"]) == 4
    assert splits["test"] == [{**r, "task": flan.base_task(r["task"])} for r in test]  # one naming for both copies
    assert {r["domain"] for r in splits["train"]} == {"nli", "sentiment"}


@pytest.mark.parametrize(("content", "message"), [
    ('[{"inputs": "a", "targets": "b", "task": "t", "domain": "nli"}]', "record 1 lacks field 'metric'"),
    ('[{"inputs": "a", "targets": "b", "task": "t", "domain": "nli", "metric": "acc"}]', "record 1 has metric 'acc'"),
    ('[{"inputs": "a",', "not valid JSON at line 1"),
])
def test_malformed_test_file_names_file_and_record(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(DataError, match=message) as e:
        flan.load_test(path)
    assert str(path) in str(e.value)


def test_missing_files_say_where_to_get_them(tmp_path):
    with pytest.raises(DataError, match="github.com/StyxXuan/smora"):
        flan.load_test(tmp_path / "combined_test.json")
    with pytest.raises(DataError, match="Muennighoff/flan"):
        flan.sample_train(tmp_path, ["snli"], 2, 0)
    with pytest.raises(ConfigError, match="task.datamodule.source.test_file"):
        build_splits({"kind": "flan", "test_file": None, "train_dir": "x", "n_train": 1})


def test_flan_like_suite_covers_the_clusters_and_metrics():
    recs = list(generate_flan_like(list(TASKS), 5, seed=3))
    assert recs == list(generate_flan_like(list(TASKS), 5, seed=3))
    assert {r["domain"] for r in recs} == set(CLUSTERS)
    assert {r["metric"] for r in recs} == {"em", "bleu", "rouge"}
    by_task = {r["task"]: r for r in recs}
    xs = by_task["encode"]["inputs"].split(" : ")[1].split()
    assert len(xs) >= 4 and len(by_task["encode"]["targets"].split()) == len(xs)
    assert all(r["targets"] in r["inputs"].split("OPTIONS : ")[1].split(" | ") for r in recs if "OPTIONS" in r["inputs"])


@pytest.mark.parametrize(("content", "message"), [
    ("", r"combined_test.json: no records"),
    ('[{"inputs": "q", "targets": 3, "task": "t", "domain": "nli", "metric": "em"}]',
     r"combined_test.json: record 1: field 'targets' must be a string, got int"),
])
def test_bad_flan_test_files_are_named_as_the_user_gave_them(tmp_path, content, message):
    (tmp_path / "combined_test.json").write_text(content)
    with pytest.raises(DataError, match=message):
        flan.load_test(tmp_path / "combined_test.json")
