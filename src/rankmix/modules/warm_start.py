"""Warm starts: whole-model training before any adapter exists, so a tiny random-init backbone starts, like a
pretrained one, from a model that knows its inputs. Each is cached under ``cache_dir/warm_start`` by a hash of what
it trains on and its settings, and forks the global random state (a run draws the same adapter init whether the cache
existed or not).

- ``warm_start``: a causal or seq2seq LM on the task's texts (tiny GPT-2 / BART).
- ``caption_warm_start``: CLIP-BART (BART and the visual embedding) on the training captions.
- ``multitask_warm_start``: CLIP-BART on the whole training mixture (Omni-SMoLA's PaLI-3_FT stand-in).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from rankmix.atomic import atomic_open
from rankmix.data.fingerprints import code_fingerprint
from rankmix.errors import RankmixError


def warm_start(model: torch.nn.Module, tokenizer, texts: list[str], spec: Mapping, cache_dir: Path,
               cached_only: bool = False) -> torch.nn.Module:
    """Pre-train a random-init causal LM on ``texts`` (full training, no adapters) so the tiny scale, like the
    paper's pretrained GPT-2, starts from a model that knows the language but not the task's inputs.

    ``spec``: ``epochs``, ``lr``, ``batch_size``, ``seed``. Each text is trained as ``bos text eos``. The weights
    are cached under ``cache_dir`` by a hash of the model config, the texts and ``spec``; the global random state
    is left untouched (forked), so a run draws the same adapter init whether the cache existed or not.
    ``cached_only``: refuse to train (rebuilding a finished run's model), raising when the cache lacks the weights.
    """
    path = warm_start_path(model, texts, spec, cache_dir)
    if path.is_file():
        model.load_state_dict(torch.load(path, map_location="cpu"))
        return model
    if cached_only:
        raise RankmixError(f"{path}: the warm-started weights are not in the cache (the run that used them wrote "
                           "them; run it again with rerun=true)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(spec.get("seed", 0)))
        _train_lm(model, tokenizer, texts, spec)
    with atomic_open(path, binary=True) as f:   # whole or not at all, also with runs side by side
        torch.save(model.state_dict(), f)
    return model


def warm_start_path(model: torch.nn.Module, texts: list[str], spec: Mapping, cache_dir: Path) -> Path:
    """Where ``warm_start`` caches the weights for this model config, these texts and these settings."""
    from rankmix.config import digest

    key = digest([model.config.to_dict(), sorted(texts), dict(spec), code_fingerprint(__name__)])
    return Path(cache_dir) / "warm_start" / f"{model.config.model_type}-{key}.pt"


def _train_lm(model: torch.nn.Module, tokenizer, texts: list[str], spec: Mapping) -> None:
    from tqdm import tqdm

    gen = torch.Generator().manual_seed(int(spec.get("seed", 0)))
    seqs = [[tokenizer.bos_token_id, *tokenizer(t, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
            for t in texts]
    opt = torch.optim.AdamW(model.parameters(), lr=float(spec.get("lr", 1e-3)))
    bs, epochs = int(spec.get("batch_size", 32)), int(spec.get("epochs", 3))
    model.train()
    for _ in tqdm(range(epochs), desc="warm start", disable=None):
        for idx in torch.randperm(len(seqs), generator=gen).split(bs):
            batch = [seqs[i] for i in idx.tolist()]
            n = max(map(len, batch))
            ids = torch.full((len(batch), n), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, s in enumerate(batch):
                ids[i, :len(s)], mask[i, :len(s)] = torch.tensor(s), 1
            loss = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()


def caption_warm_start(model: nn.Module, dm, spec, cache_dir: Path) -> None:
    """Tiny scale: train the whole CLIP-BART (BART and the visual embedding; before any adapter exists) to caption
    the training images — VL-T5's captioning pre-training in small, so the tiny backbone, like a pretrained one,
    reads visual tokens — and keep the visual embedding it learnt. ``spec``: ``epochs``, ``lr`` (linear warm-up
    over the first 10% of steps), ``batch_size``, ``seed``. Cached by a hash of the model, the captions, the
    feature file and ``spec``, and the starting weights; the global random state is left untouched."""
    examples = dm.examples["train"]["caption"]
    bs = int(spec.get("batch_size", 48))
    gen = torch.Generator().manual_seed(int(spec.get("seed", 0)))

    def batches(_epoch):
        for idx in torch.randperm(len(examples), generator=gen).split(bs):
            yield dm.collate([{**examples[i], "_task": "caption", "_idx": i} for i in idx.tolist()])

    fingerprint = [[(e["images"], e["target"]) for e in examples], str(dm.feature_file("coco")), dict(spec)]
    _train_whole(model, "captions", fingerprint, batches, -(-len(examples) // bs), spec, cache_dir)


def multitask_warm_start(model: nn.Module, dm, spec, cache_dir: Path) -> None:
    """Fine-tune the whole CLIP-BART on the training mixture (every task, VL-Adapter's batch ratios) before any
    adapter exists: the fine-tuned model that Omni-SMoLA adds its experts to (PaLI-3_FT in App. A.1), and that
    its baseline is. ``spec`` and caching as ``caption_warm_start``."""
    from rankmix.data.vl_multitask import MultitaskBatchSampler, TaskExamples

    train = dm.examples["train"]
    bs = int(spec.get("batch_size", 48))
    sampler = MultitaskBatchSampler({t: len(train[t]) for t in dm.tasks},
                                    {t: max(1, int(bs * dm.ratios[t])) for t in dm.tasks}, shuffle=True,
                                    seed=int(spec.get("seed", 0)))
    data = TaskExamples(dm, "train")

    def batches(epoch):
        sampler.set_epoch(epoch)
        for keys in sampler:
            yield dm.collate([data[k] for k in keys])

    fingerprint = [{t: [len(train[t]), train[t][0], train[t][-1]] for t in dm.tasks}, str(dm.feature_file("coco")),
                   dict(spec)]
    _train_whole(model, "multitask", fingerprint, batches, len(sampler), spec, cache_dir)


WHOLE_MODEL_CODE = ("rankmix.modules.clip_bart", "rankmix.data.vl_multitask")   # the model and batches it trains


def _train_whole(model: nn.Module, name: str, fingerprint, batches, steps_per_epoch: int, spec, cache_dir: Path) -> None:
    """Train every weight of ``model`` on ``batches(epoch)`` (AdamW, linear warm-up over 10% of the steps, gradient
    clipping 5), or load the result cached under a hash of ``fingerprint``, the starting weights and the code."""
    import hashlib
    import json

    from tqdm import tqdm

    digest = hashlib.sha256(json.dumps([fingerprint, code_fingerprint(__name__, *WHOLE_MODEL_CODE)], sort_keys=True, default=str).encode())
    for p in model.state_dict().values():
        digest.update(p.detach().cpu().contiguous().numpy().tobytes())
    path = Path(cache_dir) / "warm_start" / f"clip_bart-{name}-{digest.hexdigest()[:16]}.pt"
    if path.is_file():
        model.load_state_dict(torch.load(path, map_location="cpu"))
        return
    params = list(model.parameters())
    epochs = int(spec.get("epochs", 10))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(spec.get("seed", 0)))
        total = epochs * steps_per_epoch
        opt = torch.optim.AdamW(params, lr=float(spec.get("lr", 1e-3)))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, 0.1 * total)))
        model.train()
        for epoch in tqdm(range(epochs), desc=f"{name} warm start", disable=None):
            for batch in batches(epoch):
                loss = model.loss(batch)
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 5.0)
                opt.step()
                sched.step()
        model.eval()
    with atomic_open(path, binary=True) as f:   # whole or not at all, also with runs side by side
        torch.save(model.state_dict(), f)
