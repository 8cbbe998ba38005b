"""Visual instruction data in the LLaVA conversation format (MoSLoRA Tab. 5: ``llava_v1_5_mix665k.json`` and its
image folder), encoded as XTuner's ``LLaVADataset`` encodes it (the official recipe runs XTuner).

``train_file`` is a JSON array of records ``{id, image?, conversations: [{from: human|gpt, value}, ...]}``;
``image`` is a path under ``images_dir`` (a record without one is text only). Per record:

1. turns (XTuner's ``llava_map_fn``): leading ``gpt`` messages are dropped; each human message with ``<image>`` has
   it moved to its front (``"<image>\\n" + rest``); each gpt message closes a turn (input, output);
2. template (``template_map_fn``): input → ``INSTRUCTION.format(input=...)``, output → output + ``SUFFIX``; the
   templates are XTuner's ``PROMPT_TEMPLATE`` entries (``CHAT_TEMPLATES``), whose suffix is the end of turn;
3. tokens (``encode_fn``): BOS before the first turn, inputs without loss, outputs with loss, ``SEP`` between turns
   without loss, cut to ``max_length`` with the image counted as one token (XTuner's ``max_length = 2048 − 576``);
   the image placeholder then becomes the vision tower's ``image_seq_length`` ``<image>`` tokens, no loss.

Images (``LLaVADataset.__getitem__``): RGB, padded to a square with the processor's mean colour
(``pad_image_to_square``, XTuner's ``expand2square``), then CLIP's image processor.

Validation and test compute the loss on ``val_size`` records drawn (seeded) from the training file: XTuner holds
nothing out and has no validation; the benchmarks (``rankmix.benchmarks.multimodal``) are the test.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from rankmix.data.loading import pad_right, seeded_loader
from rankmix.errors import ConfigError, DataError

IGNORE_INDEX = -100
IMAGE_TOKEN = "<image>"

# XTuner's xtuner/utils/templates.py PROMPT_TEMPLATE (llama3_chat: the LLaMA-3 row; internlm2_chat: InternLM2's).
CHAT_TEMPLATES = {
    "llama3_chat": {
        "system": "<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>",
        "instruction": "<|start_header_id|>user<|end_header_id|>\n\n{input}<|eot_id|>"
                       "<|start_header_id|>assistant<|end_header_id|>\n\n",
        "suffix": "<|eot_id|>", "sep": "", "stop_words": ["<|eot_id|>"],
    },
    "internlm2_chat": {
        "system": "<|im_start|>system\n{system}<|im_end|>\n",
        "instruction": "<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n",
        "suffix": "<|im_end|>", "sep": "\n", "stop_words": ["<|im_end|>"],
    },
}


def chat_template(name: str) -> dict:
    if name not in CHAT_TEMPLATES:
        raise ConfigError("task.datamodule.template", name, f"unknown; templates: {', '.join(CHAT_TEMPLATES)}")
    return CHAT_TEMPLATES[name]


def template_markers(template: dict) -> list[str]:
    """The template's special tokens (``<|eot_id|>``, ...): single tokens of the real tokenizers, added as special
    tokens to a word-level one so that they split off the words they touch (``B<|eot_id|>``)."""
    import re

    return sorted({m for text in template.values() if isinstance(text, str) for m in re.findall(r"<\|[^|]+\|>", text)})


def turns(record: dict) -> list[tuple[str, str]]:
    """(input, output) turns of a LLaVA record, as XTuner's ``llava_map_fn``."""
    messages = list(record["conversations"])
    while messages and messages[0]["from"] == "gpt":
        messages = messages[1:]
    out, text = [], ""
    for m in messages:
        if m["from"] == "human":
            value = m["value"]
            if IMAGE_TOKEN in value:
                value = (IMAGE_TOKEN + "\n" + value.replace(IMAGE_TOKEN, "").strip()).strip()
            text += value
        else:
            out.append((text, m["value"]))
            text = ""
    return out


def prompt_text(question: str, template: dict, with_image: bool) -> str:
    """The model's input for one user turn (evaluation): the image first, as in training."""
    body = f"{IMAGE_TOKEN}\n{question}" if with_image else question
    return template["instruction"].format(input=body)


def encode_text(tokenizer, text: str, image_token_id: int) -> list[int]:
    """Tokens of ``text``, each ``<image>`` kept as one ``image_token_id`` (XTuner's split around the image)."""
    ids: list[int] = []
    for i, chunk in enumerate(text.split(IMAGE_TOKEN)):
        if i:
            ids.append(image_token_id)
        ids += tokenizer.encode(chunk, add_special_tokens=False) if chunk else []
    return ids


