"""Text metrics on hand-worked examples."""

import pytest

from rankmix.metrics.text import exact_match, rouge, score_generations


@pytest.mark.parametrize(("pred", "target", "em"), [
    ("Paris.", "paris", 100.0), ("  b a ", "b a", 100.0), ("b a c", "b a", 0.0), ("", "x", 0.0),
])
def test_exact_match(pred, target, em):
    assert exact_match(pred, target) == em


def test_rouge_hand_worked():
    # prediction "a b c d", reference "a b e": unigram overlap 2 → P = 2/4, R = 2/3, F1 = 4/7
    s = rouge("a b c d", "a b e")
    assert s["rouge1"] == pytest.approx(100 * 4 / 7)
    # bigrams: pred {ab, bc, cd}, ref {ab, be}: overlap 1 → P = 1/3, R = 1/2, F1 = 0.4
    assert s["rouge2"] == pytest.approx(40.0)
    # LCS "a b" = 2 → same as ROUGE-1 here
    assert s["rougeL"] == pytest.approx(100 * 4 / 7)
    assert rouge("", "a b") == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}


def test_scores_are_per_task_then_averaged():
    records = [
        {"task": "t1", "targets": "a", "prediction": "a"},
        {"task": "t1", "targets": "b", "prediction": "a"},
        {"task": "t1", "targets": "c", "prediction": "a"},
        {"task": "t1", "targets": "d", "prediction": "a"},
        {"task": "t2", "targets": "x", "prediction": "x"},
    ]
    s = score_generations(records)
    assert s["em/t1"] == 25.0 and s["em/t2"] == 100.0
    assert s["em"] == pytest.approx(62.5)  # mean over tasks, not over records (which would be 40)
