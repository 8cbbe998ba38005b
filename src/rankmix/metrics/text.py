"""Text-generation metrics: exact match and ROUGE (rouge-score or the PyPI rouge package), scored per task then averaged over tasks."""

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


ROUGE_PACKAGES = ("rouge", "rouge_score")


def rouge(prediction: str, target: str, package: str = "rouge_score") -> dict[str, float]:
    """ROUGE-1/2/L F1 × 100 from ``package``; an empty prediction scores 0.

    - ``rouge_score`` (Google's): lower-cases, splits on non-alphanumerics, ROUGE-L over the whole text.
    - ``rouge`` (PyPI ``rouge``, ``Rouge().get_scores(pred, ref)``, f-scores: the FLAN protocol's): keeps case and
      punctuation, splits sentences on ".", ROUGE-L is the summary-level union LCS over those sentences. It
      raises ``ValueError`` on a hypothesis (or reference) with no text once split on "."; such a record scores
      0 here.
    """
    zero = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    if package == "rouge":
        try:
            scores = _rouge_package().get_scores(prediction, target)[0]
        except ValueError:  # "Hypothesis is empty." / "Reference is empty."
            return zero
        return {"rouge1": 100.0 * scores["rouge-1"]["f"], "rouge2": 100.0 * scores["rouge-2"]["f"],
                "rougeL": 100.0 * scores["rouge-l"]["f"]}
    if package != "rouge_score":
        raise ValueError(f"unknown ROUGE package {package!r}; use one of {', '.join(ROUGE_PACKAGES)}")
    if not prediction.strip():
        return zero
    scores = _rouge_scorer().score(target, prediction)
    return {k: 100.0 * v.fmeasure for k, v in scores.items()}


@lru_cache(maxsize=1)
def _rouge_package():
    from rouge import Rouge

    return Rouge()


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
    _record_items(records, per_task)
    return out


def _record_items(records: list[dict], per_task: dict) -> None:
    """Per-item scores (``rankmix.uncertainty``): each metric a mean over the tasks of the task means."""
    from rankmix.uncertainty import record

    ids = {t: [r.get("idx", i) for i, r in enumerate(records) if r["task"] == t] for t in per_task}
    tasks = sorted(per_task)
    for k in ("em", "rouge1", "rouge2", "rougeL"):
        record(k, [i for t in tasks for i in ids[t]], [v for t in tasks for v in per_task[t][k]],
               [t for t in tasks for _ in per_task[t][k]])
    for t in tasks:
        record(f"em/{t}", ids[t], per_task[t]["em"])
