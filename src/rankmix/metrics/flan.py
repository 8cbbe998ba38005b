"""The FLAN-v2 scoring protocol of SMoRA (LoraRetriever's ``summarize_results.py``; SMoRA ships none).

Per record, by its ``metric`` field:

- ``em``: the whole prediction against ``targets.split("\\n\\n")[0]``, both stripped, lower-cased and with
  periods removed; 100 if equal, else 0 (no option extraction).
- ``bleu``: sentence-level BLEU of whitespace tokens, 4-gram, uniform weights, no smoothing, × 100 — nltk's
  ``sentence_bleu([ref.split()], pred.split())``; below 4 tokens it is 0, as unsmoothed BLEU is.
- ``rouge``: ROUGE-1/2/L F1 × 100 from ``rouge-score``. The protocol used the PyPI ``rouge`` package, whose
  tokenisation differs (it keeps punctuation attached to words; ``rouge-score`` lower-cases and splits on
  non-alphanumerics): ``tests/test_flan_metrics.py`` measures the difference on the fixtures.

Empty predictions score 0. Aggregation: each task's mean first, then the mean over the tasks of each
cluster (``domain``), one row per cluster and metric as SMoRA Tab. 1 prints them (struct to text: Rouge-1/2/L;
translation: BLEU; the other clusters: their EM), and ``average`` = the mean of those 12 rows.
"""

from __future__ import annotations

import warnings
from collections import defaultdict

from rankmix.metrics.text import normalize_em, rouge

CLUSTERS = ("struct to text", "translation", "commonsense", "sentiment", "reading comp", "closed_book QA",
            "coreference", "read.comp.w:commonsense", "paraphrase", "nli")


def flan_em(prediction: str, target: str) -> float:
    return 100.0 * (normalize_em(prediction) == normalize_em(target.split("\n\n")[0]))


def flan_bleu(prediction: str, target: str) -> float:
    from nltk.translate.bleu_score import sentence_bleu

    hyp, ref = prediction.split(), target.split()
    if not hyp or not ref:
        return 0.0
    with warnings.catch_warnings():  # nltk warns that unsmoothed BLEU of short outputs is 0: that is the protocol
        warnings.simplefilter("ignore")
        return 100.0 * sentence_bleu([ref], hyp)


def record_scores(prediction: str, target: str, metric: str) -> dict[str, float]:
    """The protocol's scores of one record: {"em"}, {"bleu"} or {"rouge1", "rouge2", "rougeL"}."""
    if metric == "em":
        return {"em": flan_em(prediction, target)}
    if metric == "bleu":
        return {"bleu": flan_bleu(prediction, target)}
    if metric == "rouge":
        return rouge(prediction, target)
    raise ValueError(f"unknown FLAN metric {metric!r}; records use em, bleu or rouge")


def score_flan(records: list[dict]) -> dict[str, float]:
    """Score ``{prediction, targets, task, domain, metric}`` records; returns ``task/…``, ``cluster/…``, ``average``."""
    per_task: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        for name, value in record_scores(r["prediction"], r["targets"], r["metric"]).items():
            per_task[(r["domain"], r["task"])][name].append(value)
    out: dict[str, float] = {}
    per_cluster: dict[tuple[str, str], list[float]] = defaultdict(list)
    for (domain, task), scores in sorted(per_task.items()):
        for name, values in scores.items():
            mean = sum(values) / len(values)
            out[f"task/{task}/{name}"] = mean
            per_cluster[(domain, name)].append(mean)
    rows = {f"cluster/{d}/{n}": sum(v) / len(v) for (d, n), v in sorted(per_cluster.items())}
    out.update(rows)
    if rows:
        out["average"] = sum(rows.values()) / len(rows)
    return out
