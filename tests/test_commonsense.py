"""MoSLoRA's commonsense protocol (LLM-Adapters): byte-exact prompts, answer extraction, loaders, accuracy."""

from pathlib import Path

import pytest

from rankmix.data.commonsense import (
    DATASETS,
    eval_prompt,
    extract_answer,
    load_test,
    prediction,
    score_commonsense,
    train_prompt,
)
from rankmix.errors import DataError

FIXTURES = Path(__file__).parent / "fixtures" / "commonsense"
S16 = " " * 16


def test_training_wrapper_is_byte_exact():
    expected = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
                "request.  # noqa: E501\n"
                "\n"
                + S16 + "### Instruction:\n"
                + S16 + "Q?\n"
                + S16 + "\n"
                + S16 + "### Response:\n"
                + S16 + "the correct answer is true")
    assert train_prompt("Q?", "the correct answer is true") == expected


def test_evaluation_wrapper_is_byte_exact():
    expected = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
                "request. \n"
                "\n"
                + S16 + "### Instruction:\n"
                + S16 + "Q?\n"
                "\n"
                + S16 + "### Response:\n"
                + S16)
    assert eval_prompt("Q?") == expected
    assert prediction(eval_prompt("Q?") + "the correct answer is false") == "the correct answer is false"


@pytest.mark.parametrize(("dataset", "text", "answer"), [
    ("boolq", "the correct answer is false", "false"),
    ("boolq", "The correct answer is True", ""),  # case-sensitive, as the evaluator
    ("piqa", "solution2 because solution1 fails", "solution2"),  # the first match wins
    ("social_i_qa", "answer1/answer2/answer3", "answer1"),  # echoing the format gives answer1
    ("hellaswag", "ending4", "ending4"),
    ("winogrande", "option 2", ""),
    ("ARC-Easy", "the correct answer is answer5", "answer5"),
])
def test_answer_extraction(dataset, text, answer):
    assert extract_answer(dataset, text) == answer


def test_fixtures_cover_every_test_set_and_score():
    records = []
    for name in DATASETS:
        (rec,) = load_test(FIXTURES, name)
        records.append({"task": name, "answer": rec["answer"], "prediction": rec["output"]})
    scores = score_commonsense(records)
    assert scores["average"] == 100.0 and len(scores) == len(DATASETS) + 1
    wrong = [{**r, "prediction": "no idea"} for r in records[:4]] + records[4:]
    assert score_commonsense(wrong)["average"] == 50.0


def test_sizes_are_the_protocol_sizes():
    assert sum(size for size, _ in DATASETS.values()) == 3270 + 1830 + 1954 + 10042 + 1267 + 2376 + 1172 + 500


def test_malformed_and_missing_files(tmp_path):
    (tmp_path / "boolq").mkdir()
    (tmp_path / "boolq" / "test.json").write_text('[{"instruction": "q", "input": "", "output": "o"}]')
    with pytest.raises(DataError, match=r"boolq/test.json: record 1 lacks field 'answer'"):
        load_test(tmp_path, "boolq")
    with pytest.raises(DataError, match="LLM-Adapters"):
        load_test(tmp_path, "piqa")
