"""Lightning callbacks for reliable runs: stop on a non-finite loss, reseed every epoch for exact resume; and the
cost of each training step (``StepCost``)."""

from __future__ import annotations

import json
import math
import random
import signal
import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch

from rankmix.errors import NonFiniteLossError


class FiniteLossGuard(pl.Callback):
    """Stop training with a clear message as soon as the training loss is NaN or infinite."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        value = float(loss.detach()) if loss is not None else 0.0
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"training loss became {value} at step {trainer.global_step} (epoch {trainer.current_epoch}); "
                "lower optimizer.lr or method.alpha, or set trainer.gradient_clip_val"
            )


class EpochReseed(pl.Callback):
    """Seed the global RNGs from (seed, epoch) at every epoch start.

    Dropout and any other global-RNG draws of an epoch then do not depend on what ran before it, so a
    run resumed from an epoch-end checkpoint reproduces the uninterrupted run exactly.
    """

    def __init__(self, seed: int):
        self.seed = seed

    def on_train_epoch_start(self, trainer, pl_module):
        s = (self.seed * 1_000_003 + trainer.current_epoch) % (2**31)
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)


class AdapterRouting(pl.Callback):
    """Drives the adapters' per-step hooks and collects their routing statistics.

    Calls ``on_optimizer_step()`` of every adapter layer once per optimizer step (SMoRA's ``per_step``
    bias update) and peft's AdaLoRA budget update after it; logs the mean MaxVio of routed layers per
    training epoch (``routing/maxvio``); appends every routed layer's statistics (loads, MaxVio, gate
    entropy) to ``<run dir>/routing_stats_train.jsonl`` once per epoch; and writes the test-time statistics
    to ``<run dir>/routing_stats.json``.
    """

    @staticmethod
    def _routed(pl_module):
        from rankmix.adapters import adapter_layers

        return {n: m for n, m in adapter_layers(pl_module).items() if m.routes()}

    def _reset(self, pl_module):
        for layer in self._routed(pl_module).values():
            layer.reset_routing_stats()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        from rankmix.adapters import adapter_layers

        for layer in adapter_layers(pl_module).values():
            layer.on_optimizer_step()

    def on_train_start(self, trainer, pl_module):
        from rankmix.adapters.peft_methods import peft_tuner, resolve_total_step

        self._steps = trainer.global_step
        tuner = peft_tuner(pl_module)
        if tuner is not None and hasattr(tuner, "update_and_allocate"):
            resolve_total_step(tuner, int(trainer.estimated_stepping_batches))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        from rankmix.adapters.peft_methods import allocate_rank_budget, peft_tuner

        tuner = peft_tuner(pl_module)
        if tuner is not None and hasattr(tuner, "update_and_allocate") and trainer.global_step != self._steps:
            self._steps = trainer.global_step  # an optimizer step was taken (not a batch accumulated)
            allocate_rank_budget(tuner, trainer.global_step - 1)  # AdaLoRA's budget, after step global_step - 1

    def on_train_epoch_start(self, trainer, pl_module):
        self._reset(pl_module)

    def _collect(self, pl_module, maxvio_key: str) -> dict:
        """Every routed layer's statistics; logs their mean MaxVio under ``maxvio_key`` when there is one."""
        stats = {n: m.routing_stats() for n, m in self._routed(pl_module).items()}
        vios = [s["maxvio"] for s in stats.values() if "maxvio" in s]
        if vios:
            pl_module.log(maxvio_key, sum(vios) / len(vios))
        return stats

    def on_train_epoch_end(self, trainer, pl_module):
        stats = self._collect(pl_module, "routing/maxvio")
        if stats and trainer.is_global_zero:  # one line per epoch, for the load-balancing figures
            with open(Path(trainer.default_root_dir) / "routing_stats_train.jsonl", "a") as f:
                f.write(json.dumps({"epoch": trainer.current_epoch, "step": trainer.global_step, "layers": stats}) + "\n")

    def on_test_epoch_start(self, trainer, pl_module):
        self._reset(pl_module)

    def on_test_epoch_end(self, trainer, pl_module):
        stats = self._collect(pl_module, "test/routing/maxvio")
        if stats and trainer.is_global_zero:
            from rankmix.results import write_json_atomic

            write_json_atomic(Path(trainer.default_root_dir) / "routing_stats.json", stats)


class LogRunConfig(pl.Callback):
    """Give every logger the run's resolved config, run key and parameter counts when fitting starts (after the
    processes of a distributed run are set up; rank 0 writes): the wandb dashboard compares runs by these, and the
    CSV logger keeps them in ``hparams.yaml``."""

    def __init__(self, params: dict):
        self.params = params

    def on_fit_start(self, trainer, pl_module):
        for logger in trainer.loggers:
            logger.log_hyperparams(self.params)


class TrainingModes(pl.Callback):
    """How many submodules are in train and in eval mode during the first training step (HF models apply dropout by
    their module's mode): ``{"train": n, "eval": m}``, written to the run's JSON as ``train.module_modes``. Read after
    the step, when a frozen ViT has been put in eval."""

    def __init__(self):
        self.seen: dict | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.seen is None:
            modes = [m.training for m in pl_module.modules()]
            self.seen = {"train": sum(modes), "eval": len(modes) - sum(modes)}


