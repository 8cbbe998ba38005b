"""Scores of the CLIP-BART multitask benchmark's GQA and NLVR2 (VL-Adapter's evaluators; routing functions §5).

- GQA: exact match of the generated answer against the question's label dict — the score is ``label[answer]``
  (1.0 for the one GQA answer), 0 for any other string; accuracy × 100 over testdev.
- NLVR2: no text is generated. The statement is true when the decoder's first-step logit of "true" exceeds that
  of "false" (``nlvr_predictions``); accuracy × 100 against the 0/1 labels.
"""

from __future__ import annotations

import torch


def gqa_accuracy(records: list[dict]) -> float:
    """Records ``{prediction, label: {answer: score}}`` → mean of ``label.get(prediction, 0)`` × 100."""
    if not records:
        return 0.0
    scores = [100.0 * float(r["label"].get(r["prediction"].strip(), 0.0)) for r in records]
    _record("gqa/accuracy", records, scores)
    return sum(scores) / len(scores)


def nlvr_predictions(first_step_logits: torch.Tensor, true_id: int, false_id: int) -> list[int]:
    """1 where logit("true") > logit("false") at the first decoder step, else 0; logits (B, vocab)."""
    return (first_step_logits[:, true_id] > first_step_logits[:, false_id]).long().tolist()


def nlvr_accuracy(records: list[dict]) -> float:
    """Records ``{prediction: 0|1, label: 0|1}`` → accuracy × 100."""
    if not records:
        return 0.0
    scores = [100.0 * (int(r["prediction"]) == int(r["label"])) for r in records]
    _record("nlvr/accuracy", records, scores)
    return sum(scores) / len(scores)


def _record(name: str, records: list[dict], scores: list[float]) -> None:
    """Per-item scores (``rankmix.uncertainty``), named as the multitask module logs them."""
    from rankmix.uncertainty import record

    record(name, [r.get("idx", i) for i, r in enumerate(records)], scores)
