"""MMLU and GSM8K through EleutherAI's lm-evaluation-harness (``lm-eval``), on the adapted model in memory.

Each benchmark is lm-eval's own task: its prompt, few-shot sampler, answer extraction and metric. rankmix writes
one overlay YAML per task (``include:`` lm-eval's task file, plus ``dataset_path`` where the data is a local copy
or the generated tiny suite) and hands the model to lm-eval through ``lm_eval.models.huggingface.HFLM``.

- **MMLU** (SMoRA's OpenCompass ``mmlu_ppl_ac766d``, the config its README runs on every model: 0-shot, the
  log-likelihood of each option letter after "The following are multiple choice questions (with answers) about
  {subject}.\\n\\n{question}\\nA. …\\nAnswer:"): lm-eval's ``mmlu_<subject>`` tasks, the same prompt. Overall, law
  and medical are lm-eval's group mean (``aggregate_subtask_metrics``, weighted by subject size) over their subjects.
- **GSM8K**: lm-eval's ``gsm8k`` task, greedy, ``num_fewshot`` examples, scored by exact match of the number its
  filter extracts against the number after "####". ``prompt: opencompass`` gives it SMoRA's OpenCompass prompt
  (``gsm8k_gen_1d7fe4``): the 4 fixed worked examples of that config (``gsm8k_opencompass.json``), each question as
  "Question: …\nLet's think step by step\nAnswer:", the turns joined by "\n" as OpenCompass joins a base model's
  prompt, and the last number of the generation (``gsm8k_postprocess``: ``-?\\d+\\.\\d+|-?\\d+``) as the answer.
  ``prompt: lm_eval`` keeps lm-eval's own ("Question: …\nAnswer:", examples from the training split).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from rankmix.errors import ConfigError

log = logging.getLogger(__name__)


def lm_eval_task_file(task: str) -> Path:
    """lm-eval's own YAML of ``task`` (``mmlu_<subject>``, ``gsm8k``)."""
    import lm_eval

    tasks = Path(lm_eval.__file__).parent / "tasks"
    path = tasks / "mmlu" / "default" / f"{task}.yaml" if task.startswith("mmlu_") else tasks / "gsm8k" / f"{task}.yaml"
    if not path.is_file():
        raise ConfigError("task.benchmarks", task, f"lm-eval {lm_eval.__version__} has no task file {path}")
    return path


def mmlu_subjects() -> list[str]:
    """The 57 subjects of lm-eval's MMLU (its ``mmlu_<subject>.yaml`` files)."""
    folder = lm_eval_task_file("mmlu_anatomy").parent
    return sorted(p.stem.removeprefix("mmlu_") for p in folder.glob("mmlu_*.yaml"))


def opencompass_gsm8k() -> dict:
    """The keys that give lm-eval's ``gsm8k`` OpenCompass's ``gsm8k_gen_1d7fe4`` prompt and answer rule."""
    examples = json.loads((Path(__file__).with_name("gsm8k_opencompass.json")).read_text())
    return {"doc_to_text": "Question: {{question}}\nLet's think step by step\nAnswer:", "target_delimiter": "\n",
            "fewshot_delimiter": "\n", "fewshot_config": {"sampler": "first_n", "samples": examples},
            "filter_list": [{"name": "flexible-extract", "filter": [
                {"function": "regex", "regex_pattern": r"(-?\d+\.\d+|-?\d+)", "group_select": -1},
                {"function": "take_first"}]},
                {"name": "strict-match", "filter": [
                    {"function": "regex", "regex_pattern": r"#### (\-?[0-9\.\,]+)"}, {"function": "take_first"}]}]}


PROMPTS = {"lm_eval": dict, "opencompass": opencompass_gsm8k}


def overlay(task: str, out_dir: Path, dataset_path: str | None, extra: dict | None = None) -> str:
    """A YAML that is lm-eval's ``task`` with its data read from ``dataset_path`` (a hub id or a local copy in the
    hub's layout) and ``extra`` keys; its path is what lm-eval loads. A local copy gets a datasets cache of its own
    (``local_dataset_kwargs``)."""
    import yaml

    from rankmix.data.files import local_dataset_kwargs

    out_dir.mkdir(parents=True, exist_ok=True)
    spec = {"include": str(lm_eval_task_file(task)), "task": task, **(extra or {})}
    if dataset_path:
        spec["dataset_path"] = dataset_path
        if Path(dataset_path).exists():
            spec["dataset_kwargs"] = local_dataset_kwargs(dataset_path)
    path = out_dir / f"{task}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return str(path)


def harness_model(model, tokenizer, batch_size: int, max_length: int):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)


def evaluate(lm, task_files: Sequence[str], num_fewshot: int, limit: int | None, gen_kwargs: str | None = None) -> dict:
    """lm-eval's ``simple_evaluate`` on ``task_files``: its per-task results."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    out = simple_evaluate(model=lm, tasks=list(task_files), num_fewshot=num_fewshot, limit=limit, log_samples=False,
                          task_manager=TaskManager(include_defaults=False), gen_kwargs=gen_kwargs,
                          bootstrap_iters=0, random_seed=0, numpy_random_seed=0, torch_random_seed=0,
                          fewshot_random_seed=0)
    return out["results"], out["n-samples"]


def mmlu(lm, settings: Mapping, out_dir: Path) -> dict[str, float]:
    """``mmlu/{overall,law,medical}`` accuracy in percent, plus ``mmlu/<subject>``."""
    from lm_eval.api.metrics import aggregate_subtask_metrics

    subjects = list(settings.get("subjects") or mmlu_subjects())
    groups = {"law": list(settings["law"]), "medical": list(settings["medical"])}
    for name, members in groups.items():
        stray = [s for s in members if s not in subjects]
        if stray:
            raise ConfigError(f"task.benchmarks.mmlu.{name}", stray, "not among the evaluated subjects "
                              "(task.benchmarks.mmlu.subjects)")
    files = [overlay(f"mmlu_{s}", out_dir, settings.get("dataset_path")) for s in subjects]
    results, sizes = evaluate(lm, files, int(settings.get("num_fewshot", 0)), settings.get("limit"))
    acc = {s: results[f"mmlu_{s}"]["acc,none"] for s in subjects}
    n = {s: sizes[f"mmlu_{s}"]["effective"] for s in subjects}
    metrics = {f"mmlu/{s}": 100.0 * acc[s] for s in subjects}
    for name, members in {"overall": subjects, **groups}.items():
        metrics[f"mmlu/{name}"] = 100.0 * aggregate_subtask_metrics([acc[s] for s in members], [n[s] for s in members])
    return metrics


def gsm8k(lm, settings: Mapping, out_dir: Path) -> dict[str, float]:
    """``gsm8k/accuracy`` (flexible-extract: the last number) and ``gsm8k/strict`` ("#### n"), in percent."""
    prompt = settings.get("prompt", "lm_eval")
    if prompt not in PROMPTS:
        raise ConfigError("task.benchmarks.gsm8k.prompt", prompt, f"must be one of {', '.join(PROMPTS)}")
    files = [overlay("gsm8k", out_dir, settings.get("dataset_path"), PROMPTS[prompt]())]
    gen = f"max_gen_toks={int(settings['max_gen_toks'])}" if settings.get("max_gen_toks") else None
    results, _ = evaluate(lm, files, int(settings.get("num_fewshot", 4)), settings.get("limit"), gen)
    r = results["gsm8k"]
    return {"gsm8k/accuracy": 100.0 * r["exact_match,flexible-extract"],
            "gsm8k/strict": 100.0 * r["exact_match,strict-match"]}
