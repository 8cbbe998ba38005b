"""MMLU as SMoRA's OpenCompass config scores it (``mmlu_ppl_ac766d``): the texts byte for byte, the perplexity
score and its prediction, and both group means OpenCompass's summarizer prints (``mmlu`` and ``mmlu-weighted``)."""

import json
import types

import pytest
import torch

from rankmix.benchmarks import harness
from rankmix.data.multidomain_like import (
    LAW_SUBJECTS,
    MEDICAL_SUBJECTS,
    OTHER_SUBJECTS,
    write_multidomain_like,
)

# made-up records in cais/mmlu's fields; spaces, newlines and braces on purpose
RECORD = {"question": " Which river crosses the town of Example?\n", "choices": ["Ember", "Willow ", "Quartz", "Maple"],
          "answer": 2}
DEV = [{"question": "Pick the colour of the sample.", "choices": ["red", "blue", "green", "grey"], "answer": 1},
       {"question": "How many sides has the shape?", "choices": ["3", "4", "5", "6"], "answer": 3}]


def test_zero_shot_text_is_byte_exact():
    prompts = harness.opencompass_mmlu_prompts("high_school_geography", RECORD)
    assert list(prompts) == ["A", "B", "C", "D"]
    assert prompts["C"] == ("The following are multiple choice questions (with answers) about  high school geography."
                            "\n\n Which river crosses the town of Example?\n\nA. Ember\nB. Willow \nC. Quartz\n"
                            "D. Maple\nAnswer: C")
    assert prompts["A"] == prompts["C"][:-1] + "A"  # the candidates differ in their last letter only


def test_fixk_examples_are_joined_as_opencompass_joins_them():
    text = harness.opencompass_mmlu_prompts("college_medicine", RECORD, DEV)["B"]
    assert text == ("The following are multiple choice questions (with answers) about  college medicine.\n\n"
                    "Pick the colour of the sample.\nA. red\nB. blue\nC. green\nD. grey\nAnswer: B\n\n"
                    "How many sides has the shape?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer: D\n\n"
                    " Which river crosses the town of Example?\n\nA. Ember\nB. Willow \nC. Quartz\nD. Maple\nAnswer: B")


def test_fields_are_filled_one_replace_at_a_time():
    # safe_format replaces {input} first, then {A}..{D}, {target}: a brace in the question is filled too
    record = {"question": "Which is {A}?", "choices": ["w", "x", "y", "z"], "answer": 0}
    text = harness.opencompass_mmlu_prompts("anatomy", record)["D"]
    assert text.endswith("\n\nWhich is w?\nA. w\nB. x\nC. y\nD. z\nAnswer: D")
    record = {"question": "q", "choices": ["{input}", "b", "c", "d"], "answer": 0}  # {input} already replaced
    assert "\nA. {input}\n" in harness.opencompass_mmlu_prompts("anatomy", record)["A"]


def test_subjects_are_opencompass_57():
    assert len(harness.MMLU_SUBJECTS) == len(set(harness.MMLU_SUBJECTS)) == 57
    assert {"professional_law", "high_school_government_and_politics"} <= set(harness.mmlu_subjects())


class _Tok:
    """A character tokenizer with a BOS, as a test stand-in."""
    pad_token_id, eos_token_id, bos, truncation_side = 0, 1, 2, "right"

    def __call__(self, text, add_special_tokens=True, truncation=False, max_length=None):
        ids = [3 + (ord(c) % 60) for c in text]
        if truncation and max_length and len(ids) + 1 > max_length:
            ids = ids[len(ids) + 1 - max_length:] if self.truncation_side == "left" else ids[:max_length - 1]
        return {"input_ids": ([self.bos] if add_special_tokens else []) + ids}


@pytest.fixture(scope="module")
def model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, max_position_embeddings=1024)).eval()