class StepCost(pl.Callback):
    """Seconds, tokens and peak accelerator memory of each training batch (forward, backward and, on the batch
    that completes an accumulation, the optimizer step), written as a JSON list to ``path`` when fitting ends.
    Tokens are the batch's attention-mask ones (its ``input_ids`` size without a mask; 0 for batches of
    neither). ``make gpu-check`` adds it to a rehearsal row (``+callbacks.step_cost._target_=...``)."""

    def __init__(self, path: str):
        self.path, self.steps, self._t0 = Path(path), [], 0.0

    @staticmethod
    def _sync():
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._sync()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._sync()
        seconds = time.perf_counter() - self._t0
        mask = batch.get("attention_mask") if isinstance(batch, dict) else None
        ids = batch.get("input_ids") if isinstance(batch, dict) else None
        tokens = int(mask.sum()) if mask is not None else (ids.numel() if ids is not None else 0)
        peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
        self.steps.append({"batch": batch_idx, "seconds": round(seconds, 4), "tokens": tokens,
                           "peak_mb": round(peak, 1) if peak is not None else None})

    def on_fit_end(self, trainer, pl_module):
        if trainer.is_global_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.steps, indent=1) + "\n")


class SlurmRequeue(pl.Callback):
    """SLURM's requeue signal (``SLURMEnvironment.requeue_signal``, SIGUSR1 unless set), acted on by Lightning's own
    handler (hpc checkpoint ``<run dir>/hpc_ckpt_<n>.ckpt``, then ``scontrol requeue <job id>`` from rank 0) at the
    next optimizer-step boundary instead of wherever the signal lands.

    Lightning runs that handler inside the signal handler: in the middle of an optimizer step (parameters updated,
    step counter not yet), of a gradient accumulation (the accumulated gradients are not saved) or of a validation,
    whose checkpoints do not resume to the uninterrupted run. ``listen()`` (before the Trainer exists) records the
    signal instead; Lightning then installs no handler of its own on it. At the start of the next training batch
    that begins an optimizer step, all ranks agree that one of them got it and Lightning's handler runs there; a
    signal that comes after the last training batch is acted on when training ends. The checkpoint also keeps the
    global RNG states, set again when the resumed run reaches the same batch (dropout continues as it would have).

    Resuming such a mid-epoch checkpoint, Lightning restores the training loader's position (``ResumableLoader``)
    only when it sets the loader up after the restore; a module whose ``configure_optimizers`` reads
    ``trainer.estimated_stepping_batches`` (rankmix's schedules) has it set up before. ``on_train_start`` hands the
    loader its saved position then, and restarts its pass at the resumed epoch.
    """

    received: int | None = None  # the signal this process got and has not acted on yet

    @classmethod
    def listen(cls) -> None:
        """Record the requeue signal from now on, where Lightning would requeue the job: a SLURM batch job."""
        from lightning.fabric.plugins.environments import SLURMEnvironment

        env = SLURMEnvironment()
        if SLURMEnvironment.detect() and env.auto_requeue and env.requeue_signal is not None:
            try:
                signal.signal(env.requeue_signal, cls._record)
            except ValueError:  # not the main thread: Lightning's own handling applies
                pass

    @classmethod
    def under_slurm(cls) -> SlurmRequeue | None:
        """The callback in a SLURM batch job (srun's tasks included), where Lightning requeues; None elsewhere
        (``conf/callbacks/default.yaml``)."""
        from lightning.fabric.plugins.environments import SLURMEnvironment

        return cls() if SLURMEnvironment.detect() else None

    @classmethod
    def _record(cls, signum, frame) -> None:
        cls.received = signum

    def __init__(self):
        self._saving = False
        self._rng: dict | None = None  # global RNG states to set again, from the checkpoint resumed
        self._loader_states: list | None = None  # the training loader's position in that checkpoint

    def _requeue(self, trainer) -> None:
        signum, SlurmRequeue.received = SlurmRequeue.received, None
        self._saving = True
        try:
            trainer._signal_connector._slurm_sigusr_handler_fn(signum or signal.SIGUSR1, None)
        finally:
            self._saving = False

    def _agreed(self, trainer) -> bool:
        return trainer.strategy.reduce_boolean_decision(SlurmRequeue.received is not None, all=False)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._rng is not None:  # the batch the requeue checkpoint was written at
            _set_rng_states(self._rng)
            self._rng = None
        if trainer.fit_loop.epoch_loop.batch_progress.current.processed % trainer.accumulate_grad_batches == 0 \
                and self._agreed(trainer):
            self._requeue(trainer)

    def on_train_end(self, trainer, pl_module):
        if self._agreed(trainer):
            self._requeue(trainer)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        if self._saving:
            checkpoint["global_rng"] = _rng_states()

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        self._rng = checkpoint.get("global_rng")
        self._loader_states = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {}).get("combined_loader")

    def on_train_start(self, trainer, pl_module):
        from lightning.fabric.utilities.data import _set_sampler_epoch

        fit, states, self._loader_states = trainer.fit_loop, self._loader_states, None
        if states and fit.restarting and fit._combined_loader is not None:
            for loader in fit._combined_loader.flattened:
                _set_sampler_epoch(loader, trainer.current_epoch)
            fit._combined_loader._load_state_dicts(states)
            iter(fit._data_fetcher)  # the pass the epoch resumes, from the saved position


def _rng_states() -> dict:
    """The global RNG states (Python, NumPy, torch CPU and CUDA), as plain types a ``weights_only`` load accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {"python": random.getstate(), "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
              "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
