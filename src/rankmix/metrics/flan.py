"""The FLAN-v2 scoring protocol of SMoRA (LoraRetriever's ``summarize_results.py``; SMoRA ships none).

Per record, by its ``metric`` field:

- ``em``: the whole prediction against ``targets.split("\\n\\n")[0]``, both stripped, lower-cased and with
  periods removed; 100 if equal, else 0 (no option extraction).
- ``bleu``: sentence-level BLEU of whitespace tokens, 4-gram, uniform weights, no smoothing, × 100 — nltk's
  ``sentence_bleu([ref.split()], pred.split())``; below 4 tokens it is 0, as unsmoothed BLEU is.
- ``rouge``: ROUGE-1/2/L f-scores × 100 from the PyPI ``rouge`` package, as the protocol
  (``Rouge().get_scores(pred, ref, avg=True)``; averaging per record and then per task is the same mean). It
  keeps case and punctuation and splits sentences on "."; ``rouge_package="rouge_score"`` scores with Google's
  ``rouge-score`` instead (lower-cased, alphanumeric tokens), which is not the protocol.

Empty predictions score 0 (the ``rouge`` package raises ``ValueError: Hypothesis is empty.`` on them, which
stops the protocol's script; here one such record scores 0).

Aggregation: each task's mean, rounded to 0.1 as the protocol does (``np.round(…, 1)``); then the mean over the
tasks of each cluster (``domain``), one row per cluster and metric as SMoRA Tab. 1 prints them (struct to text:
Rouge-1/2/L; translation: BLEU; the other clusters: their EM), printed to 0.1; ``average`` = the mean of those
12 printed rows (the paper's AVERAGE; the script itself has none).
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


def record_scores(prediction: str, target: str, metric: str, rouge_package: str = "rouge") -> dict[str, float]:
    """The protocol's scores of one record: {"em"}, {"bleu"} or {"rouge1", "rouge2", "rougeL"}."""
    if metric == "em":
        return {"em": flan_em(prediction, target)}
    if metric == "bleu":
        return {"bleu": flan_bleu(prediction, target)}
    if metric == "rouge":
        return rouge(prediction, target, rouge_package)
    raise ValueError(f"unknown FLAN metric {metric!r}; records use em, bleu or rouge")


def score_flan(records: list[dict], rouge_package: str = "rouge") -> dict[str, float]:
    """Score ``{prediction, targets, task, domain, metric}`` records; returns ``task/…``, ``cluster/…``, ``average``."""
    per_task: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        for name, value in record_scores(r["prediction"], r["targets"], r["metric"], rouge_package).items():
            per_task[(r["domain"], r["task"])][name].append(value)
    out: dict[str, float] = {}
    per_cluster: dict[tuple[str, str], list[float]] = defaultdict(list)
    for (domain, task), scores in sorted(per_task.items()):
        for name, values in scores.items():
            mean = _round1(sum(values) / len(values))  # the protocol rounds each task to 0.1 (np.round)
            out[f"task/{task}/{name}"] = mean
            per_cluster[(domain, name)].append(mean)
    rows = {f"cluster/{d}/{n}": _round1(sum(v) / len(v)) for (d, n), v in sorted(per_cluster.items())}
    out.update(rows)
    if rows:  # the paper's AVERAGE: the mean of the printed (0.1-rounded) rows
        out["average"] = sum(rows.values()) / len(rows)
    _record_items(records, per_task, rows)
    return out


def _record_items(records: list[dict], per_task: dict, rows: dict) -> None:
    """Per-item scores (``rankmix.uncertainty``) of every task, cluster row and the average, unrounded: a row is the
    mean over its tasks of the task means, the average the mean of the rows (an item in several rows, ROUGE-1/2/L,
    counts in each)."""
    from rankmix.uncertainty import combine, record

    ids: dict = defaultdict(list)
    for i, r in enumerate(records):
        ids[(r["domain"], r["task"])].append(r.get("idx", i))
    clusters: dict = defaultdict(list)
    for (domain, task), scores in sorted(per_task.items()):
        for name, values in scores.items():
            record(f"task/{task}/{name}", ids[(domain, task)], values)
            clusters[(domain, name)].append(task)
    for (domain, name), tasks in sorted(clusters.items()):
        keys = [(domain, t) for t in tasks]
        record(f"cluster/{domain}/{name}", [i for k in keys for i in ids[k]],
               [v for k in keys for v in per_task[k][name]], [k[1] for k in keys for _ in per_task[k][name]])
    if rows:
        combine("average", {row: 1.0 / len(rows) for row in rows})


def _round1(x: float) -> float:
    """``np.round(x, 1)``: to one decimal, halves to even."""
    import numpy as np

    return float(np.round(x, 1))
