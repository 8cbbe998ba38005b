"""A run's pre-flight check on a GPU: the row's memory projection (``rankmix.rehearsal.projection``) against the
device's free memory, before any weight is loaded, so a row that cannot fit stops at once with the settings to
change instead of running out of memory after minutes of loading. ``++trainer.preflight=false`` skips it. Before it,
on any device, each backbone part given as a local folder is checked against its declared architecture
(``rankmix.backbones.check_local_architectures``): weights of another model stop the run before its data are
prepared."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from rankmix.errors import RankmixError

KEY = "trainer.preflight"


def projected(config: dict) -> dict | None:
    """The row's projection under its strategy (FSDP shards weights and optimizer states over the devices), or
    None where a part is not a known architecture (a local checkpoint) or the row is not projected."""
    from rankmix.rehearsal.pipelines import PIPELINES
    from rankmix.rehearsal.projection import project
    from rankmix.rehearsal.run import pretrained_parts
    from rankmix.rehearsal.standins import STANDINS

    parts = pretrained_parts(config["backbone"])
    if not parts or any(hub not in STANDINS and hub not in PIPELINES for hub in parts.values()):
        return None
    p = project(config, parts)
    if "memory" not in p:
        return None
    trainer = config["trainer"]
    if "FSDP" in str((trainer.get("strategy") or {}).get("_target_", trainer.get("strategy"))):
        shards = int(trainer.get("devices") or 1)
        m = p["memory"]
        p["memory_gib"] = (m["weights"] + m["optimizer"]) / shards + m["activations"] + m["logits"]
    return p


def check(cfg: DictConfig) -> None:
    """Raise with one line where the projection of ``cfg`` exceeds the free memory of the current CUDA device; a
    no-op without CUDA, with ``trainer.preflight: false``, or where the row is not projected. First, on any device,
    refuse a backbone part whose local folder holds another architecture than the part declares."""
    import torch

    from rankmix.backbones import check_local_architectures

    check_local_architectures(OmegaConf.to_container(cfg.backbone, resolve=True))

    if not torch.cuda.is_available() or not OmegaConf.select(cfg, KEY, default=True):
        return
    p = projected(OmegaConf.to_container(cfg, resolve=True))
    if p is None:
        return
    free = torch.cuda.mem_get_info()[0] / 2**30
    if p["memory_gib"] > free:
        m = p["memory"]
        raise RankmixError(
            f"pre-flight: the row projects {p['memory_gib']:.1f} GiB per GPU (weights {m['weights']:.1f}, optimizer "
            f"{m['optimizer']:.1f}, activations {m['activations']:.1f}, logits {m['logits']:.1f}) and the GPU has "
            f"{free:.1f} GiB free; lower task.datamodule.batch_size and raise trainer.accumulate_grad_batches (same "
            f"global batch), set backbone.activation_checkpointing=reentrant, or shard with trainer=fsdp "
            f"(++{KEY}=false skips this check)")
