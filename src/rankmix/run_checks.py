"""A run's identity and every check made before any work: what ``python -m rankmix.train`` knows of a run before
it loads a weight.

``RunState`` names the run (its key, folder and start), then ``check_run`` fills in where its result is filed, the
hash that says whether that result is current, and the CPU fallback of its precision; a config refused here is not a
run and leaves no failure record.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from rankmix.batching import accumulation
from rankmix.config import check_table_id, check_trainer_keys, config_hash, drop_table_rows, run_key, validate
from rankmix.data.fingerprints import record_data_fingerprint
from rankmix.fit import cpu_fallback
from rankmix.guards import check_launch
from rankmix.records import now
from rankmix.results import result_path
from rankmix.writable import check_writable


@dataclass
class RunState:
    """One run of the entry: named from Hydra's job; ``path``, ``chash`` and ``fallback`` once checked;
    ``trained`` once fitting has started (from then on a failure is recorded beside its table)."""

    key: str
    run_dir: Path
    multirun: bool
    started: str = field(default_factory=now)
    t0: float = field(default_factory=time.time)
    path: Path | None = None
    chash: str | None = None
    fallback: dict = field(default_factory=dict)
    trained: bool = False

    @classmethod
    def from_hydra(cls) -> RunState:
        hc = HydraConfig.get()
        return cls(key=run_key(hc.job.override_dirname), run_dir=Path(hc.runtime.output_dir),
                   multirun=hc.mode == RunMode.MULTIRUN)


def check_run(cfg: DictConfig, run: RunState) -> None:
    """Refuse a config that cannot run, before any work: the table, the values, the Trainer's keys, the launch, a
    global batch the devices cannot reach, the writable folders; resolve the precision's CPU fallback and the data's
    fingerprint, then the config hash (which covers both)."""
    drop_table_rows(cfg)
    check_table_id(cfg)
    run.path = result_path(Path(cfg.paths.results_dir), cfg.table.id, run.key)
    validate(cfg)
    check_trainer_keys(cfg)
    check_launch(cfg, run.multirun)
    accumulation(cfg)
    run.fallback = cpu_fallback(cfg)
    record_data_fingerprint(cfg)
    run.chash = config_hash(cfg)
    check_writable(run.path.parent, run.run_dir)
