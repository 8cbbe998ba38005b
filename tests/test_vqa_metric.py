"""The official VQA accuracy on hand-worked examples."""

import pytest

from rankmix.metrics.vqa import normalize_answer, score_vqa, vqa_accuracy


@pytest.mark.parametrize(("raw", "normalised"), [
    ("Two", "2"),                      # number words become digits, lower case
    ("a red ball.", "red ball"),       # articles dropped, a final period stripped
    ("3.5", "3.5"),                    # a decimal point stays
    ("dont know", "don't know"),       # contractions restored
    ("yes!\n", "yes"),                 # newline to space, punctuation removed
    ("black-and-white", "black and white"),  # punctuation between words becomes a space
    ("1,000", "1000"),                 # comma between digits dropped
])
def test_prediction_normalisation(raw, normalised):
    assert normalize_answer(raw) == normalised


def test_leave_one_out_accuracy():
    # 10 annotators: "2" said by 2 of them. Leaving out one of the two leaves 1 match (1/3), else 2 matches (2/3):
    # mean = (2 * 1/3 + 8 * 2/3) / 10 = 0.6
    answers = ["2", "2"] + ["3"] * 8
    assert vqa_accuracy("two", answers) == pytest.approx(60.0)
    # "3" said by 8: leaving out any one leaves >= 7 matches: min(1, ·) = 1 everywhere
    assert vqa_accuracy("3", answers) == pytest.approx(100.0)
    # 3 matches: leaving one of them out leaves 2 (2/3), the others leave 3 (1): (3 * 2/3 + 7) / 10 = 0.9
    assert vqa_accuracy("red", ["red"] * 3 + ["blue"] * 7) == pytest.approx(90.0)
    assert vqa_accuracy("green", ["red"] * 10) == 0.0


def test_answers_get_punctuation_only_when_they_disagree():
    # agreeing answers are compared as written: "yes." never equals the normalised prediction "yes"
    assert vqa_accuracy("yes", ["yes."] * 10) == 0.0
    # disagreeing answers are punctuation-processed: "yes." counts as "yes"
    assert vqa_accuracy("yes", ["yes."] * 9 + ["no"]) == pytest.approx(100.0)


def test_breakdowns_by_answer_and_question_type():
    records = [
        {"prediction": "yes", "answers": ["yes"] * 10, "answer_type": "yes/no", "question_type": "is the"},
        {"prediction": "no", "answers": ["yes"] * 10, "answer_type": "yes/no", "question_type": "is the"},
        {"prediction": "2", "answers": ["2"] * 10, "answer_type": "number", "question_type": "how many"},
    ]
    s = score_vqa(records)
    assert s["accuracy"] == pytest.approx(200 / 3)
    assert s["accuracy/yes/no"] == 50.0 and s["accuracy/number"] == 100.0 and s["question_type/how many"] == 100.0
    grouped = score_vqa([{"prediction": "red", "answers": ["red"] * 10, "question_type": "what color are the"},
                         {"prediction": "cat", "answers": ["red"] * 10, "question_type": "what is the color of the"},
                         {"prediction": "left", "answers": ["left"] * 10, "question_type": "where is the"}])
    assert (grouped["group/color"], grouped["group/where"]) == (50.0, 100.0) and "group/time" not in grouped
