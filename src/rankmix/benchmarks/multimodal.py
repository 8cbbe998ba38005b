"""The nine benchmarks of MoSLoRA Tab. 5 through lmms-eval's own tasks, on the adapted LLaVA model in memory.

Each benchmark is an lmms-eval task (its prompt, answer parsing and metric); rankmix gives it the model
(``InMemoryModel``: greedy answers through the training chat template, image first) and the data's location
(``dataset_path``: a hub id or a local copy in the hub layout; ``dataset_name`` where the hub repo has configs).
Reported in percent:

========================  ===============================  =====================================================
cell                      lmms-eval task                   number
========================  ===============================  =====================================================
MMBench-EN / -CN          mmbench_en_dev / mmbench_cn_dev  ``gpt_eval_score``: CircularEval accuracy (dev split)
SEED-Bench                seedbench (image rows)           ``seed_image`` × 100
AI2D                      ai2d                             ``exact_match`` (flexible-extract) × 100
SciQA-image               scienceqa_img                    ``exact_match`` × 100
TextVQA                   textvqa_val                      ``exact_match`` (VQA accuracy) × 100
MathVista                 mathvista_testmini_format        ``llm_as_judge_eval``: accuracy after a judge's extraction
MM-Vet                    mmvet                            ``gpt_eval_score``: the judge's mean grade × 100
MME                       mme                              (perception + cognition) / 2800 × 100 (the paper's scaling)
========================  ===============================  =====================================================

MathVista and MM-Vet need an LLM judge (MoSLoRA: GPT-4-turbo): with ``judge.model`` set and credentials in the
environment (``OPENAI_API_KEY``, or ``API_TYPE=local`` with ``LLM_JUDGE_URL`` for an OpenAI-compatible server) they
run; otherwise their cells are missing with that reason, never scored without the judge (lmms-eval would grade
every answer 0 without one). MMBench asks the judge only for answers its rules cannot parse; without a judge it
uses lmms-eval's offline extraction (``mmbench_aggregate_dev_results_static``), noted in the run's JSON.
Submission-file metrics are left out (no upload target); every answer is written to
``<run>/benchmarks/<benchmark>.jsonl``.

Per-item scores (``rankmix.uncertainty``), from the per-sample results lmms-eval logs (``log_samples``), never
re-scored (:data:`ITEM_SCORES`):

- means, with the closed-form standard error: AI2D, SciQA-image and TextVQA (each sample's ``exact_match``; TextVQA's
  is its VQA accuracy), SEED-Bench (its aggregation's per-question match of prediction and answer), MathVista (the
  judged ``true_false``; the metric, rounded to 0.01 by lmms-eval, is the mean unrounded), MM-Vet (the judge's grade);
- MMBench: CircularEval accuracy is the mean over questions of a 0/1 hit that needs every circular variant of the
  question right, as lmms-eval's aggregation decides it (rules, then the judge or the offline extraction); the hits
  are those it computed (taken from its ``calculate_hit_rates``, not recomputed, so no judge is asked twice). Item
  ids are the question's ``index`` for both MMBench-EN and -CN (the same questions, translated), so ``test/average``
  keeps their correlation;
- MME: the score is a sum over categories of each category's mean over images of acc + acc+ (per image: its two
  questions' mean correctness, plus both right, each in percent), i.e. a sum of stratum means with a fixed set of
  strata: the stratified standard error (strata: categories), scaled as the cell is (/2800 × 100).

A benchmark's per-item scores are recorded only when their mean gives the cell's value again (within rounding);
otherwise the cell has no standard error and ``notes["no_se"]`` says why.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from rankmix import uncertainty
from rankmix.data.hub_files import local_dataset_kwargs
from rankmix.errors import ConfigError, RankmixError


@dataclass(frozen=True)
class Benchmark:
    task: str
    metrics: tuple[str, ...]          # lmms-eval metric names whose values make the cell (summed)
    scale: float = 100.0              # to percent
    judge: bool = False               # needs an LLM judge
    overrides: dict = field(default_factory=dict)


def _image_rows(dataset):
    return dataset.filter(lambda doc: doc["data_type"] == "image")


def _mmbench_metric(module: str, judged: bool, hits: dict | None = None) -> list[dict]:
    """MMBench's metric list (the judge's aggregation, or the offline one); ``hits``: filled with question index ->
    0/1 hit as the aggregation decides them (``_capturing_hits``)."""
    import importlib

    utils = importlib.import_module(f"lmms_eval.tasks.mmbench.{module}")
    static = importlib.import_module("lmms_eval.tasks.mmbench.en_utils").mmbench_aggregate_dev_results_static
    aggregate = utils.mmbench_aggregate_dev_results_eval if judged else static
    return [{"metric": "gpt_eval_score", "higher_is_better": True,
             "aggregation": aggregate if hits is None else _capturing_hits(aggregate, hits)}]


def _capturing_hits(aggregate: Callable, hits: dict) -> Callable:
    """``aggregate`` (an lmms-eval MMBench aggregation), which also keeps in ``hits`` the per-question hits its
    evaluator averages (the frame ``calculate_hit_rates`` receives, indexed by question)."""
    import importlib

    evaluator = importlib.import_module(aggregate.__module__).mmbench_evaluator

    def aggregation(results, args):
        real = evaluator.calculate_hit_rates

        def spy(data):
            hits.clear()
            hits.update({int(i): float(h) for i, h in zip(data.index, data["hit"], strict=True)})
            return real(data)

        evaluator.calculate_hit_rates = spy
        try:
            return aggregate(results, args)
        finally:
            del evaluator.calculate_hit_rates  # the class's method again

    return aggregation


BENCHMARKS: dict[str, Benchmark] = {
    "mmbench_en": Benchmark("mmbench_en_dev", ("gpt_eval_score",), 1.0),
    "mmbench_cn": Benchmark("mmbench_cn_dev", ("gpt_eval_score",), 1.0),
    "seedbench": Benchmark("seedbench", ("seed_image",), overrides={"process_docs": _image_rows}),
    "ai2d": Benchmark("ai2d", ("exact_match",)),
    "scienceqa_img": Benchmark("scienceqa_img", ("exact_match",)),
    "textvqa": Benchmark("textvqa_val", ("exact_match",), overrides={"metric_list": [
        {"metric": "exact_match", "aggregation": "mean", "higher_is_better": True, "ignore_case": True,
         "ignore_punctuation": True}]}),
    "mathvista": Benchmark("mathvista_testmini_format", ("llm_as_judge_eval",), 1.0, judge=True),
    "mmvet": Benchmark("mmvet", ("gpt_eval_score",), 1.0, judge=True),
    "mme": Benchmark("mme", ("mme_perception_score", "mme_cognition_score"), 100.0 / 2800.0),
}


def judge_unavailable(judge: Mapping | None) -> str | None:
    """Why no LLM judge can be asked (None: one can)."""
    if not judge or not judge.get("model"):
        return "needs an LLM judge (the paper: GPT-4-turbo); set task.judge.model"
    api = os.environ.get("API_TYPE", judge.get("api_type", "openai"))
    if api == "local":
        return None if os.environ.get("LLM_JUDGE_URL") else "API_TYPE=local needs LLM_JUDGE_URL (an OpenAI-compatible server)"
    key = "AZURE_API_KEY" if "azure" in api else "OPENAI_API_KEY"
    return None if os.environ.get(key) else f"needs the judge's credentials: {key} is not set"


def _model_class():
    from lmms_eval.api.model import lmms

    class InMemoryModel(lmms):
        """lmms-eval's model interface over ``answer(prompts, images, max_new_tokens) -> texts`` (greedy)."""

        def __init__(self, answer: Callable, batch_size: int, max_new_tokens: int | None):
            super().__init__()
            self.answer, self.batch_size, self.cap = answer, batch_size, max_new_tokens

        def generate_until(self, requests) -> list[str]:
            items = []
            for r in requests:
                context, gen_kwargs, doc_to_visual, doc_id, task, split = r.args
                visuals = doc_to_visual(self.task_dict[task][split][doc_id]) or []
                n = int(gen_kwargs.get("max_new_tokens") or 1024)  # a task without a length: lmms-eval's llava default
                until = gen_kwargs.get("until") or []
                items.append((context, visuals[0] if visuals else None, min(n, self.cap) if self.cap else n,
                              [until] if isinstance(until, str) else list(until)))
            texts: list[str] = [""] * len(items)
            order = sorted(range(len(items)), key=lambda i: items[i][2])  # a batch shares one answer length
            for start in range(0, len(order), self.batch_size):
                chunk = order[start:start + self.batch_size]
                lengths = {items[i][2] for i in chunk}
                groups = [[i for i in chunk if items[i][2] == n] for n in sorted(lengths)]
                for group in groups:
                    out = self.answer([items[i][0] for i in group], [items[i][1] for i in group], items[group[0]][2])
                    for i, text in zip(group, out, strict=True):
                        for stop in items[i][3]:
                            text = text.split(stop)[0] if stop else text
                        texts[i] = text
            return texts

        def loglikelihood(self, requests):
            raise NotImplementedError("the Tab. 5 benchmarks generate; none scores log-likelihoods")

        def generate_until_multi_round(self, requests):
            raise NotImplementedError("the Tab. 5 benchmarks are single-round")

    return InMemoryModel


