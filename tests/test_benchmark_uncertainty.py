"""Every benchmark cell's standard error: the per-item scores each scorer records (``rankmix.uncertainty``) give the
cell's value again, and the recorded standard error is an independent computation on them (closed form for means,
stratified for means of stratum means)."""

import math
import statistics

import numpy as np
import pytest

from rankmix import uncertainty
from rankmix.benchmarks import ds1000, harness, humaneval, multimodal
from rankmix.benchmarks.sandbox import SandboxSettings


def se_mean(xs) -> float:
    return statistics.stdev(xs) / math.sqrt(len(xs))


def se_of_stratum_means(groups: dict, weights: dict | None = None) -> float:
    """The standard error of sum_s w_s · mean(groups[s]) for independent strata (default w_s = 1 / strata)."""
    w = weights or dict.fromkeys(groups, 1.0 / len(groups))
    return math.sqrt(sum(w[s] ** 2 * statistics.variance(x) / len(x) for s, x in groups.items() if len(x) > 1))


def entry(c, name):
    e = c.entries("test/")[f"test/{name}"]
    return e, uncertainty.item_scores(e)


# -- MMLU and GSM8K --------------------------------------------------------------------------------------------
def test_mmlu_groups_are_stratified_by_subject_and_give_the_metric_again():
    rng = np.random.default_rng(0)
    sizes = {"anatomy": 7, "professional_law": 12, "jurisprudence": 5, "virology": 9}
    records = [{"subject": s, "index": i, "correct": bool(rng.random() < 0.3 + 0.1 * k)}
               for k, (s, n) in enumerate(sizes.items()) for i in range(n)]
    groups = {"overall": list(sizes), "law": ["professional_law", "jurisprudence"]}
    with uncertainty.collecting() as c:
        harness.record_mmlu(records, groups)
    acc = {s: [100.0 * r["correct"] for r in records if r["subject"] == s] for s in sizes}
    for name, members in groups.items():
        plain, weighted = harness.group_means({s: statistics.mean(acc[s]) for s in sizes}, sizes, members)
        e, y = entry(c, f"mmlu/{name}")
        assert y.mean() == pytest.approx(plain, abs=1e-4) and e["n"] == sum(sizes[s] for s in members)
        assert e["se"] == pytest.approx(se_of_stratum_means({s: acc[s] for s in members}), rel=1e-4)
        e, y = entry(c, f"mmlu/{name}_weighted")
        total = sum(sizes[s] for s in members)
        assert y.mean() == pytest.approx(weighted, abs=1e-4)
        assert e["se"] == pytest.approx(se_of_stratum_means({s: acc[s] for s in members},
                                                            {s: sizes[s] / total for s in members}), rel=1e-4)
    e, y = entry(c, "mmlu/virology")
    assert e["se"] == pytest.approx(se_mean(acc["virology"]), rel=1e-4)
    # a plain mean of subject means is not the question mean: the two groups' entries differ
    assert entry(c, "mmlu/overall")[1].mean() != pytest.approx(entry(c, "mmlu/overall_weighted")[1].mean())


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    from conftest import tiny_harness_lm
    from rankmix.data.multidomain_like import write_multidomain_like

    suite = write_multidomain_like(tmp_path_factory.mktemp("suite"), seed=3, n_mmlu=6, n_gsm8k=6, n_humaneval=4)
    return tiny_harness_lm(suite, tmp_path_factory.mktemp("tok")), suite


def test_a_real_mmlu_run_records_each_question(lm, tmp_path):
    import json

    model, suite = lm
    subjects = ["college_medicine", "jurisprudence", "professional_law", "clinical_knowledge"]
    with uncertainty.collecting() as c:
        metrics = harness.mmlu(model, {"dataset_path": str(suite["mmlu"]), "subjects": subjects,
                                       "law": ["jurisprudence", "professional_law"], "medical": ["college_medicine", "clinical_knowledge"]}, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "mmlu.jsonl").read_text().splitlines()]
    e, y = entry(c, "mmlu/overall")
    assert e["n"] == len(rows) and y.mean() == pytest.approx(metrics["mmlu/overall"], abs=1e-4)
    acc = {s: [100.0 * r["correct"] for r in rows if r["subject"] == s] for s in subjects}
    assert e["se"] == pytest.approx(se_of_stratum_means(acc), rel=1e-4)
    assert entry(c, "mmlu/medical")[1].mean() == pytest.approx(metrics["mmlu/medical"], abs=1e-4)


