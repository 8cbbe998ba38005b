"""The Hydra callback of every sweep (``conf/train.yaml``: ``hydra.callbacks``). Hydra imports it before any run,
so it imports nothing heavy: a bad config then fails before Lightning loads."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hydra.experimental.callback import Callback as HydraCallback

SWEEP_FAILURES = "RANKMIX_SWEEP_FAILURES"  # the file a sweep's failed runs append a line to


class SweepExitCode(HydraCallback):
    """A Hydra multirun whose runs failed exits non-zero once all its runs are done (each has already written its
    result or failure and rebuilt its table), naming them; a sweep of finished runs exits 0."""

    def on_multirun_start(self, config, **kwargs) -> None:
        # one file per sweep, whatever table its runs file into; the runs (joblib, submitit workers included)
        # find it through the environment they inherit
        path = Path(config.paths.runs_dir).absolute() / f".sweep-failures-{os.getpid()}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        os.environ[SWEEP_FAILURES] = str(path)

    def on_multirun_end(self, config, **kwargs) -> None:
        path = Path(os.environ.pop(SWEEP_FAILURES, "") or "/nonexistent")
        lines = path.read_text().splitlines() if path.is_file() else []
        path.unlink(missing_ok=True)
        if lines:
            print(f"rankmix: error: {len(lines)} run(s) of this sweep failed:", file=sys.stderr)
            for line in lines:
                key, _, message = line.partition("\t")
                print(f"rankmix:   {key}: {message}", file=sys.stderr)
            raise SystemExit(1)