def task_config(name: str, settings: Mapping, judged: bool, hits: dict | None = None) -> dict:
    """The lmms-eval task dict of benchmark ``name``: its task with the data location and rankmix's overrides (a
    local copy gets a datasets cache of its own: ``rankmix.data.hub_files.local_dataset_kwargs``); ``hits``: MMBench's
    per-question hits go there."""
    bench, path = BENCHMARKS[name], str(settings["dataset_path"])
    cfg = {"task": bench.task, "dataset_path": path, **bench.overrides}
    if "dataset_name" in settings:
        cfg["dataset_name"] = settings["dataset_name"]
    if Path(path).exists():  # a local copy (absolute: lmms-eval runs in the output folder), no hub token
        cfg.update(dataset_path=str(Path(path).resolve()), dataset_kwargs=local_dataset_kwargs(path))
    elif path.startswith((".", "/")) or path.count("/") != 1:
        raise ConfigError(f"task.benchmarks.{name}.dataset_path", path, "no such folder, and not a hub id "
                          "(owner/name); give a local copy of the benchmark's hub repo or its hub id")
    if name.startswith("mmbench"):
        cfg["metric_list"] = _mmbench_metric("en_utils" if name == "mmbench_en" else "cn_utils", judged, hits)
    return cfg


def evaluate(answer: Callable, benchmarks: Mapping[str, Mapping], out_dir: Path, batch_size: int = 8,
             max_new_tokens: int | None = None, judge: Mapping | None = None
             ) -> tuple[dict[str, float], dict[str, str], dict[str, str]]:
    """(metrics in percent by benchmark, missing cells with their reasons, notes) for ``benchmarks``
    (name → {dataset_path, dataset_name?, limit?})."""
    unknown = [b for b in benchmarks if b not in BENCHMARKS]
    if unknown:
        raise ConfigError("task.benchmarks", unknown, f"unknown benchmarks; known: {', '.join(BENCHMARKS)}")
    try:
        import lmms_eval.evaluator as ev
        from lmms_eval.tasks import TaskManager
    except ImportError as e:
        raise RankmixError(f"the Tab. 5 benchmarks run on lmms-eval ({e}): pip install --no-deps lmms-eval==0.7.3 "
                           "(make setup does); its image tasks need only rankmix's own dependencies") from None
    no_judge = judge_unavailable(judge)
    missing = {name: no_judge for name in benchmarks if BENCHMARKS[name].judge and no_judge}
    notes = {}
    if no_judge is None:
        os.environ["MODEL_VERSION"] = str(judge["model"])  # read by lmms-eval's judges when their modules load
        os.environ.setdefault("API_TYPE", str(judge.get("api_type", "openai")))
    elif any(n.startswith("mmbench") for n in benchmarks):
        notes["mmbench"] = f"answers the rules cannot parse: lmms-eval's offline extraction (no judge: {no_judge})"
    run = [n for n in benchmarks if n not in missing]
    if not run:
        return {}, missing, notes
    # filelock >= 4 has no filelock._api, which lmms-eval's guard against nested load_dataset locks patches; rankmix
    # never nests load_dataset, so the guard is marked done rather than run
    ev._enable_reentrant_filelocks._patched = True
    model = _model_class()(answer, batch_size, max_new_tokens)
    limits = {benchmarks[n].get("limit") for n in run}
    if len(limits) > 1:
        raise ConfigError("task.benchmarks.<name>.limit", sorted(map(str, limits)), "one limit for all benchmarks")
    hits = {n: {} for n in run if n.startswith("mmbench")}
    tasks = [task_config(n, benchmarks[n], no_judge is None, hits.get(n)) for n in run]
    out_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.chdir(out_dir):  # lmms-eval writes its per-benchmark details under ./submissions
        res = ev.simple_evaluate(model=model, tasks=tasks,
                                 task_manager=TaskManager("WARNING"), log_samples=True, bootstrap_iters=0,
                                 limit=limits.pop(), verbosity="WARNING")
    metrics = {}
    for name in run:
        bench = BENCHMARKS[name]
        results = res["results"].get(bench.task, {})
        values = [_metric(results, m) for m in bench.metrics]
        present = all(any(k.split(",")[0] == m for k in results) for m in bench.metrics)
        if not present or (any(v is None for v in values) and name != "mathvista"):
            missing[name] = f"lmms-eval returned no {', '.join(bench.metrics)} (results: {sorted(results)})"
            continue
        metrics[name] = sum(v or 0.0 for v in values) * bench.scale  # MathVista's aggregate (present) is None at 0 %
        samples = res.get("samples", {}).get(bench.task, [])
        with open(out_dir / f"{name}.jsonl", "w") as f:
            for s in samples:
                f.write(json.dumps({k: s.get(k) for k in ("doc_id", "target", "filtered_resps", *bench.metrics)},
                                   default=str) + "\n")
        why = record_items(name, samples, metrics[name], hits.get(name))
        if why:
            notes.setdefault("no_se", {})[name] = why
    return metrics, missing, notes