def test_gsm8k_items_are_lm_evals_logged_samples(lm, tmp_path):
    model, suite = lm
    with uncertainty.collecting() as c:
        metrics = harness.gsm8k(model, {"dataset_path": str(suite["gsm8k"]), "num_fewshot": 0, "max_gen_toks": 8},
                                tmp_path)
    for name in ("gsm8k/accuracy", "gsm8k/strict"):
        e, y = entry(c, name)
        assert e["n"] == 6 and e["method"] == "mean" and set(np.unique(y)) <= {0.0, 100.0}
        assert y.mean() == pytest.approx(metrics[name], abs=1e-4)
        assert (e["se"] or 0.0) == pytest.approx(se_mean(list(y)), rel=1e-4, abs=1e-9)


# -- HumanEval -------------------------------------------------------------------------------------------------
def test_humaneval_pass_at_k_is_a_mean_of_per_problem_estimates(lm):
    _, suite = lm
    problems = humaneval.load_problems(str(suite["humaneval"]))
    wrong = "    return None\n"
    right = [3, 0, 5, 1][: len(problems)]
    samples = [[p["canonical_solution"]] * k + [wrong] * (5 - k) for p, k in zip(problems, right, strict=True)]
    with uncertainty.collecting() as c:
        metrics, _ = humaneval.score(problems, samples, [1, 2], SandboxSettings(timeout_s=3.0))
    for k in (1, 2):
        estimates = [100.0 * (1.0 - math.comb(5 - c_, k) / math.comb(5, k)) for c_ in right]
        e, y = entry(c, f"humaneval/pass@{k}")
        assert list(y) == pytest.approx(estimates, abs=1e-4) and y.mean() == pytest.approx(metrics[f"humaneval/pass@{k}"])
        assert e["se"] == pytest.approx(se_mean(estimates), rel=1e-4)
    assert "test/humaneval/suspicious" not in c.entries("test/")  # a count, not a mean over items


# -- DS-1000 ---------------------------------------------------------------------------------------------------
def _ds1000_runs(n_runs: int, seed: int = 0) -> list[list[dict]]:
    rng = np.random.default_rng(seed)
    sizes = dict(zip(ds1000.LIBRARIES, (6, 4, 5, 3, 4, 7, 2), strict=True))
    skill = {lib: rng.random() for lib in sizes}
    return [[{"problem_id": f"{lib}/q{i}", "library": lib,
              "status": "passed" if rng.random() < skill[lib] else "failed"}
             for lib, n in sizes.items() for i in range(n)] for _ in range(n_runs)]


def test_ds1000_greedy_libraries_are_means_and_the_average_is_stratified():
    (records,) = runs = _ds1000_runs(1)
    with uncertainty.collecting() as c:
        ds1000.record_runs(runs)
    scores = {lib: [100.0 * (r["status"] == "passed") for r in records if r["library"] == lib]
              for lib in ds1000.LIBRARIES}
    for lib, xs in scores.items():
        e, y = entry(c, f"ds1000/{lib.lower()}")
        assert y.mean() == pytest.approx(statistics.mean(xs), abs=1e-4)
        assert (e["se"] or 0.0) == pytest.approx(se_mean(xs), rel=1e-4, abs=1e-9)
    e, y = entry(c, "ds1000/average")
    assert y.mean() == pytest.approx(statistics.mean(statistics.mean(x) for x in scores.values()), abs=1e-4)
    assert e["se"] == pytest.approx(se_of_stratum_means(scores), rel=1e-4) and e["n"] == 31


