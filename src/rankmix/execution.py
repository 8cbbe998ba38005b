"""A checked run, carried out: under its run-folder lock, it is skipped when its result is current, reuses the numbers
of a finished run of the same computation, or is fitted and tested; then its result JSON is written and its table
rebuilt (``rankmix.records``)."""

from __future__ import annotations

import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from rankmix.atomic import stale_temporaries
from rankmix.fit import fit_and_test, release_memory
from rankmix.guards import is_first_process, lock_run_dir
from rankmix.records import failure_path, finish, result_record, reused_record, write_result
from rankmix.rehearsal import preflight
from rankmix.results import (
    is_up_to_date,
    peak_memory_mb,
    read_json,
    reset_peak_memory,
    same_computation,
    write_json_atomic,
)
from rankmix.run_checks import RunState


def execute(cfg: DictConfig, run: RunState) -> float | None:
    """Carry out a run checked by ``rankmix.run_checks.check_run``; returns ``cfg.optimized_metric`` (None on the
    ranks that do not write)."""
    lock = lock_run_dir(run.run_dir) if is_first_process() else None
    try:
        if lock is not None:  # what a killed writer of this run left (the lock keeps other writers of it out)
            for tmp in stale_temporaries(run.path) + stale_temporaries(run.run_dir / "result.json"):
                tmp.unlink(missing_ok=True)
        config = OmegaConf.to_container(cfg, resolve=True)  # as checked: what the result JSON records
        done = _earlier_result(cfg, run, config)
        return finish(cfg, *done) if done is not None else _fit_and_record(cfg, run, config)
    finally:
        if lock is not None:
            lock.close()


def _earlier_result(cfg: DictConfig, run: RunState, config: dict) -> tuple[dict, Path | None] | None:
    """The metrics of the run's own current result, or of a finished run of the same computation, its own earlier
    result included (its numbers are reused, in a result JSON of this run), with the path to report; None when the
    run must be trained."""
    if not cfg.rerun and is_up_to_date(run.path, run.chash):
        failure_path(run.path).unlink(missing_ok=True)
        print(f"rankmix: up to date: {run.path} (rerun=true runs it again)")
        return read_json(run.path)["metrics"], None
    same = None if cfg.rerun else same_computation(Path(cfg.paths.results_dir), config, own=run.path)
    if same is None:
        return None
    if same == run.path:
        print(f"rankmix: {run.key}: only its labels changed (its table's title or cells, a paper label); its numbers "
              "are kept and its result rewritten (rerun=true trains again)")
    else:
        print(f"rankmix: {run.key}: same computation as {same}; its numbers are reused (rerun=true trains again)"
              + ("; no wandb run is made for it (nothing was trained)" if cfg.get("logger", {}).get("wandb") else ""))
    result = reused_record(read_json(same), None if same == run.path else same, run.key, cfg, run.chash, config)
    write_json_atomic(run.path, result)
    failure_path(run.path).unlink(missing_ok=True)
    return result["metrics"], run.path


def _fit_and_record(cfg: DictConfig, run: RunState, config: dict) -> float | None:
    """Fit and test (``rankmix.fit``), after the projected memory is checked against the GPU's free memory; rank 0
    writes the result JSON."""
    preflight.check(cfg)   # before any weight loads
    reset_peak_memory()    # this run's peak, not an earlier run's of the same sweep process
    metrics, info, trainer = fit_and_test(cfg, run.run_dir, run.chash, on_fit=lambda: setattr(run, "trained", True))
    rank = trainer.global_rank
    del trainer  # nothing of this run's model outlives it (a sweep's next run loads its own)
    release_memory()
    if rank != 0:
        return None
    info["train"].update(wall_time_s=round(time.time() - run.t0, 2), peak_memory=peak_memory_mb())
    if run.fallback:
        info["train"]["cpu_fallback"] = run.fallback
    result = result_record(cfg, run.key, run.chash, run.run_dir, run.started, metrics, info, config)
    write_result(result, run.path, run.run_dir)
    return finish(cfg, metrics, run.path)