def _mean_items(key: str, value: Callable) -> Callable:
    def items(samples, hits):
        rows = [s for s in samples if key in s]
        return [str(s["doc_id"]) for s in rows], [100.0 * float(value(s[key])) for s in rows], None, None
    return items


def _seed_match(v: Mapping) -> bool:  # lmms-eval's seed_aggregation_result, per question
    return str(v["pred"]).lower().strip() == str(v["answer"]).lower().strip()


def _mmbench_items(samples, hits):
    if not hits:
        raise ValueError("lmms-eval's MMBench aggregation kept no per-question hits")
    ids = sorted(hits)
    return [f"mmbench/{i}" for i in ids], [100.0 * hits[i] for i in ids], None, None


def _mme_items(samples, hits):
    """Per image: acc + acc+ (lmms-eval's ``mme_aggregate_results``), its category the stratum; the cell is
    sum over categories of their means × 100 / 2800."""
    images: dict[tuple[str, str], list[float]] = {}
    for s in samples:
        for key in ("mme_perception_score", "mme_cognition_score"):
            if key in s:
                v = s[key]
                images.setdefault((v["category"], v["question_id"]), []).append(float(v["score"]))
    if any(len(v) != 2 for v in images.values()):
        raise ValueError("an MME image without exactly two questions (its acc+ is undefined)")
    keys = list(images)
    scores = [sum(images[k]) / 2 * 100.0 + (sum(images[k]) == 2) * 100.0 for k in keys]
    categories = [c for c, _ in keys]
    return ([f"mme/{q}" for _, q in keys], scores, categories,
            dict.fromkeys(categories, BENCHMARKS["mme"].scale))


