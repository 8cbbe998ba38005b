"""What is refused or held before a run does any work: set-ups known to go wrong, the run folder's lock, and
SIGTERM (which stops a run as Ctrl-C does)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from rankmix.distributed import check_strategy
from rankmix.errors import ConfigError, RankmixError


def check_launch(cfg: DictConfig, multirun: bool) -> None:
    """Refuse set-ups that are known to go wrong before any work starts."""
    if str(cfg.trainer.get("accelerator")) in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("trainer.accelerator", cfg.trainer.accelerator, "no CUDA GPU is visible on this "
                              "machine; use trainer=cpu here, or run on a machine with one")
    strategy = cfg.trainer.get("strategy")
    check_strategy(strategy)
    name = strategy if isinstance(strategy, str) else str((strategy or {}).get("_target_", ""))
    relaunches = cfg.trainer.devices not in (1, "1") and not name.endswith("ddp_spawn") and any(
        s in name.lower() for s in ("ddp", "fsdp", "deepspeed"))
    launcher = str(HydraConfig.get().launcher.get("_target_", ""))
    if multirun and relaunches and "BasicLauncher" in launcher:
        raise ConfigError("trainer.strategy", name, "re-launches the command line for each rank, which would "
                          "restart this sweep; use hydra/launcher=slurm for multi-GPU sweeps (see trainer/ddp.yaml)")
    if "wandb" in (cfg.get("logger") or {}) and os.environ.get("WANDB_MODE", "offline") == "online" and not (
            os.environ.get("WANDB_API_KEY") or (Path.home() / ".netrc").is_file()):
        raise ConfigError("logger", "wandb", "WANDB_MODE=online needs WANDB_API_KEY (or `wandb login`); "
                          "or run offline and `make sync-wandb` later")


def stop_on_sigterm(key: str, rerun: bool = False) -> None:
    """SIGTERM (a timeout, ``docker stop``, ``kill``, SLURM's time limit) stops the run as Ctrl-C does: Lightning
    shuts down and the process exits non-zero, with a line saying so (naming the SLURM job under SLURM); a sweep
    stops there. Under SLURM, Lightning's requeue signal (SIGUSR1, which ``--signal`` asks for) is another signal:
    it is recorded here (``SlurmRequeue``) and Lightning saves and requeues at the next step boundary; the SIGTERM
    that SLURM sends when it then stops the job ends this process as above."""
    import signal

    job = os.environ.get("SLURM_JOB_ID")
    if job:
        from rankmix.callbacks import SlurmRequeue

        SlurmRequeue.listen()

    def handler(signum, frame):
        resume = ("the same command without rerun=true resumes it (with rerun=true it trains from scratch)" if rerun
                  else "the same command resumes it")
        print(f"rankmix: error: SIGTERM: stopping run {key}" + (f" (SLURM job {job})" if job else "") +
              f"; its last checkpoint is kept and {resume}", file=sys.stderr, flush=True)
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (a launcher's worker): the launcher's own handling applies
        pass


def is_first_process() -> bool:
    """Rank 0 of the run (ranks that Lightning or srun start re-enter the entry with RANK/LOCAL_RANK set)."""
    return all(os.environ.get(v, "0") == "0" for v in ("RANK", "LOCAL_RANK", "SLURM_PROCID"))


def lock_run_dir(run_dir: Path):
    """An exclusive lock on the run's folder for this process's run; a second identical run is refused."""
    import fcntl

    handle = open(run_dir / ".lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "another process"
        handle.close()
        raise RankmixError(f"{run_dir}: the same run is already running (pid {owner}); wait for it, or give "
                           "this one other overrides") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def config_errors() -> tuple[type, ...]:
    """What a bad config raises, reported in one line (``refusal``): rankmix's errors, a key the config lacks
    (OmegaConf), and Lightning's own config error once Lightning has been imported."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, MissingMandatoryValue

    mod = sys.modules.get("lightning.fabric.utilities.exceptions")
    return (RankmixError, ConfigAttributeError, ConfigKeyError, MissingMandatoryValue,
            *((mod.MisconfigurationException,) if mod else ()))


def refusal(err: Exception) -> str:
    """One line for an error of ``config_errors``: a key the config lacks is named with where to set it."""
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(err, OmegaConfBaseException) and getattr(err, "full_key", None):
        group = str(err.full_key).split(".")[0]
        return (f"{err.full_key}: not set; write it in the yaml of the run's {group} (conf/{group}/<name>.yaml), or "
                f"give ++{err.full_key}=<value> (python -m rankmix.train --cfg job shows the composed config)")
    return str(err)
