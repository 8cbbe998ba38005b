"""Evaluation shared by the training modules: per-example records collected over an epoch, gathered across
processes (sampler padding dropped by ``idx``), scored, logged as ``<stage>/<metric>``, and written to the run's
``predictions.jsonl`` after the test epoch. Model calls wrapped in ``timed_inference()`` add up to
``test/ms_per_sample`` (routing functions Tab. B11: average inference time per sample, this process's share).
A scorer may leave a metric out with a reason (``evaluation_notes["missing"]``, written to the run's JSON). The
test metrics' per-item scores and standard errors (``rankmix.uncertainty``) go to the run JSON's ``evaluation.items``.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
import torch.distributed as dist

from rankmix.uncertainty import collecting


class ScoredEvaluation:
    """LightningModule mixin: ``_eval_step(batch, stage)`` appends records with an ``idx`` to ``self._records``;
    ``score(records)`` returns the metrics."""

    def _init_evaluation(self, predictions_path: str | None) -> None:
        self.predictions_path = Path(predictions_path) if predictions_path else None
        self._records: list[dict] = []
        self._inference_s = 0.0
        self.evaluation_notes: dict = {}

    def score(self, records: list[dict], stage: str) -> dict[str, float]:
        raise NotImplementedError

    @contextmanager
    def timed_inference(self):
        """Adds the wall time of the enclosed model call (CUDA-synchronised) to this epoch's inference time."""
        sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
        sync()
        t0 = time.perf_counter()
        yield
        sync()
        self._inference_s += time.perf_counter() - t0

    def _eval_epoch_end(self, stage: str) -> None:
        records, self._records = self._records, []
        if stage == "test" and self._inference_s and records:
            self.log("test/ms_per_sample", 1000.0 * self._inference_s / len(records))
        self._inference_s = 0.0
        if dist.is_available() and dist.is_initialized():
            gathered: list[list[dict]] = [None] * dist.get_world_size()  # type: ignore[list-item]
            dist.all_gather_object(gathered, records)
            records = [r for part in gathered for r in part]
        records = sorted({r["idx"]: r for r in records}.values(), key=lambda r: r["idx"])  # drop sampler padding
        with collecting() if stage == "test" else nullcontext() as items:  # per-item test scores (rankmix.uncertainty)
            metrics = self.score(records, stage)
        for name, value in metrics.items():
            self.log(f"{stage}/{name}", value, rank_zero_only=True)
        if items is not None and (found := items.entries(f"{stage}/")):
            self.evaluation_notes["items"] = {k: v for k, v in found.items() if k[len(stage) + 1:] in metrics}
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
