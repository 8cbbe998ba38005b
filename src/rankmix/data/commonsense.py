"""Commonsense reasoning as MoSLoRA evaluates it: the LLM-Adapters protocol (commonsense_170k, 8 test sets).

Records (train and test): ``{instruction, input, output, answer}``; ``input`` is always empty here.
Prompts are MoSLoRA's Alpaca wrappers, byte for byte (wutaiqiang/MoSLoRA at bba79b5:
``commonsense_reasoning/finetune.py`` and ``commonsense_evaluate.py``, which carry LLM-Adapters' wrappers after
its commit b6f55cd, "fixed unexpected character in prompt"). Their indented f-strings put 16 spaces at the start
of continuation lines; the training wrapper ends its first line with two spaces and has 16 spaces on the line
between instruction and response, while the evaluation wrapper ends the first line with one space and leaves
the blank lines empty.
The prediction is the text after the first ``### Response:`` of the decoded prompt + generation; the answer is the first match of the test set's
case-sensitive pattern (or ""), and accuracy is exact equality with ``answer``.

Training data: LLM-Adapters' ``ft-training_set/commonsense_170k.json`` (or its hub mirror
``zwhe99/commonsense_170k``); 120 records split off for validation with ``train_test_split(test_size=120,
seed=42)``, as ``finetune.py`` does. Records become the instruction module's ``{inputs, targets, answer, task,
metric}`` with ``inputs`` = the instruction and ``targets`` = the output.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from rankmix.data.files import check_fields, read_records
from rankmix.data.hub_files import local_dataset_kwargs
from rankmix.errors import DataError, first_line

log = logging.getLogger(__name__)

TRAIN_WHERE = ("download ft-training_set/commonsense_170k.json of github.com/AGI-Edgerunners/LLM-Adapters (or the "
               "hub dataset zwhe99/commonsense_170k) and set task.datamodule.source.train_file to its path")

# name → (records in LLM-Adapters' dataset/<name>/test.json, answer pattern)
DATASETS: dict[str, tuple[int, str]] = {
    "boolq": (3270, r"true|false"),
    "piqa": (1838, r"solution1|solution2"),
    "social_i_qa": (1954, r"answer1|answer2|answer3|answer4|answer5"),
    "hellaswag": (10042, r"ending1|ending2|ending3|ending4"),
    "winogrande": (1267, r"option1|option2"),
    "ARC-Easy": (2376, r"answer1|answer2|answer3|answer4|answer5"),
    "ARC-Challenge": (1172, r"answer1|answer2|answer3|answer4|answer5"),
    "openbookqa": (500, r"answer1|answer2|answer3|answer4|answer5"),
}
TRAIN_TASK = "commonsense_170k"  # the task name of training (and validation) records: every label set mixed
MIXED_PATTERN = "|".join(dict.fromkeys(p for _, pat in DATASETS.values() for p in pat.split("|")))
FIELDS = ("instruction", "input", "output", "answer")
PAD = " " * 16
HEAD = "Below is an instruction that describes a task. Write a response that appropriately completes the request."


def train_prompt(instruction: str, output: str) -> str:
    """MoSLoRA's ``commonsense_reasoning/finetune.generate_prompt`` for a record without input (the text the loss
    sees): LLM-Adapters' wrapper after its commit b6f55cd, whose first line ends in ``request.`` and two spaces."""
    return (f"{HEAD}  \n\n{PAD}### Instruction:\n{PAD}{instruction}\n{PAD}\n"
            f"{PAD}### Response:\n{PAD}{output}")


def eval_prompt(instruction: str) -> str:
    """LLM-Adapters ``commomsense_evaluate.generate_prompt`` for a record without input."""
    return f"{HEAD} \n\n{PAD}### Instruction:\n{PAD}{instruction}\n\n{PAD}### Response:\n{PAD}"


def prediction(decoded: str) -> str:
    """The evaluator's ``decoded.split("### Response:")[1].strip()`` (the whole text when the marker is absent)."""
    parts = decoded.split("### Response:")
    return (parts[1] if len(parts) > 1 else parts[0]).strip()


def extract_answer(dataset: str, text: str) -> str:
    """First match of the data set's pattern in the stripped text, else "" (for held-out training records,
    task ``commonsense_170k``: the union of all label sets)."""
    if dataset == TRAIN_TASK:
        pattern = MIXED_PATTERN
    elif dataset in DATASETS:
        pattern = DATASETS[dataset][1]
    else:
        raise ValueError(f"unknown commonsense data set {dataset!r}; known: {', '.join(DATASETS)}, {TRAIN_TASK}")
    found = re.findall(pattern, text.strip())
    return found[0] if found else ""


def check_records(path, records: list[dict]) -> list[dict]:
    """Every record has the four fields as strings and an empty ``input`` (the only branch the protocol uses)."""
    check_fields(path, records, FIELDS, "commonsense records")
    for i, rec in enumerate(records, 1):
        if rec["input"]:
            raise DataError(f"{path}: record {i} has a non-empty 'input'; the commonsense protocol's records "
                            "carry everything in 'instruction'")
    return records


def to_instruction(rec: dict, task: str) -> dict:
    """A commonsense record as the instruction module reads it."""
    return {"inputs": rec["instruction"], "targets": rec["output"], "answer": rec["answer"], "task": task,
            "domain": task, "metric": "acc"}


def load_train(source: str) -> list[dict]:
    """commonsense_170k from a local JSON / JSON-lines file, or from the hub by dataset id."""
    path = Path(source)
    if path.is_file():
        return check_records(path, read_records(path))
    import datasets

    try:
        rows = list(datasets.load_dataset(source, split="train", **local_dataset_kwargs(source)))
    except Exception as e:  # noqa: BLE001 -- offline, unknown id, bad format: one message
        reason = first_line(e)
        raise DataError(f"{source}: not a local file and not loadable from the hub ({reason}); {TRAIN_WHERE}") from None
    return check_records(source, rows)


def load_test(root: Path, dataset: str) -> list[dict]:
    """``{root}/{dataset}/test.json`` (LLM-Adapters' layout), checked field by field."""
    path = Path(root) / dataset / "test.json"
    if not path.is_file():
        raise DataError(f"{path}: not found; use LLM-Adapters' dataset/{dataset}/test.json "
                        "(github.com/AGI-Edgerunners/LLM-Adapters) and point task.datamodule.source.test_dir at its dataset/ folder")
    records = check_records(path, read_records(path))
    expected = DATASETS[dataset][0] if dataset in DATASETS else None
    if expected is not None and len(records) != expected:
        log.warning(f"{path}: {len(records)} records; LLM-Adapters' {dataset} test set has {expected}, so this "
                    "run's accuracy is not the protocol's")
    return records


def score_commonsense(records: list[dict]) -> dict[str, float]:
    """Accuracy × 100 per data set (``task`` field) from ``{prediction, answer}``, and their mean ``average``."""
    per: dict[str, list[float]] = {}
    for r in records:
        per.setdefault(r["task"], []).append(100.0 * (extract_answer(r["task"], r["prediction"]) == r["answer"]))
    out = {f"acc/{name}": sum(v) / len(v) for name, v in sorted(per.items())}
    if out:
        out["average"] = sum(out.values()) / len(out)
    from rankmix.uncertainty import combine, record  # per-item scores for the run's table

    for name, v in per.items():
        record(f"acc/{name}", [r.get("idx", i) for i, r in enumerate(records) if r["task"] == name], v)
    combine("average", {f"acc/{name}": 1.0 / len(per) for name in per})
    return out
