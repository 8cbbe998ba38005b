"""A row's global batch on whatever devices run it.

A paper row whose recipe fixes the batch over several GPUs states it as ``task.global_batch_size`` (MoSLoRA Tab. 5:
4 GPUs x 8 x 2 or 4 x 16 x 1 = 64) and leaves ``trainer.accumulate_grad_batches`` null: at start-up the run
computes the accumulation as ``global / (devices x nodes x task.datamodule.batch_size)`` and refuses, in one line,
a layout that does not divide it. The global batch is part of the run's identity; the layout (devices, nodes,
accumulation) is how it executes, recorded in the run's JSON as ``train.batch_layout``. A row without
``task.global_batch_size`` runs its ``trainer.accumulate_grad_batches`` as before.
"""

from __future__ import annotations

from omegaconf import DictConfig

from rankmix.errors import ConfigError


def device_count(trainer: DictConfig) -> int:
    """The number of devices per node that ``trainer.devices`` asks for (Lightning's reading: an int, ``-1`` or
    ``"auto"`` for every visible GPU (one CPU process), a string ``"4"``, or a list / ``"0,1"`` of device ids)."""
    devices = trainer.devices
    if isinstance(devices, str) and "," in devices:
        return len([d for d in devices.split(",") if d.strip()])
    if not isinstance(devices, (int, str)):  # a list of ids
        return len(list(devices))
    if str(devices).strip() in ("auto", "-1"):
        if trainer.get("accelerator") in ("gpu", "cuda", "auto"):
            import torch

            return max(torch.cuda.device_count(), 1)
        return 1
    try:
        n = int(devices)
    except ValueError:
        raise ConfigError("trainer.devices", devices, "must be a number, a list of device ids or auto") from None
    if n < 1:
        raise ConfigError("trainer.devices", devices, "must be at least 1 (or -1 / auto)")
    return n


def accumulation(cfg: DictConfig) -> int:
    """The ``accumulate_grad_batches`` the run trains with: from ``task.global_batch_size`` when the row states one
    (refusing a layout that does not divide it, or an explicit accumulation that contradicts it), else
    ``trainer.accumulate_grad_batches``."""
    given = cfg.trainer.get("accumulate_grad_batches")
    wanted = cfg.task.get("global_batch_size")
    if wanted is None:
        if given is None:
            raise ConfigError("trainer.accumulate_grad_batches", None, "is computed only from task.global_batch_size, "
                              "which this row does not set; give a number")
        return int(given)
    devices, nodes = device_count(cfg.trainer), int(cfg.trainer.num_nodes)
    batch = int(cfg.task.datamodule.batch_size)
    per_step = devices * nodes * batch
    if int(wanted) < 1 or int(wanted) % per_step:
        raise ConfigError("task.global_batch_size", wanted, f"is not a multiple of devices x nodes x "
                          f"task.datamodule.batch_size = {devices} x {nodes} x {batch} = {per_step}; change the "
                          "per-device batch or the devices so that it divides")
    accumulate = int(wanted) // per_step
    if given is not None and int(given) != accumulate:
        raise ConfigError("trainer.accumulate_grad_batches", given, f"contradicts task.global_batch_size={wanted} on "
                          f"{devices} x {nodes} x {batch}: leave it null (computed: {accumulate})")
    return accumulate


def batch_layout(cfg: DictConfig, trainer) -> dict:
    """What the run's JSON records as ``train.batch_layout``: devices x nodes x per-device batch x accumulation =
    the global batch, as the trainer ran it, and the global batch the row asked for (``null`` when it set none)."""
    devices, nodes = int(trainer.num_devices), int(trainer.num_nodes)
    batch = (cfg.task.get("datamodule") or {}).get("batch_size")
    accumulate = int(trainer.accumulate_grad_batches)
    wanted = cfg.task.get("global_batch_size")
    return {"devices": devices, "nodes": nodes, "per_device_batch": batch, "accumulation": accumulate,
            "global_batch": devices * nodes * int(batch) * accumulate if batch is not None else None,
            "global_batch_size": int(wanted) if wanted is not None else None}
