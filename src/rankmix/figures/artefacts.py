"""Reading a run's artefacts for a figure: its model with the trained adapters, its adapter weights, the
benchmark files, and the run of a method in a table."""

from __future__ import annotations

from pathlib import Path

from rankmix.errors import RankmixError
from rankmix.figures.core import FigureError, Sources


def restore(src: Sources, table: str, key: str, run: dict):
    """The trained model of a run, rebuilt from its config, tokenizer and adapter checkpoint, and its data."""
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer

    from rankmix.adapters import inject
    from rankmix.backbones import build_backbone

    cfg = OmegaConf.create(run["config"])
    tokenizer = AutoTokenizer.from_pretrained(src.run_file(table, key, "tokenizer/tokenizer_config.json").parent)
    model = build_backbone(cfg.backbone, tokenizer)
    inject(model, OmegaConf.to_container(cfg.method, resolve=True))
    state = torch.load(src.run_file(table, key, "checkpoints/last.ckpt"), map_location="cpu", weights_only=True)
    model.load_state_dict({k.removeprefix("model."): v for k, v in state["state_dict"].items()}, strict=False)
    dm = instantiate(cfg.task.datamodule, cache_dir=str(src.runs_dir / ".figure-cache"))
    dm.prepare_data()
    dm.set_tokenizer(tokenizer)
    dm.setup()
    return model.eval(), dm


def bench_file(src: Sources, prefix: str, make: str) -> Path:
    files = sorted((src.results_dir / "bench").glob(f"{prefix}-*.csv"))
    if not files:
        raise FigureError(f"no {prefix} benchmark under {src.results_dir / 'bench'}; run `make {make}` first")
    return next((f for f in files if not f.stem.endswith("-cpu")), files[0])  # a GPU's when there is one


def method_run(src: Sources, table: str, runs: dict[str, dict], name: str, **want) -> str:
    """The key of the first of ``table``'s finished ``runs`` whose method has ``name`` and the options ``want``."""
    for key, run in sorted(runs.items()):
        m = run["config"]["method"]
        if m.get("name") == name and all(m.get(k) == v for k, v in want.items()):
            return key
    what = ", ".join(f"{k}={v}" for k, v in want.items())
    raise FigureError(f"table {table}: no finished {name} run with {what} under {src.results_dir / table / 'runs'}; "
                      f"run `make reproduce-table-{table}` first")


def trained_adapters(src: Sources, table: str, key: str) -> dict:
    """The adapter tensors of a run's last checkpoint, keyed by their names in the adapted language model."""
    import torch

    state = torch.load(src.run_file(table, key, "checkpoints/last.ckpt"), map_location="cpu", weights_only=True)
    return {k.split(".", 2)[2]: v for k, v in state["state_dict"].items() if k.startswith("model.lm.")}


def restore_captioner(src: Sources, table: str, key: str, run: dict):
    """A captioning run's trained model (frozen ViT, warm-started LM from the cache, its adapters) and its data."""
    import tempfile

    from omegaconf import OmegaConf

    from rankmix.modules.captioning import build_captioning

    with tempfile.TemporaryDirectory() as tmp:  # the word-level tokenizer is rebuilt from the same texts
        try:
            module, dm, _, lm = build_captioning(OmegaConf.create(run["config"]), Path(tmp), cached_only=True)
        except RankmixError as e:
            raise FigureError(f"run {table}/{key}: {e}; `make reproduce-table-{table} ARGS=rerun=true` makes it") from None
    lm.load_state_dict(trained_adapters(src, table, key), strict=False)
    dm.setup()
    return module.model.eval(), module.tokenizer, dm