def test_ds1000_repeated_runs_use_each_problems_pass_rate_and_best_its_run():
    from rankmix.modules.benchmark_lm import summarise_runs

    runs = _ds1000_runs(4, seed=1)
    per_run = [{f"ds1000/{lib.lower()}": 100.0 * statistics.mean(r["status"] == "passed" for r in run
                                                                 if r["library"] == lib)
                for lib in ds1000.LIBRARIES} for run in runs]
    for m in per_run:
        m["ds1000/average"] = statistics.mean(m.values())
    summary = summarise_runs(per_run)
    best = int(summary["ds1000/best_run"]) - 1
    with uncertainty.collecting() as c:
        ds1000.record_runs(runs, best)
    for lib in ds1000.LIBRARIES:
        ids = [r["problem_id"] for r in runs[0] if r["library"] == lib]
        rates = [100.0 * statistics.mean(run[[r["problem_id"] for r in run].index(i)]["status"] == "passed"
                                         for run in runs) for i in ids]
        e, y = entry(c, f"ds1000/{lib.lower()}")
        assert y.mean() == pytest.approx(summary[f"ds1000/{lib.lower()}"], abs=1e-4)  # the mean over the runs
        assert (e["se"] or 0.0) == pytest.approx(se_mean(rates), rel=1e-4, abs=1e-9)
        e, y = entry(c, f"ds1000/{lib.lower()}/best")
        assert y.mean() == pytest.approx(summary[f"ds1000/{lib.lower()}/best"], abs=1e-4)
    assert entry(c, "ds1000/average")[1].mean() == pytest.approx(summary["ds1000/average"], abs=1e-4)
    assert entry(c, "ds1000/average/best")[1].mean() == pytest.approx(summary["ds1000/average/best"], abs=1e-4)


def test_ds1000_without_all_libraries_has_no_average_and_skips_problems_not_run():
    runs = _ds1000_runs(1)
    for r in runs[0]:
        if r["library"] == "Tensorflow":
            r["status"] = "not run"
    with uncertainty.collecting() as c:
        ds1000.record_runs(runs)
    found = c.entries("test/")
    assert "test/ds1000/average" not in found and "test/ds1000/tensorflow" not in found
    assert found["test/ds1000/pandas"]["n"] == 6


# -- the lmms-eval benchmarks ----------------------------------------------------------------------------------
def _samples(key, values):
    return [{"doc_id": i, key: v} for i, v in enumerate(values)]


@pytest.mark.parametrize("name,key,values,scores", [
    ("ai2d", "exact_match", [1.0, 0.0, 1.0, 1.0, 0.0], [100, 0, 100, 100, 0]),
    ("textvqa", "exact_match", [1.0, 0.3, 0.6, 0.0], [100, 30, 60, 0]),
    ("seedbench", "seed_image", [{"pred": "A", "answer": "a "}, {"pred": "B", "answer": "C"},
                                 {"pred": "D", "answer": "D"}], [100, 0, 100]),
    ("mathvista", "llm_as_judge_eval", [{"true_false": True}, {"true_false": False}, {"true_false": False}],
     [100, 0, 0]),
    ("mmvet", "gpt_eval_score", [{"score": 0.5}, {"score": 1.0}, {"score": 0.2}, {"score": 0.0}], [50, 100, 20, 0]),
])
def test_lmms_eval_means_get_the_closed_form(name, key, values, scores):
    cell = round(statistics.mean(scores), 2) if name == "mathvista" else statistics.mean(scores)  # lmms-eval rounds it
    with uncertainty.collecting() as c:
        assert multimodal.record_items(name, _samples(key, values), cell) is None
    e, y = entry(c, name)
    assert list(y) == pytest.approx(scores, abs=1e-4) and e["se"] == pytest.approx(se_mean(scores), rel=1e-4)
    with uncertainty.collecting() as c:  # per-item scores that do not give the cell again are not recorded
        why = multimodal.record_items(name, _samples(key, values), cell + 5.0)
    assert "give" in why and c.entries() == {}


def test_mmbench_uses_the_aggregations_hits_and_shares_ids_across_languages():
    hits = {0: 1.0, 1: 0.0, 2: 1.0, 3: 1.0}
    with uncertainty.collecting() as c:
        assert multimodal.record_items("mmbench_en", [], 75.0, hits) is None
        assert multimodal.record_items("mmbench_cn", [], 75.0, hits) is None
        assert "no per-item scores" in multimodal.record_items("mmbench_cn", [], 75.0, {})
    e, y = entry(c, "mmbench_en")
    assert e["se"] == pytest.approx(se_mean([100, 0, 100, 100]), rel=1e-4)
    assert e["items"] == entry(c, "mmbench_cn")[0]["items"]


