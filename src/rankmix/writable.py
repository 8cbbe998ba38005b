"""Folders a run writes, refused before any work when they cannot be written (read-only, missing rights).

``WritableFolders`` is a Hydra callback (``conf/train.yaml``: ``hydra.callbacks``): Hydra creates a run's folder
under ``paths.runs_dir`` before the entry runs, so the check must come first, from Hydra itself. Imported before
any run: it imports nothing heavy.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hydra.experimental.callback import Callback as HydraCallback

from rankmix.errors import RankmixError


def check_writable(*folders: Path) -> None:
    """Raise a one-line ``RankmixError`` for the first of ``folders`` that cannot be created or written."""
    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".write-test-{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise RankmixError(f"{folder}: cannot write there ({e.strerror}); give a writable folder "
                               "(paths.results_dir / paths.runs_dir)") from None


class WritableFolders(HydraCallback):
    """``paths.runs_dir`` and ``paths.results_dir`` checked before Hydra makes the run's folder: one line, exit 1."""

    @staticmethod
    def _check(config) -> None:
        try:
            check_writable(Path(config.paths.runs_dir), Path(config.paths.results_dir))
        except RankmixError as e:
            print(f"rankmix: error: {e}", file=sys.stderr)
            raise SystemExit(1) from None

    def on_run_start(self, config, **kwargs) -> None:
        self._check(config)

    def on_multirun_start(self, config, **kwargs) -> None:
        self._check(config)
