"""Evaluation shared by the training modules: per-example records collected over an epoch, gathered across
processes (sampler padding dropped by ``idx``), scored, logged as ``<stage>/<metric>``, and written to the run's
``predictions.jsonl`` after the test epoch.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch.distributed as dist


class ScoredEvaluation:
    """LightningModule mixin: ``_eval_step(batch, stage)`` appends records with an ``idx`` to ``self._records``;
    ``score(records)`` returns the metrics."""

    def _init_evaluation(self, predictions_path: str | None) -> None:
        self.predictions_path = Path(predictions_path) if predictions_path else None
        self._records: list[dict] = []

    def score(self, records: list[dict]) -> dict[str, float]:
        raise NotImplementedError

    def _eval_epoch_end(self, stage: str) -> None:
        records, self._records = self._records, []
        if dist.is_available() and dist.is_initialized():
            gathered: list[list[dict]] = [None] * dist.get_world_size()  # type: ignore[list-item]
            dist.all_gather_object(gathered, records)
            records = [r for part in gathered for r in part]
        records = sorted({r["idx"]: r for r in records}.values(), key=lambda r: r["idx"])  # drop sampler padding
        for name, value in self.score(records).items():
            self.log(f"{stage}/{name}", value, rank_zero_only=True)
        if stage == "test" and self.predictions_path is not None and self.global_rank == 0:
            self.predictions_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.predictions_path, "w") as f:
                for r in records:
                    f.write(json.dumps(r) + "\n")

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self):
        self._eval_epoch_end("val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    def on_test_epoch_end(self):
        self._eval_epoch_end("test")