def test_score_is_opencompass_mean_cross_entropy(model):
    tok = _Tok()
    texts = list(harness.opencompass_mmlu_prompts("anatomy", RECORD).values())
    with torch.no_grad():
        alone = [harness.opencompass_ppl(model, tok, [t], 1024)[0] for t in texts]
        for t, score in zip(texts, alone, strict=True):
            ids = torch.tensor([tok(t)["input_ids"]])
            loss = model(input_ids=ids, labels=ids).loss  # mean over the L - 1 targets
            assert score == pytest.approx(float(loss) * (ids.shape[1] - 1) / ids.shape[1], rel=1e-5)  # / L
        # left padding without position ids, as OpenCompass batches it: a short text's score moves with its batch
        short = "tiny"
        padded = harness.opencompass_ppl(model, tok, [texts[0], short], 1024)
    assert padded[0] == pytest.approx(alone[0], rel=1e-5)
    assert padded[1] != pytest.approx(harness.opencompass_ppl(model, tok, [short], 1024)[0], rel=1e-4)


def test_prediction_is_the_lowest_score_first_on_ties(model, monkeypatch):
    fake = {"A": 2.0, "B": 1.0, "C": 1.0, "D": 3.0}
    monkeypatch.setattr(harness, "opencompass_ppl",
                        lambda m, t, texts, n: [fake[x[-1]] for x in texts])
    out = harness.mmlu_subject(model, _Tok(), "anatomy", [RECORD, RECORD], [], 1, 1024)
    assert [r["prediction"] for r in out] == ["B", "B"] and not out[0]["correct"]


def test_group_means_plain_and_weighted():
    acc = {"professional_law": 30.0, "jurisprudence": 60.0, "international_law": 60.0}
    sizes = {"professional_law": 1534, "jurisprudence": 108, "international_law": 121}
    plain, weighted = harness.group_means(acc, sizes, list(acc))
    assert plain == pytest.approx(50.0)
    assert weighted == pytest.approx((30 * 1534 + 60 * 229) / 1763)
    assert plain - weighted > 15  # professional_law dominates the weighted mean


def test_mmlu_on_the_suite_records_both_means(tmp_path, model):
    from rankmix.backbones import byte_bpe_tokenizer

    suite = write_multidomain_like(tmp_path / "suite", seed=5, n_mmlu=6, n_gsm8k=2, n_humaneval=1, n_ds1000=1)
    corpus = tmp_path / "train.jsonl"
    corpus.write_text(json.dumps({"inputs": "The following are multiple choice questions", "targets": "Answer: A"}))
    tok = byte_bpe_tokenizer([corpus], tmp_path / "tok", 300)
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    lm_model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                            num_hidden_layers=1, num_attention_heads=2,
                                            max_position_embeddings=1024)).eval()
    lm = types.SimpleNamespace(model=lm_model, tokenizer=tok, batch_size=4, max_length=1024)
    subjects = [*LAW_SUBJECTS, *MEDICAL_SUBJECTS, *OTHER_SUBJECTS]
    settings = {"dataset_path": str(suite["mmlu"]), "subjects": subjects, "law": list(LAW_SUBJECTS),
                "medical": list(MEDICAL_SUBJECTS), "num_fewshot": 2, "limit": 5}
    metrics = harness.mmlu(lm, settings, tmp_path / "out")
    groups = {"overall": subjects, "law": list(LAW_SUBJECTS), "medical": list(MEDICAL_SUBJECTS)}
    assert set(metrics) == {f"mmlu/{s}" for s in subjects} | {f"mmlu/{g}{w}" for g in groups
                                                              for w in ("", "_weighted")}
    records = [json.loads(line) for line in (tmp_path / "out" / "mmlu.jsonl").read_text().splitlines()]
    assert len(records) == 5 * len(subjects) and all(r["n_examples"] == 2 for r in records)
    for s in subjects:
        mine = [r for r in records if r["subject"] == s]
        assert metrics[f"mmlu/{s}"] == pytest.approx(100 * sum(r["correct"] for r in mine) / len(mine))
        assert all(r["prediction"] == min(r["ppl"], key=lambda k: (r["ppl"][k], k)) for r in mine)
    for g, members in groups.items():
        assert metrics[f"mmlu/{g}"] == pytest.approx(sum(metrics[f"mmlu/{s}"] for s in members) / len(members))


def test_groups_must_be_evaluated_subjects(tmp_path, model):
    lm = types.SimpleNamespace(model=model, tokenizer=_Tok(), batch_size=4, max_length=1024)
    with pytest.raises(Exception, match="task.benchmarks.mmlu.law"):
        harness.mmlu(lm, {"subjects": ["jurisprudence"], "law": ["professional_law"], "medical": []}, tmp_path)
