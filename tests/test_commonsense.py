"""MoSLoRA's commonsense protocol (LLM-Adapters): byte-exact prompts, answer extraction, loaders, accuracy."""

import json
from pathlib import Path

import pytest

from rankmix.data.commonsense import (
    DATASETS,
    TRAIN_TASK,
    eval_prompt,
    extract_answer,
    load_test,
    load_train,
    prediction,
    score_commonsense,
    train_prompt,
)
from rankmix.data.files import read_records
from rankmix.errors import DataError

FIXTURES = Path(__file__).parent / "fixtures" / "commonsense"
S16 = " " * 16


def llm_adapters_files(root: Path, datasets: list[str], n_train: int, n_test: int, seed: int = 0,
                       n_validation: int = 1) -> dict:
    """A ``commonsense`` source on made-up files in LLM-Adapters' layout: ``n_train`` training records per set in one
    file (``n_validation`` of them held out), ``n_test`` per set in ``<set>/test.json``."""
    from rankmix.tasks.commonsense.made_up import generate_commonsense_like

    train = [rec for _, rec in generate_commonsense_like(datasets, n_train, seed)]
    (root / "train.json").write_text(json.dumps(train))
    for name in datasets:
        (root / "dataset" / name).mkdir(parents=True)
        recs = [rec for set_name, rec in generate_commonsense_like(datasets, n_test, seed + 1) if set_name == name]
        (root / "dataset" / name / "test.json").write_text(json.dumps(recs))
    return {"kind": "commonsense", "train_file": str(root / "train.json"), "test_dir": str(root / "dataset"),
            "datasets": datasets, "n_validation": n_validation, "seed": seed}


def test_training_wrapper_is_byte_exact():
    expected = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
                "request.  \n"
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
    assert sum(size for size, _ in DATASETS.values()) == 3270 + 1838 + 1954 + 10042 + 1267 + 2376 + 1172 + 500


def test_malformed_and_missing_files(tmp_path):
    (tmp_path / "boolq").mkdir()
    (tmp_path / "boolq" / "test.json").write_text('[{"instruction": "q", "input": "", "output": "o"}]')
    with pytest.raises(DataError, match=r"boolq/test.json: record 1 lacks field 'answer'"):
        load_test(tmp_path, "boolq")
    with pytest.raises(DataError, match="LLM-Adapters"):
        load_test(tmp_path, "piqa")


# -- training data, splits and the generated suite ----------------------------------------------------
def test_training_file_loads_and_splits_like_finetune_py(tmp_path):
    from rankmix.data.sources import build_splits

    source = {"kind": "commonsense", "train_file": str(FIXTURES / "commonsense_170k.json"), "test_dir": str(FIXTURES),
              "n_validation": 2, "seed": 42}
    splits = build_splits(source)
    assert (len(splits["train"]), len(splits["validation"]), len(splits["test"])) == (4, 2, len(DATASETS))
    # the held-out records are the ones datasets' train_test_split(test_size=2, seed=42) picks, as finetune.py
    import datasets

    expected = datasets.Dataset.from_list(read_records(FIXTURES / "commonsense_170k.json")).train_test_split(
        test_size=2, shuffle=True, seed=42)["test"]
    assert [r["inputs"] for r in splits["validation"]] == expected["instruction"]
    assert {r["task"] for r in splits["test"]} == set(DATASETS)
    assert all(r["targets"].startswith("the correct answer is ") and r["answer"] for r in splits["test"])
    assert {r["task"] for r in splits["train"]} == {TRAIN_TASK}
    # held-out training records mix every label set: the union pattern extracts any of them
    assert extract_answer(TRAIN_TASK, "the correct answer is ending3") == "ending3"


def test_missing_training_data_names_the_fix(tmp_path):
    from rankmix.data.sources import build_splits
    from rankmix.errors import ConfigError

    with pytest.raises(DataError, match="commonsense_170k.json of github.com/AGI-Edgerunners/LLM-Adapters"):
        load_train("no-such-user/no-such-dataset")  # offline: neither a file nor reachable on the hub
    with pytest.raises(ConfigError, match="test_dir"):
        build_splits({"kind": "commonsense", "train_file": str(FIXTURES / "commonsense_170k.json"), "seed": 42})
    bad = tmp_path / "train.json"
    bad.write_text('[{"instruction": "q", "input": "some input", "output": "o", "answer": "a"}]')
    with pytest.raises(DataError, match=r"train.json: record 1 has a non-empty 'input'"):
        load_train(str(bad))


