"""Text-generation metrics: exact match and ROUGE (rouge-score), scored per task then averaged over tasks."""

from __future__ import annotations

from collections import defaultdict
from functools import lru_cache


def normalize_em(s: str) -> str:
    """Lower-case, strip, drop periods (the FLAN exact-match normalisation)."""
    return s.lower().strip().replace(".", "")


def exact_match(prediction: str, target: str) -> float:
    return 100.0 * (normalize_em(prediction) == normalize_em(target))


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)


def rouge(prediction: str, target: str) -> dict[str, float]:
    """ROUGE-1/2/L F1 × 100; an empty prediction scores 0."""
    if not prediction.strip():
        return {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    scores = _rouge_scorer().score(target, prediction)
    return {k: 100.0 * v.fmeasure for k, v in scores.items()}


def score_generations(records: list[dict]) -> dict[str, float]:
    """Score ``{prediction, targets, task}`` records: each metric per task, then the mean over tasks.

    Returns ``em``, ``rouge1``, ``rouge2``, ``rougeL`` and ``em/<task>``.
    """
    per_task: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        scores = {"em": exact_match(r["prediction"], r["targets"]), **rouge(r["prediction"], r["targets"])}
        for k, v in scores.items():
            per_task[r["task"]][k].append(v)
    if not per_task:
        return {}
    task_means = {t: {k: sum(v) / len(v) for k, v in m.items()} for t, m in per_task.items()}
    out = {k: sum(tm[k] for tm in task_means.values()) / len(task_means) for k in ("em", "rouge1", "rouge2", "rougeL")}
    out.update({f"em/{t}": tm["em"] for t, tm in sorted(task_means.items())})
    return out
