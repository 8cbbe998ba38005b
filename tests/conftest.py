"""Shared test helpers: offline environment, Hydra composition, and subprocess training runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
    "WANDB_MODE": "disabled", "PBAR_REFRESH": "0",
}
os.environ.update(OFFLINE_ENV)
# Test processes side by side (make test: pytest-xdist) each compute on one thread, as do the runs they start.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

# Without a GPU, Triton kernels run in Triton's CPU interpreter; it must be chosen before they are imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# A small, fast version of the default run for tests (the default itself is asserted in test_default_run).
FAST_SETTINGS = {
    "trainer.max_epochs": 2,
    "task.datamodule.source.n_train": 24,
    "task.datamodule.source.n_test": 4,
    "task.datamodule.max_eval_samples.validation": 12,
}


def fast(**changes) -> list[str]:
    """FAST_SETTINGS as overrides, with ``changes`` (dots written as ``__``) replacing or adding keys."""
    settings = {**FAST_SETTINGS, **{k.replace("__", "."): v for k, v in changes.items()}}
    return [f"{k}={v}" for k, v in settings.items()]


FAST = fast()

# A tiny CLIP-BART multitask run's made-up bundle (rankmix.data.vl_like): images per source and split (NLVR2: pairs).
VL_SMALL = ["task.datamodule.source.coco={train:16,restval:0,val:2,test:4}",
            "task.datamodule.source.gqa={train:16,valid:2,testdev:4}", "task.datamodule.source.nlvr={train:8,dev:1,test1:2}"]


def compose(*overrides: str):
    """The training config for ``overrides`` with its ``hydra`` node, not validated (tests of the checks compose
    bad configs), through ``rankmix.config.compose_config``; the run folder and key of an anonymous run."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from rankmix.config import compose_config

    cfg = compose_config(list(overrides), validated=False, keep_hydra=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = "/tmp/rankmix-compose"
        cfg.hydra.job.override_dirname = ""
    HydraConfig.instance().set_config(cfg)
    return cfg


class Run:
    def __init__(self, root: Path, proc: subprocess.CompletedProcess):
        self.root, self.proc = root, proc
        self.stdout, self.stderr, self.returncode = proc.stdout, proc.stderr, proc.returncode

    def result(self, table: str = "default", key: str | None = None) -> dict:
        runs = sorted((self.root / "results" / table / "runs").glob("*.json"))
        path = next(p for p in runs if key is None or p.stem == key)
        return json.loads(path.read_text())


def path_overrides(root: Path) -> list[str]:
    return [f"paths.runs_dir={root}/runs", f"paths.results_dir={root}/results", f"paths.cache_dir={root}/.cache"]


def train_cmd(root: Path, *overrides: str, multirun: bool = False, by_env: bool = False) -> list[str]:
    paths = [] if by_env else path_overrides(root)
    return [sys.executable, "-m", "rankmix.train", *(["-m"] if multirun else []), *paths, *overrides]


def run_train(root: Path, *overrides: str, multirun: bool = False, by_env: bool = False, timeout: int = 600) -> Run:
    """Run the entry in a subprocess writing under ``root`` (given as overrides, or as RANKMIX_ROOT with ``by_env``)."""
    env = {**os.environ, **OFFLINE_ENV, **({"RANKMIX_ROOT": str(root)} if by_env else {})}
    proc = subprocess.run(train_cmd(root, *overrides, multirun=multirun, by_env=by_env), cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, env=env)
    return Run(root, proc)


def randomize(layer):
    """Non-zero values for every adapter weight of ``layer``, as after some training."""
    import torch

    with torch.no_grad():
        for name, p in layer.named_parameters():
            if not name.startswith("base_layer."):
                p.normal_(0, 0.3)
    return layer


def float64_llama(method: dict, vocab: int):
    """A 2-layer, 16-wide Llama (eager attention, no cache) in float64 with ``method`` injected and its trainable
    weights moved off their init (zero-initialised up-projections would leave the first step's routing untested)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from rankmix.adapters import inject

    config = LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
                         attn_implementation="eager", use_cache=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    inject(model, method)
    model.double()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn_like(p))
    return model.train()


@pytest.fixture
def tiny_llama():
    """A 2-layer Llama with a 32-word vocabulary, random init."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=32)
    return LlamaForCausalLM(cfg).eval()


def tiny_harness_lm(suite: dict, folder: Path):
    """A 1-layer Llama with a byte-level BPE tokenizer learnt from ``suite``'s training records, wrapped for the
    benchmark harness (``rankmix.benchmarks.harness.harness_model``)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from rankmix.backbones import byte_bpe_tokenizer
    from rankmix.benchmarks import harness

    records = [{"inputs": r["instruction"], "targets": r["output"]}
               for d in ("medical", "law", "code") for r in json.loads((suite["mixed"] / d / "train.json").read_text())]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    tok = byte_bpe_tokenizer([folder / "train.jsonl"], folder / "tok", 300)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, max_position_embeddings=512)).eval()
    return harness.harness_model(model, tok, batch_size=16, max_length=512)