def encode(record_turns: list[tuple[str, str]], tokenizer, template: dict, max_length: int, image_token_id: int,
           image_tokens: int) -> tuple[list[int], list[int]]:
    """(input ids, labels) of a conversation: XTuner's ``template_map_fn`` + ``encode_fn`` (module docstring), the
    image placeholder expanded to ``image_tokens`` tokens after the cut."""
    ids: list[int] = [tokenizer.bos_token_id]
    labels: list[int] = [IGNORE_INDEX]
    for prompt, answer in record_turns:
        x = encode_text(tokenizer, template["instruction"].format(input=prompt), image_token_id)
        y = tokenizer.encode(answer + template["suffix"], add_special_tokens=False)
        ids += x + y
        labels += [IGNORE_INDEX] * len(x) + y
        if template["sep"]:
            sep = tokenizer.encode(template["sep"], add_special_tokens=False)
            ids += sep
            labels += [IGNORE_INDEX] * len(sep)
    ids, labels = ids[:max_length], labels[:max_length]
    out_ids, out_labels = [], []
    for t, lab in zip(ids, labels, strict=True):
        n = image_tokens if t == image_token_id else 1
        out_ids += [t] * n
        out_labels += [IGNORE_INDEX] * n if t == image_token_id else [lab]
    return out_ids, out_labels