def test_generated_suite_is_deterministic_and_answers_follow_the_content():
    from rankmix.tasks.commonsense.made_up import WEIGHT, generate_commonsense_like

    a = list(generate_commonsense_like(list(DATASETS), 30, seed=3))
    assert a == list(generate_commonsense_like(list(DATASETS), 30, seed=3))
    assert a != list(generate_commonsense_like(list(DATASETS), 30, seed=4))
    assert {name for name, _ in a} == set(DATASETS) and len(a) == 30 * len(DATASETS)
    for name, rec in a:
        assert set(rec) == {"instruction", "input", "output", "answer"} and rec["input"] == ""
        assert extract_answer(name, rec["output"]) == rec["answer"]  # every label is in its set's pattern
        assert "\n\nAnswer format: " in rec["instruction"] or "Answer format: option1/option2" in rec["instruction"]
    for _, rec in (r for r in a if r[0] == "boolq"):
        words = rec["instruction"].split()
        first, second = words[words.index("is") + 2], words[words.index("than") + 2]
        assert rec["answer"] == ("true" if WEIGHT[first] > WEIGHT[second] else "false")
    labels = {rec["answer"] for name, rec in a if name == "hellaswag"}
    assert len(labels) > 2  # the right ending's position varies


def test_train_fraction_keeps_nested_subsets(tmp_path):
    from rankmix.data.sources import build_splits

    source = llm_adapters_files(tmp_path, ["boolq", "piqa"], 40, 2, seed=5, n_validation=0)
    full = build_splits(source)["train"]
    quarter = build_splits({**source, "train_fraction": 0.25})["train"]
    half = build_splits({**source, "train_fraction": 0.5})["train"]
    assert (len(quarter), len(half), len(full)) == (20, 40, 80)
    assert all(r in half for r in quarter) and all(r in full for r in half)


def test_data_module_encodes_the_moslora_wrappers(tmp_path):
    from rankmix.backbones import build_word_level_tokenizer
    from rankmix.data.instruction import InstructionDataModule

    source = llm_adapters_files(tmp_path, ["piqa", "winogrande"], 3, 1)
    dm = InstructionDataModule(None, str(tmp_path), source=source, prompt_format="moslora",
                               loss_on_prompt=False, max_length=96)
    dm.prepare_data()
    tok = build_word_level_tokenizer([dm.files()["train"]], tmp_path / "tok", dm.template_text())
    dm.set_tokenizer(tok)
    dm.setup()
    ex = dm.examples["train"][0]  # every word of a training record is in the vocabulary
    rec = read_records(dm.files()["train"])[0]
    assert tok.unk_token_id not in tok(dm.template_text())["input_ids"]  # the wrapper's words are in the vocabulary
    assert tok.decode(ex["input_ids"], skip_special_tokens=True).split() == train_prompt(rec["inputs"], rec["targets"]).split()
    assert tok.decode(ex["prompt_ids"], skip_special_tokens=True).split() == eval_prompt(rec["inputs"]).split()
    scored = [tok.convert_ids_to_tokens(i) for i, lab in zip(ex["input_ids"], ex["labels"], strict=True) if lab != -100]
    assert scored == [*rec["targets"].split(), "</s>"]  # loss_on_prompt=False: the response and EOS only
    batch = dm.collate_eval(dm.examples["test"])
    assert batch["answer"] == [r["answer"] for r in read_records(dm.files()["test"])]


