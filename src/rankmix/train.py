"""Training entry: ``python -m rankmix.train [group=option ...] [key=value ...]`` (Hydra; ``-m`` for sweeps).

Composes the config, builds backbone → injects the adapter method → builds the task's data module and
LightningModule → fits (resuming from the run's newest checkpoint when one exists: ``last.ckpt``, or a SLURM
requeue's ``hpc_ckpt_<n>.ckpt``) → tests the final (or the selected best) weights → writes one result JSON per
run (atomically) and rebuilds the run's results table.
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from rankmix import locations
from rankmix.atomic import stale_temporaries
from rankmix.batching import accumulation
from rankmix.config import (
    check_table_id,
    check_trainer_keys,
    config_hash,
    register_resolvers,
    run_key,
    validate,
)
from rankmix.data.fingerprints import record_data_fingerprint
from rankmix.errors import RankmixError
from rankmix.fit import cpu_fallback, fit_and_test, release_memory
from rankmix.guards import (
    check_launch,
    is_first_process,
    lightning_config_errors,
    lock_run_dir,
    stop_on_sigterm,
)
from rankmix.records import (
    failure_path,
    finish,
    now,
    rebuild_table,
    record_failure,
    result_record,
    reused_record,
    write_result,
)
from rankmix.rehearsal import preflight
from rankmix.results import (
    is_up_to_date,
    peak_memory_mb,
    read_json,
    result_path,
    same_computation,
    write_json_atomic,
)
from rankmix.writable import check_writable

log = logging.getLogger("rankmix.train")
CONF_DIR = str(locations.CONF_DIR)
register_resolvers()


def train(cfg: DictConfig) -> float | None:
    """Run one configuration; returns ``cfg.optimized_metric`` for sweepers (None when it failed)."""
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    run_dir = Path(hc.runtime.output_dir)
    key = run_key(hc.job.override_dirname)
    started, t0 = now(), time.time()
    path, chash = None, None
    lock = None
    started_fit = []  # a config refused before training starts is not a run: it leaves no failure record
    stop_on_sigterm(key, bool(cfg.get("rerun")))
    try:
        check_table_id(cfg)
        path = result_path(Path(cfg.paths.results_dir), cfg.table.id, key)
        validate(cfg)
        check_trainer_keys(cfg)
        check_launch(cfg, multirun)
        accumulation(cfg)  # a global batch the devices cannot reach is refused before any work
        fallback = cpu_fallback(cfg)
        record_data_fingerprint(cfg)
        chash = config_hash(cfg)
        check_writable(path.parent, run_dir)
        lock = lock_run_dir(run_dir) if is_first_process() else None
        if lock is not None:  # what a killed writer of this run left (the lock keeps other writers of it out)
            for tmp in stale_temporaries(path) + stale_temporaries(run_dir / "result.json"):
                tmp.unlink(missing_ok=True)
        if not cfg.rerun and is_up_to_date(path, chash):
            failure_path(path).unlink(missing_ok=True)
            print(f"rankmix: up to date: {path} (rerun=true runs it again)")
            return finish(cfg, read_json(path)["metrics"])
        config = OmegaConf.to_container(cfg, resolve=True)
        same = None if cfg.rerun else same_computation(Path(cfg.paths.results_dir), config, exclude=path)
        if same is not None:
            print(f"rankmix: {key}: same computation as {same}; its numbers are reused (rerun=true trains again)"
                  + ("; no wandb run is made for it (nothing was trained)" if cfg.get("logger", {}).get("wandb") else ""))
            result = reused_record(read_json(same), same, key, cfg, chash, config)
            write_json_atomic(path, result)
            failure_path(path).unlink(missing_ok=True)
            return finish(cfg, result["metrics"], path)
        preflight.check(cfg)   # the projected memory against the GPU's free memory, before any weight loads
        metrics, info, trainer = fit_and_test(cfg, run_dir, chash, on_fit=lambda: started_fit.append(True))
        rank = trainer.global_rank
        del trainer  # nothing of this run's model outlives it (a sweep's next run loads its own)
        release_memory()
        if rank != 0:
            return None
        info["train"].update(wall_time_s=round(time.time() - t0, 2), peak_memory=peak_memory_mb())
        if fallback:
            info["train"]["cpu_fallback"] = fallback
        result = result_record(cfg, key, chash, run_dir, started, metrics, info, config)
        write_result(result, path, run_dir)
        return finish(cfg, metrics, path)
    except (RankmixError, *lightning_config_errors()) as e:
        record_failure(path if started_fit else None, key, cfg, chash, started, str(e))
        if started_fit:
            rebuild_table(cfg)
        print(f"rankmix: error: {e}", file=sys.stderr)
        log.error(str(e))
        if multirun:
            return None
        sys.exit(1)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM outside Lightning's fit (which stops by itself, exit code 1)
        print(f"rankmix: error: run {key} interrupted; run the same command again to resume it", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        record_failure(path if started_fit else None, key, cfg, chash, started, f"{type(e).__name__}: {e}")
        if started_fit:
            rebuild_table(cfg)
        if not multirun:
            raise
        log.error(f"run {key} failed; the sweep goes on:\n{traceback.format_exc()}")
        return None
    finally:
        if "wandb" in sys.modules:
            sys.modules["wandb"].finish()
        if lock is not None:
            lock.close()
        release_memory()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    return train(cfg)


if __name__ == "__main__":
    main()
