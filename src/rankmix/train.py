"""Training entry: ``python -m rankmix.train [group=option ...] [key=value ...]`` (Hydra; ``-m`` for sweeps).

Hydra composes the config; ``rankmix.run_checks`` refuses what cannot run before any work; ``rankmix.execution``
carries the run out (skipped when its result is current, numbers reused from a run of the same computation, or fitted
and tested by ``rankmix.fit``, resuming from the run's newest checkpoint: ``last.ckpt``, or a SLURM requeue's
``hpc_ckpt_<n>.ckpt``) and ``rankmix.records`` writes its result JSON and rebuilds its table. A failure once training
has started is recorded beside the table; in a sweep, a failed run does not stop the others.
"""

from __future__ import annotations

import logging
import sys
import traceback

import hydra
from omegaconf import DictConfig

from rankmix import locations
from rankmix.config import register_resolvers
from rankmix.execution import execute
from rankmix.fit import release_memory
from rankmix.guards import config_errors, refusal, stop_on_sigterm
from rankmix.records import record_failure
from rankmix.run_checks import RunState, check_run
from rankmix.table_rows import renamed_override

log = logging.getLogger("rankmix.train")
CONF_DIR = str(locations.CONF_DIR)
register_resolvers()


def train(cfg: DictConfig) -> float | None:
    """Run one configuration; returns ``cfg.optimized_metric`` for sweepers (None when it failed)."""
    run = RunState.from_hydra()
    stop_on_sigterm(run.key, bool(cfg.get("rerun")))
    try:
        check_run(cfg, run)
        return execute(cfg, run)
    except config_errors() as e:
        message = refusal(e)
        record_failure(cfg, run, message)
        print(f"rankmix: error: {message}", file=sys.stderr)
        log.error(message)
        if run.multirun:
            return None
        sys.exit(1)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM outside Lightning's fit (which stops by itself, exit code 1)
        print(f"rankmix: error: run {run.key} interrupted; run the same command again to resume it", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        record_failure(cfg, run, f"{type(e).__name__}: {e}")
        if not run.multirun:
            raise
        log.error(f"run {run.key} failed; the sweep goes on:\n{traceback.format_exc()}")
        return None
    finally:
        if "wandb" in sys.modules:
            sys.modules["wandb"].finish()
        release_memory()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def _composed(cfg: DictConfig) -> float | None:
    return train(cfg)


def main() -> float | None:
    """``python -m rankmix.train``: an override of a renamed form is refused in one line; Hydra composes the rest."""
    renamed = renamed_override(sys.argv[1:])
    if renamed:
        print(f"rankmix: error: {renamed}", file=sys.stderr)
        sys.exit(2)
    return _composed()


if __name__ == "__main__":
    main()