def test_overlong_records_are_cut_like_finetune_py(tmp_path):
    from rankmix.backbones import build_word_level_tokenizer
    from rankmix.data.instruction import InstructionDataModule

    source = llm_adapters_files(tmp_path, ["boolq"], 2, 1)
    dm = InstructionDataModule(None, str(tmp_path), source=source, prompt_format="moslora",
                               loss_on_prompt=False, max_length=20, overlong="truncate")
    dm.prepare_data()
    dm.set_tokenizer(build_word_level_tokenizer([dm.files()["train"]], tmp_path / "tok", dm.template_text()))
    dm.setup()
    ex = dm.examples["train"][0]
    assert len(ex["input_ids"]) == len(ex["labels"]) == 20 and set(ex["labels"]) == {-100}
    strict = InstructionDataModule(None, str(tmp_path), source=source, prompt_format="moslora", max_length=20)
    strict.set_tokenizer(dm.tokenizer)
    with pytest.raises(DataError, match="overlong=truncate"):
        strict.setup()


def test_batched_beam_search_with_left_padding_matches_one_by_one(tmp_path):
    """LLM-Adapters issue 61: batched evaluation is only right with the attention mask and left padding."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from rankmix.backbones import build_word_level_tokenizer
    from rankmix.data.instruction import InstructionDataModule

    source = llm_adapters_files(tmp_path, ["boolq", "piqa", "hellaswag"], 2, 1)
    dm = InstructionDataModule(None, str(tmp_path), source=source, prompt_format="moslora", max_length=96)
    dm.prepare_data()
    tok = build_word_level_tokenizer([dm.files()["train"]], tmp_path / "tok", dm.template_text())
    dm.set_tokenizer(tok)
    dm.setup()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, initializer_range=0.2)).eval()
    batch = dm.collate_eval(dm.examples["test"])
    assert len({int(m.sum()) for m in batch["prompt_mask"]}) > 1  # prompts of different lengths: padding matters
    kw = dict(max_new_tokens=6, num_beams=4, do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=-1)
    n = batch["prompt_ids"].shape[1]
    together = model.generate(input_ids=batch["prompt_ids"], attention_mask=batch["prompt_mask"], **kw)[:, n:]
    for i, ex in enumerate(dm.examples["test"]):
        alone = model.generate(input_ids=torch.tensor([ex["prompt_ids"]]), **kw)[0, len(ex["prompt_ids"]):]
        assert together[i].tolist() == alone.tolist()


def test_prediction_is_read_from_prompt_and_generation_as_the_evaluator_does():
    """commonsense_evaluate.py decodes prompt + generation and keeps the text after the first "### Response:"; a
    model that writes the marker itself is cut there (scoring only the generated tokens would read past it)."""
    from rankmix.modules.causal_lm import prediction_function

    generated = "the correct answer is solution2\n### Response: solution1"
    decoded = eval_prompt("Which is right? solution1 or solution2") + generated
    read = prediction_function("commonsense")   # the benchmark folder's
    assert read(decoded) == "the correct answer is solution2"
    assert extract_answer("piqa", read(decoded)) == "solution2"
    assert prediction_function("generic") is None and prediction_function("flan") is None


@pytest.mark.parametrize(("record", "message"), [
    ({"instruction": "q", "input": "", "output": 1, "answer": "true"}, "field 'output' must be a string, got int"),
    ({"instruction": "q", "input": "", "output": "o", "answer": 1}, "field 'answer' must be a string, got int"),
])
def test_non_string_fields_are_refused_with_the_file_and_record(tmp_path, record, message):
    (tmp_path / "boolq").mkdir()
    (tmp_path / "boolq" / "test.json").write_text(json.dumps([record]))
    with pytest.raises(DataError, match=rf"boolq/test.json: record 1: {message}"):
        load_test(tmp_path, "boolq")


def test_too_few_training_records_for_the_held_out_split(tmp_path):
    from rankmix.data.sources import build_splits

    rec = {"instruction": "q", "input": "", "output": "the correct answer is true", "answer": "true"}
    (tmp_path / "train.json").write_text(json.dumps([rec] * 5))
    with pytest.raises(DataError, match=r"train.json: 5 training records; 120 are held out"):
        build_splits({"kind": "commonsense", "train_file": str(tmp_path / "train.json"), "test_dir": str(tmp_path),
                      "n_validation": 120, "seed": 42})
