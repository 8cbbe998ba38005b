"""What a run leaves: its result JSON (or, once training had started, its failure record), then its table rebuilt
and the final metrics reported."""

from __future__ import annotations

import logging
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from omegaconf import DictConfig

from rankmix.config import check_table_id
from rankmix.errors import RankmixError
from rankmix.locations import SOURCE
from rankmix.results import (
    RESULT_FORMAT,
    environment,
    git_state,
    machine,
    package_versions,
    write_json_atomic,
)
from rankmix.sweep import SWEEP_FAILURES

log = logging.getLogger("rankmix.train")


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def failure_path(path: Path) -> Path:
    """Where a run's failure is kept: ``results/<table>/failed/<key>.json``, apart from the finished results."""
    return path.parent.parent / "failed" / path.name


def record_failure(cfg: DictConfig, run, message: str) -> None:
    """A failed run (a ``rankmix.run_checks.RunState``) that had started training leaves a ``status: failed`` JSON in
    ``failed/`` (listed under its table, never a row), so a finished result is never replaced by a failure, and its
    table is rebuilt; a config refused before training is not a run and leaves none. In a sweep either is counted
    for the sweep's exit code."""
    if run.trained and run.path is not None:
        failure = {"status": "failed", "error": message,
                   "run": {"key": run.key, "table": cfg.table.id, "scale": cfg.get("scale"), "config_hash": run.chash,
                           "started_at": run.started, "finished_at": now()}}
        try:
            write_json_atomic(failure_path(run.path), failure)
        except OSError as e:
            print(f"rankmix: error: cannot record the failure in {failure_path(run.path)} ({e.strerror})",
                  file=sys.stderr)
    if run.trained:
        rebuild_table(cfg)
    sweep_failures = os.environ.get(SWEEP_FAILURES)
    if sweep_failures and run.multirun:
        with open(sweep_failures, "a") as f:
            f.write(f"{run.key}\t{message.splitlines()[0] if message else ''}\n")


def rebuild_table(cfg: DictConfig) -> None:
    """After a failure: the table lists it (best effort: a table that cannot be built is not this run's error)."""
    from rankmix.tables import build_table

    try:
        check_table_id(cfg)
        build_table(cfg.table.id, Path(cfg.paths.results_dir), Path(cfg.paths.paper_dir))
    except Exception as e:  # noqa: BLE001
        log.warning(f"table {cfg.table.get('id')} not rebuilt: {e}")


def finish(cfg: DictConfig, metrics: dict, path: Path | None = None) -> float | None:
    """Report the result and rebuild its table; a table that cannot be built yet (a gain whose baseline run has
    not finished) is said in one line and does not fail the finished run."""
    from rankmix.tables import build_table

    shown = {k: v for k, v in sorted(metrics.items()) if k.startswith("test/") and k.count("/") == 1}
    if shown:
        print("rankmix: metrics: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                for k, v in shown.items()))
    if path is not None:
        print(f"rankmix: result: {path}")
    try:
        table_md = build_table(cfg.table.id, Path(cfg.paths.results_dir), Path(cfg.paths.paper_dir))
        print(f"rankmix: table: {table_md}")
    except RankmixError as e:
        print(f"rankmix: table {cfg.table.id} not built yet: {e}")
    return metrics.get(cfg.get("optimized_metric"))


def result_record(cfg: DictConfig, key: str, chash: str, run_dir: Path, started: str, metrics: dict, info: dict,
                  config: dict) -> dict:
    """A finished run's result: its identity and format, metrics, what ``fit_and_test`` measured, the environment
    (package versions, the lock, the commit, the machine) and the resolved config."""
    return {
        "status": "ok",
        "run": {"key": key, "table": cfg.table.id, "scale": cfg.scale, "config_hash": chash, "format": RESULT_FORMAT,
                "run_dir": str(run_dir), "started_at": started, "finished_at": now()},
        "metrics": metrics,
        **info,
        "meta": {"versions": package_versions(), "environment": environment(SOURCE), "git": git_state(SOURCE),
                 "machine": machine()},
        "config": config,
    }


def reused_record(done: dict, reused_from: Path | None, key: str, cfg: DictConfig, chash: str, config: dict) -> dict:
    """The result of a run whose computation a finished run already made (``done``, at ``reused_from``): its numbers,
    filed under this run's key and table. ``reused_from`` None: ``done`` is the run's own earlier result (only its
    labels changed), which keeps where its numbers came from."""
    run = {**done["run"], "key": key, "table": cfg.table.id, "config_hash": chash}
    if reused_from is not None:
        run["reused_from"] = str(reused_from)
    return {**done, "run": run, "config": config}


def write_result(result: dict, path: Path, run_dir: Path) -> None:
    """The result, atomically, in the results folder and the run's folder; the run's old failure record goes."""
    for target in (path, run_dir / "result.json"):
        try:
            write_json_atomic(target, result)
        except OSError as e:  # a full disk, a folder made read-only meanwhile; last.ckpt stays valid
            raise RankmixError(f"{target}: cannot write the result ({e.strerror}); free space or fix the "
                               "folder, then run the same command again (it resumes from last.ckpt)") from None
    failure_path(path).unlink(missing_ok=True)
