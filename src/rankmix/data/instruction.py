"""LightningDataModule for instruction → response records (``inputs``/``targets`` JSON lines).

Training examples are ``<s> prompt response </s>`` with the loss on the response (or on everything with
``loss_on_prompt``). Evaluation batches carry left-padded prompts for generation plus the reference
text. ``prompt_format`` says how a record becomes text:

- ``template``: prompt = ``prompt_template.format(**record)``, response = " " + ``targets``, tokenized apart
  (as LLaMA-Factory encodes prompt and response); the same prompt for generation.
- ``moslora``: MoSLoRA's Alpaca wrappers (``rankmix.data.commonsense``; LLM-Adapters' after its prompt fix): the
  training text is tokenized whole, as ``finetune.py`` does, and generation starts from the (different)
  evaluation wrapper. Data order depends only on (seed, epoch), so a resumed run sees the same batches as an
uninterrupted one.
"""

from __future__ import annotations

from pathlib import Path

import datasets
import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from rankmix.adapters.base import choice
from rankmix.atomic import write_jsonl_atomic
from rankmix.config import digest
from rankmix.data import commonsense
from rankmix.data.files import check_jsonl
from rankmix.data.fingerprints import data_paths, fingerprint
from rankmix.data.loading import seeded_loader
from rankmix.data.sources import build_splits
from rankmix.errors import ConfigError, DataError

SPLITS = ("train", "validation", "test")
REQUIRED_FIELDS = ("inputs", "targets", "task")
IGNORE_INDEX = -100
PROMPT_FORMATS = ("template", "moslora")
RECORD_KEYS = ("targets", "task", "domain", "metric", "answer")  # passed through evaluation batches to the scorer


# What a record longer than max_length becomes: an error, cut at max_length (LLM-Adapters' finetune.py), or
# LLaMA-Factory's cut of prompt and response (SMoRA's training code).
OVERLONG = ("error", "truncate", "llama_factory")


def llama_factory_truncation(source: list[int], target: list[int], cutoff: int) -> tuple[list[int], list[int]]:
    """LLaMA-Factory's ``infer_seqlen``: a response shorter than half the cutoff is kept whole and the prompt's end
    is cut; else a prompt shorter than half keeps whole and the response is cut; else both, in proportion."""
    if len(target) * 2 < cutoff:
        max_target = cutoff
    elif len(source) * 2 < cutoff:
        max_target = cutoff - len(source)
    else:
        max_target = int(cutoff * (len(target) / (len(source) + len(target))))
    n_target = min(max_target, len(target))
    return source[: min(max(cutoff - n_target, 0), len(source))], target[:n_target]