def test_mme_is_a_sum_of_category_means_with_the_stratified_error():
    rng = np.random.default_rng(4)
    samples, per_image = [], {}
    for category, key, n in (("existence", "mme_perception_score", 5), ("color", "mme_perception_score", 4),
                             ("code_reasoning", "mme_cognition_score", 3)):
        for i in range(n):
            answers = [float(rng.random() < 0.6), float(rng.random() < 0.6)]
            for a in answers:
                samples.append({"doc_id": len(samples), key: {"question_id": f"{category}/{i}.png",
                                                              "category": category, "score": a}})
            per_image.setdefault(category, []).append(sum(answers) / 2 * 100 + (sum(answers) == 2) * 100)
    scale = 100.0 / 2800.0
    cell = sum(statistics.mean(v) for v in per_image.values()) * scale
    with uncertainty.collecting() as c:
        assert multimodal.record_items("mme", samples, cell) is None
    e, y = entry(c, "mme")
    assert e["n"] == 12 and y.mean() == pytest.approx(cell, abs=1e-5)
    assert e["se"] == pytest.approx(se_of_stratum_means(per_image, dict.fromkeys(per_image, scale)), rel=1e-4)
    assert "two questions" in multimodal.record_items("mme", samples[:-1], cell)


@pytest.mark.slow
def test_lmms_eval_runs_record_every_benchmark(tmp_path):
    """Through lmms-eval on the tiny benchmarks, with an answerer that is right on some items only."""
    import json

    from test_visual_instruction import _oracle, _settings, _tiny_benchmarks

    folders = _tiny_benchmarks(tmp_path)
    oracle, calls = _oracle(folders), []

    def half(prompts, images, max_new_tokens):  # every other answer the oracle's, the rest wrong
        calls.extend(prompts)
        return [a if (len(calls) - len(prompts) + i) % 2 else "Z" for i, a in enumerate(oracle(prompts, images, 1))]

    settings = {k: v for k, v in _settings(folders).items() if k not in ("mathvista", "mmvet")}
    with uncertainty.collecting() as c:
        metrics, missing, notes = multimodal.evaluate(half, settings, tmp_path / "out")
    found = c.entries("test/")
    assert "no_se" not in notes, notes
    for name in settings:
        e = found[f"test/{name}"]
        y = uncertainty.item_scores(e)
        assert y.mean() == pytest.approx(metrics[name], abs=1e-4), name
        if name != "mme":
            assert (e["se"] or 0.0) == pytest.approx(se_mean(list(y)), rel=1e-4, abs=1e-9), name
    assert 0.0 < metrics["ai2d"] < 100.0  # the errors are not all zero
    lines = [json.loads(x) for x in (tmp_path / "out" / "mme.jsonl").read_text().splitlines()]
    assert found["test/mme"]["n"] == len(lines) // 2


# -- DreamBooth ------------------------------------------------------------------------------------------------
def test_dreambooth_scores_are_means_over_prompts(tmp_path):
    from omegaconf import OmegaConf
    from PIL import Image

    from conftest import compose
    from rankmix.backbones import word_level_tokenizer
    from rankmix.metrics.subject_fidelity import subject_scores
    from rankmix.modules.dreambooth import record_prompt_scores

    encoders = OmegaConf.to_container(compose("experiment=moslora-6/moslora").task.auto_scores, resolve=True)
    colours = [(200, 30, 30), (20, 90, 230), (30, 200, 40), (240, 240, 20), (90, 20, 90), (10, 10, 10)]
    records = []
    for i, colour in enumerate(colours):
        Image.new("RGB", (40, 40), colour).save(tmp_path / f"{i}.png")
        records.append({"file": f"{i}.png", "prompt": ["a red circle", "a blue square", "a green dot"][i // 2],
                        "prompt_index": i // 2})
    ref = tmp_path / "0.png"
    tok = word_level_tokenizer(["a red circle blue square green dot"], tmp_path / "tok")
    tok.model_max_length = 8
    overall, _ = subject_scores([tmp_path / r["file"] for r in records], [r["prompt"] for r in records], [ref],
                                encoders, tokenizer=tok)
    with uncertainty.collecting() as c:
        record_prompt_scores(records, tmp_path, [ref], encoders, tok, set(overall))
    for name in ("dino", "clip_i", "clip_t"):
        per_prompt = [subject_scores([tmp_path / r["file"] for r in records if r["prompt_index"] == p],
                                     [r["prompt"] for r in records if r["prompt_index"] == p], [ref], encoders,
                                     tokenizer=tok)[0][name] for p in range(3)]
        e, y = entry(c, name)
        assert e["n"] == 3 and y.mean() == pytest.approx(overall[name], abs=1e-5)
        assert e["se"] == pytest.approx(se_mean(per_prompt), rel=1e-3)