def expand_to_square(image, background: tuple[int, int, int]):
    """The image centred on a square canvas of ``background`` (XTuner's ``expand2square``)."""
    from PIL import Image

    w, h = image.size
    if w == h:
        return image
    side = max(w, h)
    canvas = Image.new(image.mode, (side, side), background)
    canvas.paste(image, ((side - w) // 2, (side - h) // 2))
    return canvas


def pixel_values_of(image, processor, pad_to_square: bool = True) -> torch.Tensor:
    """(3, H, W) for the vision tower from a PIL image or its path: RGB, padded square in the processor's mean
    colour, CLIP-processed."""
    from PIL import Image

    image = (image if isinstance(image, Image.Image) else Image.open(image)).convert("RGB")
    if pad_to_square:
        image = expand_to_square(image, tuple(int(x * 255) for x in processor.image_mean))
    return processor(image, return_tensors="pt")["pixel_values"][0]


def read_records(path: Path, images_dir: Path) -> list[dict]:
    """The records of a LLaVA JSON file, each checked: its conversations, and its image on disk."""
    try:
        records = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: line {e.lineno}: not JSON ({e.msg}); a LLaVA file is one JSON array") from None
    if not isinstance(records, list):
        raise DataError(f"{path}: a LLaVA file is a JSON array of records, found a {type(records).__name__}")
    for i, r in enumerate(records):
        where = f"{path}: record {i} (id {r.get('id', '?')!r})" if isinstance(r, dict) else f"{path}: record {i}"
        conv = r.get("conversations") if isinstance(r, dict) else None
        if not isinstance(conv, list) or not conv:
            raise DataError(f"{where}: needs 'conversations', a list of {{from, value}} messages")
        for j, m in enumerate(conv):
            if not isinstance(m, dict) or m.get("from") not in ("human", "gpt") or not isinstance(m.get("value"), str):
                raise DataError(f"{where}: conversations[{j}] must be {{from: human|gpt, value: <text>}}, got {m!r}")
        if not turns(r):
            raise DataError(f"{where}: no gpt answer after a human message: nothing to learn")
        shown = sum(m["value"].count(IMAGE_TOKEN) for m in conv if m["from"] == "human")
        if shown != (1 if r.get("image") is not None else 0):
            raise DataError(f"{where}: {shown} {IMAGE_TOKEN} placeholders in its human messages; a record with an "
                            f"image has exactly one, a text-only record none")
        if r.get("image") is not None and not (images_dir / r["image"]).is_file():
            raise DataError(f"{where}: image {r['image']!r} not found under images_dir {images_dir}")
    return records


def answered(record: dict, tokenizer, template: dict, max_length: int, image_token_id: int) -> bool:
    """Whether an answer token of ``record`` is left after the cut at ``max_length``: XTuner trains only on such
    records (its filters ``len(conversation) > 0`` and ``any(label >= 0)``). Only a first prompt that could reach
    the cut is tokenised: a character is at most 4 tokens (UTF-8 bytes), and every answer has its suffix."""
    record_turns = turns(record)
    if not record_turns:
        return False
    prompt = template["instruction"].format(input=record_turns[0][0])
    if 4 * len(prompt) + 3 < max_length:
        return True
    return 1 + len(encode_text(tokenizer, prompt, image_token_id)) < max_length


class ConversationSet(Dataset):
    """The encoded records (encoded when read: 665k conversations are not tokenised up front)."""

    def __init__(self, records: list[dict], dm: LlavaInstructDataModule):
        self.records, self.dm = records, dm

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        r, dm = self.records[i], self.dm
        ids, labels = encode(turns(r), dm.tokenizer, dm.template, dm.max_length, dm.image_token_id, dm.image_tokens)
        item = {"idx": i, "input_ids": ids, "labels": labels}
        if r.get("image") is not None and dm.image_token_id in ids:
            item["pixel_values"] = pixel_values_of(dm.images_dir / r["image"], dm.processor, dm.pad_image_to_square)
        return item


class LlavaInstructDataModule(pl.LightningDataModule):
    def __init__(self, train_file: str | None, images_dir: str | None, template: str, max_length: int,
                 batch_size: int, eval_batch_size: int, cache_dir: str, val_size: int = 32, seed: int = 0,
                 pad_image_to_square: bool = True, generate: dict | None = None, num_workers: int = 0):
        super().__init__()
        self.train_file = Path(train_file) if train_file else None
        self.images_dir = Path(images_dir) if images_dir else None
        self.template = chat_template(template)
        self.max_length, self.batch_size, self.eval_batch_size = int(max_length), int(batch_size), int(eval_batch_size)
        self.cache_dir, self.val_size, self.seed = Path(cache_dir), int(val_size), int(seed)
        self.pad_image_to_square, self.generate, self.num_workers = pad_image_to_square, dict(generate or {}), num_workers
        self.tokenizer = self.processor = None
        self.image_token_id = self.image_tokens = None
        self.examples: dict[str, Dataset] = {}
        self.records: list[dict] = []
        self.answered_only = False
        self.suite: dict[str, str] = {}   # the generated benchmarks' folders (tiny scale), by benchmark

    def check_paths(self) -> None:
        if self.train_file is None:
            if not self.generate:
                raise ConfigError("task.datamodule.train_file", None, "name the LLaVA JSON file (e.g. "
                                  "LLaVA-Instruct-150K/llava_v1_5_mix665k.json), or set generate for the tiny set")
            return
        for key, path, kind in (("train_file", self.train_file, "file"), ("images_dir", self.images_dir, "folder")):
            if path is None or not (path.is_file() if kind == "file" else path.is_dir()):
                raise ConfigError(f"task.datamodule.{key}", str(path), f"{kind} not found")

    def prepare_data(self) -> None:
        if self.train_file is None:
            from rankmix.data.llava_like import write_llava_like

            files = write_llava_like(self.cache_dir / "prepared", **self.generate)
            self.train_file, self.images_dir = Path(files["train_file"]), Path(files["images_dir"])
            self.suite = files["benchmarks"]
        self.records = read_records(self.train_file, self.images_dir)
        self.answered_only = False   # setup leaves out the records without an answer token (it needs the tokenizer)

    def set_model_inputs(self, tokenizer, processor, image_token_id: int, image_tokens: int) -> None:
        """What encoding needs from the model: its tokenizer (with ``<image>``), image processor and image length."""
        self.tokenizer, self.processor = tokenizer, processor
        self.image_token_id, self.image_tokens = image_token_id, image_tokens

    def texts(self) -> list[str]:
        """Every message's text and the template's (what a word-level tokenizer is built over)."""
        t = self.template
        return [m["value"] for r in self.records for m in r["conversations"]] + [
            t["instruction"], t["suffix"], t["sep"], *t["stop_words"]]

    def setup(self, stage: str | None = None) -> None:
        if not self.answered_only:
            kept = [r for r in self.records
                    if answered(r, self.tokenizer, self.template, self.max_length, self.image_token_id)]
            if len(kept) < len(self.records):
                print(f"rankmix: notice: {len(self.records) - len(kept)} of {len(self.records)} records of "
                      f"{self.train_file} have no answer token within max_length={self.max_length} (no turn, or a "
                      "first prompt that long): left out, as XTuner leaves them out", file=sys.stderr)
            if not kept:
                raise DataError(f"{self.train_file}: no record has an answer token within max_length="
                                f"{self.max_length}")
            self.records, self.answered_only = kept, True
        rng = random.Random(self.seed)
        sample = sorted(rng.sample(range(len(self.records)), min(self.val_size, len(self.records))))
        self.examples = {"train": ConversationSet(self.records, self),
                         "val": ConversationSet([self.records[i] for i in sample], self)}
        self.examples["test"] = self.examples["val"]

    def collate(self, items: list[dict]) -> dict:
        ids, mask = pad_right([it["input_ids"] for it in items], self.tokenizer.pad_token_id)
        batch = {"idx": torch.tensor([it["idx"] for it in items]), "input_ids": ids, "attention_mask": mask,
                 "labels": pad_right([it["labels"] for it in items], IGNORE_INDEX)[0]}
        images = [it["pixel_values"] for it in items if "pixel_values" in it]
        if images:  # one per record that shows its image, in batch order: what LLaVA's placeholders take
            batch["pixel_values"] = torch.stack(images)
        return batch

    def train_dataloader(self) -> DataLoader:
        return seeded_loader(self, self.examples["train"], True, self.collate)

    def val_dataloader(self) -> DataLoader:
        return seeded_loader(self, self.examples["val"], False, self.collate)

    def test_dataloader(self) -> DataLoader:
        return seeded_loader(self, self.examples["test"], False, self.collate)