# benchmark -> samples, hits -> (ids, per-item scores in percent, strata or None, weights or None); the cell is
# ``uncertainty.record``'s metric of them (the mean, or the weighted sum of stratum means)
ITEM_SCORES: dict[str, Callable] = {
    "mmbench_en": _mmbench_items,
    "mmbench_cn": _mmbench_items,
    "seedbench": _mean_items("seed_image", _seed_match),
    "ai2d": _mean_items("exact_match", float),
    "scienceqa_img": _mean_items("exact_match", float),
    "textvqa": _mean_items("exact_match", float),
    "mathvista": _mean_items("llm_as_judge_eval", lambda v: bool(v["true_false"])),
    "mmvet": _mean_items("gpt_eval_score", lambda v: float(v["score"])),
    "mme": _mme_items,
}
TOLERANCE = {"mathvista": 0.006}  # lmms-eval rounds MathVista's accuracy to 0.01 %


def record_items(name: str, samples: list[Mapping], value: float, hits: Mapping | None = None) -> str | None:
    """Records benchmark ``name``'s per-item scores (``rankmix.uncertainty.record``) from lmms-eval's logged samples;
    None, or why there is no standard error (no samples, or per-item scores that do not give ``value`` again)."""
    import math

    try:
        ids, scores, strata, weights = ITEM_SCORES[name](samples, hits)
    except (KeyError, TypeError, ValueError) as e:
        return f"no per-item scores: {e}"
    if len(set(ids)) != len(ids):
        return f"lmms-eval logged {len(ids)} samples for {len(set(ids))} items"
    if len(ids) < 2:
        return f"{len(ids)} scored item(s): a standard error needs two"
    counts: dict = {}
    for s in strata or [""] * len(ids):
        counts[s] = counts.get(s, 0) + 1
    w = weights or {s: 1.0 / len(counts) for s in counts}
    again = sum(w[s] * sum(x for x, t in zip(scores, strata or [""] * len(ids), strict=True) if t == s) / n
                for s, n in counts.items())
    if not math.isclose(again, value, rel_tol=1e-6, abs_tol=TOLERANCE.get(name, 1e-6)):
        return f"the per-item scores give {again:.4f}, the cell {value:.4f}"
    uncertainty.record(name, ids, scores, strata, weights)
    return None


def _metric(results: Mapping, metric: str) -> float | None:
    """``metric``'s value in lmms-eval's results of one task (keyed ``<metric>,<filter>``)."""
    for key, value in results.items():
        if key.split(",")[0] == metric and not key.endswith("_stderr"):
            return None if value is None else float(value)
    return None