class InstructionDataModule(pl.LightningDataModule):
    """Reads ``{data_dir}/{train,validation,test}.jsonl``; with ``data_dir: null`` prepares them first from
    ``source`` (generated, or sampled from the FLAN files; see ``rankmix.data.sources``) under ``cache_dir``."""

    def __init__(
        self,
        data_dir: str | None,
        cache_dir: str,
        source: dict | None = None,
        prompt_template: str = "{inputs} =>",
        prompt_format: str = "template",
        loss_on_prompt: bool = False,
        max_length: int = 64,
        overlong: str = "error",
        max_new_tokens: int = 16,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        max_eval_samples: dict | None = None,
        num_workers: int = 0,
        seed: int = 0,
        made_up: bool = True,
    ):
        super().__init__()
        self.data_dir = Path(data_dir) if data_dir else None
        self.cache_dir = Path(cache_dir)
        self.source = dict(source or {})
        self.prompt_template = prompt_template
        self.prompt_format = choice("task.datamodule.prompt_format", prompt_format, PROMPT_FORMATS)
        self.loss_on_prompt = loss_on_prompt
        self.max_length = max_length
        self.overlong = choice("task.datamodule.overlong", overlong, OVERLONG)
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.max_eval_samples = dict(max_eval_samples or {})
        self.num_workers = num_workers
        self.seed = seed
        self.made_up = made_up   # a benchmark folder with no paths given reads its made-up copy (False at scale=paper)
        self.tokenizer = None
        self.examples: dict[str, list[dict]] = {}

    # -- files ---------------------------------------------------------------------------------
    def files(self) -> dict[str, Path]:
        root = self.data_dir if self.data_dir is not None else self._generated_dir()
        return {s: root / f"{s}.jsonl" for s in SPLITS}

    def _generated_dir(self) -> Path:
        """Keyed by the source config, by the contents of the files it reads (an edited file is read again) and by a
        benchmark folder's code."""
        from rankmix import tasks

        keyed = dict(self.source)
        files = fingerprint(data_paths(self.source))
        if files is not None:
            keyed["_files"] = files
        if keyed.get("kind") in tasks.names():   # a benchmark folder's reader (and writer) are keyed by their code
            keyed["_code"] = tasks.code(keyed["kind"])
        return self.cache_dir / "prepared" / f"{self.source.get('kind', 'symbolic')}-{digest(keyed, 10)}"

    def check_paths(self) -> None:
        """Fail before training when a user-given data directory or split file is missing."""
        if self.data_dir is None:
            return
        if not self.data_dir.is_dir():
            raise ConfigError("task.datamodule.data_dir", str(self.data_dir), "directory not found; point it at a folder "
                              f"holding {', '.join(s + '.jsonl' for s in SPLITS)} (or null to generate data)")
        for split, path in self.files().items():
            if not path.is_file():
                raise ConfigError("task.datamodule.data_dir", str(self.data_dir), f"has no {path.name} ({split} split)")

    def prepare_data(self) -> None:
        files = self.files()
        if self.data_dir is None and not all(p.is_file() for p in files.values()):
            for split, records in build_splits(self.source, self.cache_dir, self.made_up).items():
                write_jsonl_atomic(files[split], records)
        for path in files.values():
            check_jsonl(path, REQUIRED_FIELDS)

    # -- examples ------------------------------------------------------------------------------
    def set_tokenizer(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is None:
            raise RuntimeError("set_tokenizer() must be called before setup()")
        if self.examples:
            return
        files = self.files()
        raw = datasets.load_dataset(
            "json", data_files={s: str(p) for s, p in files.items()}, cache_dir=str(self.cache_dir / "hf_datasets")
        )
        for split in SPLITS:
            limit = self.max_eval_samples.get(split)
            rows = raw[split] if not limit else raw[split].select(range(min(limit, len(raw[split]))))
            self.examples[split] = [self._encode(i, r, files[split]) for i, r in enumerate(rows)]

    def template_text(self) -> str:
        """The words the prompt format adds around the records' fields (for a word-level vocabulary)."""
        if self.prompt_format == "moslora":
            return commonsense.train_prompt("", "") + commonsense.eval_prompt("")
        return ""

    def _ids(self, text: str) -> list[int]:
        return [self.tokenizer.bos_token_id, *self.tokenizer(text, add_special_tokens=False)["input_ids"]]

    def _encode(self, idx: int, rec: dict, path: Path) -> dict:
        tok = self.tokenizer
        if self.prompt_format == "moslora":
            full = self._ids(commonsense.train_prompt(rec["inputs"], rec["targets"])) + [tok.eos_token_id]
            prompt = self._ids(commonsense.train_prompt(rec["inputs"], ""))
            generate_from = self._ids(commonsense.eval_prompt(rec["inputs"]))
        else:
            prompt = generate_from = self._ids(self.prompt_template.format(**rec))
            full = prompt + tok(" " + rec["targets"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        if len(full) > self.max_length and self.overlong == "truncate":  # finetune.py: cut at cutoff_len, no EOS
            full = full[: self.max_length]
        elif len(full) > self.max_length and self.overlong == "llama_factory":
            source, target = llama_factory_truncation(prompt, full[len(prompt):], self.max_length)
            full, prompt = source + target, source
        elif len(full) > self.max_length:
            raise DataError(
                f"{path}: record {idx + 1} is {len(full)} tokens, over task.max_length={self.max_length}; "
                "shorten the record, raise the limit (set ++task.datamodule.max_length=<tokens>) or cut such records "
                "(set ++task.datamodule.overlong=truncate)"
            )
        n_prompt = min(len(prompt), len(full))
        labels = list(full) if self.loss_on_prompt else [IGNORE_INDEX] * n_prompt + full[n_prompt:]
        return {"idx": idx, "input_ids": full, "labels": labels, "prompt_ids": generate_from, "targets": rec["targets"],
                "task": rec["task"], "domain": rec.get("domain") or "", "metric": rec.get("metric") or "em",
                "answer": rec.get("answer") or ""}

    # -- batches -------------------------------------------------------------------------------
    def collate_train(self, batch: list[dict]) -> dict:
        n = max(len(b["input_ids"]) for b in batch)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(batch), n), pad, dtype=torch.long)
        labels = torch.full((len(batch), n), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), n), dtype=torch.long)
        for i, b in enumerate(batch):
            k = len(b["input_ids"])
            ids[i, :k] = torch.tensor(b["input_ids"])
            labels[i, :k] = torch.tensor(b["labels"])
            mask[i, :k] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    def collate_eval(self, batch: list[dict]) -> dict:
        out = self.collate_train(batch)
        n = max(len(b["prompt_ids"]) for b in batch)
        prompt = torch.full((len(batch), n), self.tokenizer.pad_token_id, dtype=torch.long)
        pmask = torch.zeros((len(batch), n), dtype=torch.long)
        for i, b in enumerate(batch):  # left padding for generation
            k = len(b["prompt_ids"])
            prompt[i, n - k:] = torch.tensor(b["prompt_ids"])
            pmask[i, n - k:] = 1
        out.update(prompt_ids=prompt, prompt_mask=pmask, idx=torch.tensor([b["idx"] for b in batch]),
                   **{k: [b[k] for b in batch] for k in RECORD_KEYS})
        return out

    def _loader(self, split: str, train: bool) -> DataLoader:
        return seeded_loader(self, self.examples[split], train, self.collate_train if train else self.collate_eval)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)
