"""SMoRA Tab. 2's training mixture ("following Tian et al., 2024", HydraLoRA): general, medical, law, math and code
instruction data, concatenated as LLaMA-Factory concatenates a dataset list.

Two ways in, both ending as instruction records ``{inputs, targets, task}`` (``task`` = the domain):

- ``mixed_dir``: SMoRA's own files, ``<mixed_dir>/<domain>/train.json`` (its ``data/mixed_datasets``; LLaMA-Factory's
  alpaca format ``instruction``/``input``/``output``). The generated tiny suite is written in this layout.
- ``sources``: ``{name: {domain, train_file, format}}``, one entry per public dataset, with ``train_file`` a local
  JSON/JSON-lines file or a hub id (its ``train`` split, ``config`` where the hub set has several) and ``format``
  one of ``FORMATS``; they are concatenated in name order.

The user turn is LLaMA-Factory's: ``instruction + "\\n" + input`` (just the instruction when input is empty).
``val_size`` of the mixture is held out as LLaMA-Factory's ``val_size`` does (``train_test_split`` with the seed);
the held-out records are the validation and test split of the data module (loss only: the table's scores come
from the benchmarks, ``rankmix.modules.benchmark_lm``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from rankmix.data.files import check_fields, read_records
from rankmix.data.hub_files import local_dataset_kwargs
from rankmix.errors import ConfigError, DataError, first_line

# record format -> (instruction field, input field or None, response field)
FORMATS = {
    "alpaca": ("instruction", "input", "output"),          # SMoRA's mixed files, GenMedGPT, iCliniq, Lawyer-Instruct
    "dolly": ("instruction", "context", "response"),       # databricks/databricks-dolly-15k
    "gsm8k": ("question", None, "answer"),                 # openai/gsm8k (main)
    "prompt_completion": ("prompt", None, "completion"),   # HuggingFaceH4/CodeAlpaca_20K
}
MIXED_WHERE = ("SMoRA's data/mixed_datasets/<domain>/train.json (its README: the Google Drive folder "
               "1VgKYdlxgjkS8yqdupK4hR3MFWAod7fUE); or list public sets under task.datamodule.source.sources")


def user_turn(instruction: str, extra: str | None) -> str:
    return f"{instruction}\n{extra}" if extra else instruction


def to_instruction(source, records: list[dict], fmt: str, domain: str) -> list[dict]:
    instruction, extra, response = FORMATS[fmt]
    check_fields(source, records, tuple(f for f in (instruction, response) if f), f"{fmt} records")
    return [{"inputs": user_turn(r[instruction], r.get(extra) if extra else None), "targets": r[response],
             "task": domain, "domain": domain} for r in records]


def read_source(train_file: str, config: str | None = None) -> list[dict]:
    """A local JSON / JSON-lines file, or the ``train`` split of a hub dataset."""
    if Path(train_file).is_file():
        return read_records(Path(train_file))
    import datasets

    try:
        return list(datasets.load_dataset(train_file, config, split="train", **local_dataset_kwargs(train_file)))
    except Exception as e:  # noqa: BLE001 -- offline, unknown id, bad format: one message
        reason = first_line(e)
        raise DataError(f"{train_file}: not a local file and not loadable from the hub ({reason})") from None


def mixture(source: Mapping) -> list[dict]:
    """Every training record of the mixture, domain by domain in the configured order."""
    if source.get("mixed_dir"):
        root = Path(source["mixed_dir"])
        records = []
        for domain in source["domains"]:
            path = root / domain / "train.json"
            if not path.is_file():
                raise DataError(f"{path}: not found; task.datamodule.source.mixed_dir needs {MIXED_WHERE}")
            records += to_instruction(path, read_records(path), "alpaca", domain)
        return records
    if not source.get("sources"):
        raise ConfigError("task.datamodule.source.mixed_dir", None, f"is required (or sources); {MIXED_WHERE}")
    records = []
    for name, spec in sorted(source["sources"].items()):
        for key in ("domain", "train_file", "format"):
            if not spec.get(key):
                raise ConfigError(f"task.datamodule.source.sources.{name}.{key}", spec.get(key), "is required")
        if spec["format"] not in FORMATS:
            raise ConfigError(f"task.datamodule.source.sources.{name}.format", spec["format"],
                              f"must be one of {', '.join(FORMATS)}")
        records += to_instruction(spec["train_file"], read_source(spec["train_file"], spec.get("config")),
                                  spec["format"], spec["domain"])
    return records


def splits(source: Mapping) -> dict[str, list[dict]]:
    """``val_size`` of the mixture held out (LLaMA-Factory's ``train_test_split(test_size=val_size, seed)``)."""
    import datasets

    records = mixture(source)
    val_size = source.get("val_size") or 0
    if not val_size:
        raise ConfigError("task.datamodule.source.val_size", val_size, "must hold out some records (validation loss)")
    parts = datasets.Dataset.from_list(records).train_test_split(test_size=val_size, seed=int(source["seed"]))
    held_out = list(parts["test"])
    return {"train": list(parts["train"]), "validation": held_out, "test": held_out}
