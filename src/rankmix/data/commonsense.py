"""Commonsense reasoning as MoSLoRA evaluates it: the LLM-Adapters protocol (commonsense_170k, 8 test sets).

Records (train and test): ``{instruction, input, output, answer}``; ``input`` is always empty here.
Prompts are LLM-Adapters' Alpaca wrappers, byte for byte (read in AGI-Edgerunners/LLM-Adapters:
``finetune.py`` at 063e3d4 and ``commomsense_evaluate.py`` at e0efdc0; MoSLoRA copies both). Their indented
f-strings put 16 spaces at the start of continuation lines; the training wrapper also carries the text
``  # noqa: E501`` inside its first line and 16 spaces on the line between instruction and response,
while the evaluation wrapper ends the first line with one space and leaves the blank lines empty.
The prediction is the text after ``### Response:``; the answer is the first match of the test set's
case-sensitive pattern (or ""), and accuracy is exact equality with ``answer``.
"""

from __future__ import annotations

import re
from pathlib import Path

from rankmix.data.files import read_records
from rankmix.errors import DataError

# name → (test-set size, answer pattern)
DATASETS: dict[str, tuple[int, str]] = {
    "boolq": (3270, r"true|false"),
    "piqa": (1830, r"solution1|solution2"),
    "social_i_qa": (1954, r"answer1|answer2|answer3|answer4|answer5"),
    "hellaswag": (10042, r"ending1|ending2|ending3|ending4"),
    "winogrande": (1267, r"option1|option2"),
    "ARC-Easy": (2376, r"answer1|answer2|answer3|answer4|answer5"),
    "ARC-Challenge": (1172, r"answer1|answer2|answer3|answer4|answer5"),
    "openbookqa": (500, r"answer1|answer2|answer3|answer4|answer5"),
}
FIELDS = ("instruction", "input", "output", "answer")
PAD = " " * 16
HEAD = "Below is an instruction that describes a task. Write a response that appropriately completes the request."


def train_prompt(instruction: str, output: str) -> str:
    """LLM-Adapters ``finetune.generate_prompt`` for a record without input (the text the loss sees)."""
    return (f"{HEAD}  # noqa: E501\n\n{PAD}### Instruction:\n{PAD}{instruction}\n{PAD}\n"
            f"{PAD}### Response:\n{PAD}{output}")


def eval_prompt(instruction: str) -> str:
    """LLM-Adapters ``commomsense_evaluate.generate_prompt`` for a record without input."""
    return f"{HEAD} \n\n{PAD}### Instruction:\n{PAD}{instruction}\n\n{PAD}### Response:\n{PAD}"


def prediction(decoded: str) -> str:
    """The evaluator's ``decoded.split("### Response:")[1].strip()`` (the whole text when the marker is absent)."""
    parts = decoded.split("### Response:")
    return (parts[1] if len(parts) > 1 else parts[0]).strip()


def extract_answer(dataset: str, text: str) -> str:
    """First match of the data set's pattern in the stripped text, else ""."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown commonsense data set {dataset!r}; known: {', '.join(DATASETS)}")
    found = re.findall(DATASETS[dataset][1], text.strip())
    return found[0] if found else ""


def load_test(root: Path, dataset: str) -> list[dict]:
    """``{root}/{dataset}/test.json`` (LLM-Adapters' layout), checked field by field."""
    path = Path(root) / dataset / "test.json"
    if not path.is_file():
        raise DataError(f"{path}: not found; use LLM-Adapters' dataset/{dataset}/test.json "
                        "(github.com/AGI-Edgerunners/LLM-Adapters) and point task.test_dir at its dataset/ folder")
    records = read_records(path)
    for i, rec in enumerate(records, 1):
        missing = [k for k in FIELDS if k not in rec]
        if missing:
            raise DataError(f"{path}: record {i} lacks field {missing[0]!r}; records need {', '.join(FIELDS)}")
    return records


def score_commonsense(records: list[dict]) -> dict[str, float]:
    """Accuracy × 100 per data set (``task`` field) from ``{prediction, answer}``, and their mean ``average``."""
    per: dict[str, list[float]] = {}
    for r in records:
        per.setdefault(r["task"], []).append(100.0 * (extract_answer(r["task"], r["prediction"]) == r["answer"]))
    out = {f"acc/{name}": sum(v) / len(v) for name, v in sorted(per.items())}
    if out:
        out["average"] = sum(out.values()) / len(out)
    return out
