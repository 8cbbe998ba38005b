"""MMLU as OpenCompass scores it, and GSM8K through EleutherAI's lm-evaluation-harness (``lm-eval``), on the
adapted model in memory.

GSM8K is lm-eval's own task: its prompt, few-shot sampler, answer extraction and metric. rankmix writes
one overlay YAML per task (``include:`` lm-eval's task file, plus ``dataset_path`` where the data is a local copy
or the generated tiny suite) and hands the model to lm-eval through ``lm_eval.models.huggingface.HFLM``.

- **MMLU**: OpenCompass's PPL protocol (``mmlu_ppl_ac766d`` as SMoRA bundles it), ported byte for byte, not
  lm-eval's task (lm-eval strips the question and has one space after "about"). Per subject and candidate X in
  A-D the text is "The following are multiple choice questions (with answers) about  {subject with spaces}.\n\n"
  (two spaces), the in-context examples, then "{input}\nA. {A}\nB. {B}\nC. {C}\nD. {D}\nAnswer: X", with the
  question exactly as the data gives it (never stripped) and every field filled by OpenCompass's ``safe_format``
  (one ``str.replace`` per field, in the order input, A, B, C, D, target, over the whole text). SMoRA's config
  retrieves nothing (``ZeroRetriever``: no examples, nothing between hint and question); ``num_fewshot: k`` gives
  OpenCompass's ``FixKRetriever(fix_id_list=[0..k-1])`` over the dev split instead: each example
  "{question}\nAnswer: {its answer}\n", joined by "\n" and followed by "\n". Each text is tokenized whole with
  the tokenizer's special tokens (BOS), left-padded in batches that run label by label over the subject's questions
  (``batch_size``, as OpenCompass's ``PPLInferencer`` batches them; no position ids, as its ``get_ppl`` passes
  none), and scored by its mean token cross-entropy (padding targets ignored, divided by the non-padding token
  count); the prediction is the candidate of lowest score, the first on a tie. Groups (overall, law, medical) are
  recorded both ways OpenCompass's summarizer computes them: the plain mean of subject accuracies (its ``mmlu``,
  ``naive_average``; the metric ``mmlu/<group>``) and the mean weighted by subject size (its ``mmlu-weighted``;
  ``mmlu/<group>_weighted``).
- **GSM8K**: lm-eval's ``gsm8k`` task, greedy, ``num_fewshot`` examples, scored by exact match of the number its
  filter extracts against the number after "####". ``prompt: opencompass`` gives it SMoRA's OpenCompass prompt
  (``gsm8k_gen_1d7fe4``): the 4 fixed worked examples of that config (``gsm8k_opencompass.json``), each question as
  "Question: …\nLet's think step by step\nAnswer:", the turns joined by "\n" as OpenCompass joins a base model's
  prompt, and the last number of the generation (``gsm8k_postprocess``: ``-?\\d+\\.\\d+|-?\\d+``) as the answer.
  ``prompt: lm_eval`` keeps lm-eval's own ("Question: …\nAnswer:", examples from the training split).

Per-item scores (``rankmix.uncertainty``): every question's 0/100 correctness. A subject's accuracy and GSM8K's exact
match are means (closed-form standard error; GSM8K's from the per-sample results lm-eval logs, ``log_samples``, not
re-scored). A group's plain mean of subject accuracies is a mean of stratum means, with the stratified standard
error (strata: subjects); its ``_weighted`` twin is the mean of its questions, with the same strata. Item ids are
``mmlu/<subject>/<index>`` and ``gsm8k/<doc_id>``, so a mean over columns (``test/average``) adds up a question's
shares in ``mmlu/overall`` and ``mmlu/law`` rather than taking them as independent.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from rankmix import uncertainty
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


# OpenCompass mmlu_ppl_ac766d's ``mmlu_all_sets``, in its order (the 57 subjects of cais/mmlu)
MMLU_SUBJECTS = (
    "college_biology", "college_chemistry", "college_computer_science", "college_mathematics", "college_physics",
    "electrical_engineering", "astronomy", "anatomy", "abstract_algebra", "machine_learning", "clinical_knowledge",
    "global_facts", "management", "nutrition", "marketing", "professional_accounting", "high_school_geography",
    "international_law", "moral_scenarios", "computer_security", "high_school_microeconomics", "professional_law",
    "medical_genetics", "professional_psychology", "jurisprudence", "world_religions", "philosophy", "virology",
    "high_school_chemistry", "public_relations", "high_school_macroeconomics", "human_sexuality",
    "elementary_mathematics", "high_school_physics", "high_school_computer_science", "high_school_european_history",
    "business_ethics", "moral_disputes", "high_school_statistics", "miscellaneous", "formal_logic",
    "high_school_government_and_politics", "prehistory", "security_studies", "high_school_biology",
    "logical_fallacies", "high_school_world_history", "professional_medicine", "high_school_mathematics",
    "college_medicine", "high_school_us_history", "sociology", "econometrics", "high_school_psychology",
    "human_aging", "us_foreign_policy", "conceptual_physics",
)
MMLU_LABELS = ("A", "B", "C", "D")  # the keys of the config's template dicts, the order PPLInferencer scores them
_QUESTION = "{input}\nA. {A}\nB. {B}\nC. {C}\nD. {D}"  # question_overall
_ICE_TOKEN = "</E>"


def mmlu_subjects() -> list[str]:
    """The 57 MMLU subjects (OpenCompass's ``mmlu_all_sets``), sorted."""
    return sorted(MMLU_SUBJECTS)


def opencompass_mmlu_entry(record: Mapping) -> dict[str, str]:
    """A cais/mmlu record (question, choices, answer) as OpenCompass's ``MMLUDataset`` row: input, A-D, target, in
    that order (the order ``safe_format`` fills them). The question is kept as it is, spaces and newlines included."""
    if "input" in record:
        return {k: str(record[k]) for k in ("input", *MMLU_LABELS, "target")}
    choices = list(record["choices"])
    if len(choices) != 4:
        raise ValueError(f"an MMLU record has 4 choices, this one {len(choices)}: {record['question']!r}")
    return {"input": record["question"], **dict(zip(MMLU_LABELS, choices, strict=True)),
            "target": MMLU_LABELS[int(record["answer"])]}


def _safe_format(text: str, entry: Mapping) -> str:
    """OpenCompass's ``utils.prompt.safe_format``: one ``str.replace`` of "{key}" per field, in the entry's order."""
    for key, value in entry.items():
        text = text.replace(f"{{{key}}}", str(value))
    return text


def opencompass_mmlu_ice(examples: Sequence[Mapping]) -> str:
    """The in-context examples of one question (OpenCompass ``BaseRetriever.generate_ice``): no examples give ""
    (``ZeroRetriever``, whose end token is ""); k examples (``FixKRetriever``: separator and end token "\n") give
    each as its answer's ice template "{question}\nAnswer: {target}\n" filled from its own row, joined by "\n",
    plus "\n"."""
    if not examples:
        return ""
    items = []
    for example in map(opencompass_mmlu_entry, examples):
        items.append(_safe_format(f"{_QUESTION}\nAnswer: {example['target']}\n", example))
    return "\n".join(items) + "\n"


def opencompass_mmlu_prompts(subject: str, record: Mapping, examples: Sequence[Mapping] = ()) -> dict[str, str]:
    """The four texts OpenCompass's PPL inferencer scores for one question, by candidate label
    (``PromptTemplate.generate_label_prompt_item``): the label's template, its ice token replaced by the examples
    (``opencompass_mmlu_ice``), then every field of the question's row filled, examples included."""
    hint = f'The following are multiple choice questions (with answers) about  {subject.replace("_", " ")}.\n\n'
    entry = opencompass_mmlu_entry(record)
    ice = opencompass_mmlu_ice(examples)
    return {label: _safe_format(f"{hint}{_ICE_TOKEN}{_QUESTION}\nAnswer: {label}".replace(_ICE_TOKEN, ice), entry)
            for label in MMLU_LABELS}


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

    from rankmix.data.hub_files import local_dataset_kwargs

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


def evaluate(lm, task_files: Sequence[str], num_fewshot: int, limit: int | None, gen_kwargs: str | None = None,
             log_samples: bool = False) -> tuple:
    """lm-eval's ``simple_evaluate`` on ``task_files``: (its per-task results, the sample counts), and with
    ``log_samples`` its per-sample results by task (one per document and filter, with the metric values)."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    out = simple_evaluate(model=lm, tasks=list(task_files), num_fewshot=num_fewshot, limit=limit, log_samples=log_samples,
                          task_manager=TaskManager(include_defaults=False), gen_kwargs=gen_kwargs,
                          bootstrap_iters=0, random_seed=0, numpy_random_seed=0, torch_random_seed=0,
                          fewshot_random_seed=0)
    if log_samples:
        return out["results"], out["n-samples"], out.get("samples") or {}
    return out["results"], out["n-samples"]


def load_mmlu(dataset_path: str, subject: str, split: str) -> list[dict]:
    """One split of one subject from the cais/mmlu hub id or a local copy in its layout."""
    import datasets

    from rankmix.data.hub_files import local_dataset_kwargs

    return list(datasets.load_dataset(dataset_path, subject, split=split, **local_dataset_kwargs(dataset_path)))


def opencompass_ppl(model, tokenizer, texts: Sequence[str], max_length: int) -> list[float]:
    """OpenCompass ``HuggingFaceBaseModel.get_ppl`` on one batch: each text tokenized with special tokens (cut from
    the left past ``max_length``), left-padded, the model run on ids and attention mask (no position ids); per text
    the summed next-token cross-entropy over targets that are not the pad id, divided by its count of non-pad ids."""
    from rankmix.data.loading import pad_left

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = []
    for text in texts:
        one = tokenizer(text, add_special_tokens=True)["input_ids"]
        if len(one) > max_length:
            side, tokenizer.truncation_side = tokenizer.truncation_side, "left"
            try:
                one = tokenizer(text, add_special_tokens=True, truncation=True, max_length=max_length)["input_ids"]
            finally:
                tokenizer.truncation_side = side
        ids.append(one)
    batch, mask = pad_left(ids, pad)
    device = next(model.parameters()).device
    batch, mask = batch.to(device), mask.to(device)
    logits = model(input_ids=batch, attention_mask=mask).logits
    scores = []
    for i in range(batch.shape[0]):  # one row at a time: the float logits of a whole batch need not fit
        loss = torch.nn.functional.cross_entropy(logits[i, :-1].float(), batch[i, 1:], ignore_index=pad,
                                                 reduction="sum")
        scores.append(float(loss) / int((batch[i] != pad).sum()))
    return scores


def mmlu_subject(model, tokenizer, subject: str, questions: Sequence[Mapping], examples: Sequence[Mapping],
                 batch_size: int, max_length: int) -> list[dict]:
    """One subject as OpenCompass's ``PPLInferencer`` runs it: per question its examples (the last ones dropped
    while the first candidate's text is over ``max_length`` tokens), every candidate label in turn over all
    questions in batches of ``batch_size``, the prediction the label of lowest score (the first on a tie)."""
    ice = []
    for q in questions:
        kept = list(examples)
        while kept and len(tokenizer(opencompass_mmlu_prompts(subject, q, kept)["A"],
                                     add_special_tokens=True)["input_ids"]) > max_length:
            kept = kept[:-1]
        ice.append(kept)
    prompts = [opencompass_mmlu_prompts(subject, q, kept) for q, kept in zip(questions, ice, strict=True)]
    scores = {}
    for label in MMLU_LABELS:
        texts = [p[label] for p in prompts]
        scores[label] = [s for start in range(0, len(texts), batch_size)
                         for s in opencompass_ppl(model, tokenizer, texts[start:start + batch_size], max_length)]
    records = []
    for i, q in enumerate(questions):
        row = [scores[label][i] for label in MMLU_LABELS]
        prediction = MMLU_LABELS[row.index(min(row))]
        target = opencompass_mmlu_entry(q)["target"]
        records.append({"subject": subject, "index": i, "target": target, "prediction": prediction,
                        "correct": prediction == target, "ppl": dict(zip(MMLU_LABELS, row, strict=True)),
                        "n_examples": len(ice[i])})
    return records


def group_means(acc: Mapping[str, float], sizes: Mapping[str, int], members: Sequence[str]) -> tuple[float, float]:
    """(plain mean of the members' accuracies, mean weighted by their question counts): OpenCompass's summary
    groups ``mmlu`` (``naive_average``) and ``mmlu-weighted`` (weights = the subjects' test sizes)."""
    plain = sum(acc[s] for s in members) / len(members)
    weighted = sum(acc[s] * sizes[s] for s in members) / sum(sizes[s] for s in members)
    return plain, weighted


def mmlu(lm, settings: Mapping, out_dir: Path) -> dict[str, float]:
    """``mmlu/<subject>`` accuracy in percent, and per group (overall, law, medical) ``mmlu/<group>`` (plain mean of
    its subjects, OpenCompass's ``mmlu``) and ``mmlu/<group>_weighted`` (size-weighted, its ``mmlu-weighted``).
    ``lm``: the model and tokenizer (lm-eval's ``HFLM`` or anything with ``model``, ``tokenizer``, ``batch_size``,
    ``max_length``). Every question's scores go to ``<out_dir>/mmlu.jsonl``."""
    subjects = list(settings.get("subjects") or mmlu_subjects())
    unknown = [s for s in subjects if s not in MMLU_SUBJECTS]
    if unknown:
        raise ConfigError("task.benchmarks.mmlu.subjects", unknown, "not MMLU subjects")
    groups = {"law": list(settings["law"]), "medical": list(settings["medical"])}
    for name, members in groups.items():
        stray = [s for s in members if s not in subjects]
        if stray:
            raise ConfigError(f"task.benchmarks.mmlu.{name}", stray, "not among the evaluated subjects "
                              "(task.benchmarks.mmlu.subjects)")
        if not members:
            raise ConfigError(f"task.benchmarks.mmlu.{name}", members, "needs at least one subject")
    k = int(settings.get("num_fewshot", 0))
    limit = settings.get("limit")
    path = settings.get("dataset_path") or "cais/mmlu"
    batch_size = int(settings.get("batch_size") or lm.batch_size)
    max_length = int(settings.get("max_length") or lm.max_length)
    model, tokenizer = lm.model, lm.tokenizer
    was_training = model.training
    model.eval()
    records = []
    try:
        with torch.no_grad():
            for subject in subjects:
                questions = load_mmlu(path, subject, "test")[: int(limit) if limit else None]
                examples = load_mmlu(path, subject, "dev")[:k] if k else []
                if len(examples) < k:
                    raise ConfigError("task.benchmarks.mmlu.num_fewshot", k,
                                      f"{subject}'s dev split has {len(examples)} records")
                records += mmlu_subject(model, tokenizer, subject, questions, examples, batch_size, max_length)
    finally:
        model.train(was_training)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "mmlu.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    sizes = {s: sum(r["subject"] == s for r in records) for s in subjects}
    acc = {s: 100.0 * sum(r["correct"] for r in records if r["subject"] == s) / sizes[s] for s in subjects}
    metrics = {f"mmlu/{s}": acc[s] for s in subjects}
    for name, members in {"overall": subjects, **groups}.items():
        metrics[f"mmlu/{name}"], metrics[f"mmlu/{name}_weighted"] = group_means(acc, sizes, members)
    record_mmlu(records, {"overall": subjects, **groups})
    return metrics


def record_mmlu(records: Sequence[Mapping], groups: Mapping[str, Sequence[str]]) -> None:
    """Per-item scores of ``mmlu/<subject>`` (a mean), ``mmlu/<group>`` (the plain mean of its subjects' means:
    stratified by subject) and ``mmlu/<group>_weighted`` (the mean of its questions, subject-weighted by size: the
    same strata) from ``mmlu_subject``'s records."""
    by_subject: dict[str, list[Mapping]] = {}
    for r in records:
        by_subject.setdefault(r["subject"], []).append(r)
    for subject, rows in by_subject.items():
        uncertainty.record(f"mmlu/{subject}", [f"mmlu/{subject}/{r['index']}" for r in rows],
                           [100.0 * bool(r["correct"]) for r in rows])
    for name, members in groups.items():
        rows = [r for s in members for r in by_subject.get(s, [])]
        ids = [f"mmlu/{r['subject']}/{r['index']}" for r in rows]
        scores = [100.0 * bool(r["correct"]) for r in rows]
        strata = [r["subject"] for r in rows]
        uncertainty.record(f"mmlu/{name}", ids, scores, strata)
        uncertainty.record(f"mmlu/{name}_weighted", ids, scores, strata,
                           weights={s: len(by_subject[s]) / len(rows) for s in members if s in by_subject})


def gsm8k(lm, settings: Mapping, out_dir: Path) -> dict[str, float]:
    """``gsm8k/accuracy`` (flexible-extract: the last number) and ``gsm8k/strict`` ("#### n"), in percent."""
    prompt = settings.get("prompt", "lm_eval")
    if prompt not in PROMPTS:
        raise ConfigError("task.benchmarks.gsm8k.prompt", prompt, f"must be one of {', '.join(PROMPTS)}")
    files = [overlay("gsm8k", out_dir, settings.get("dataset_path"), PROMPTS[prompt]())]
    gen = f"max_gen_toks={int(settings['max_gen_toks'])}" if settings.get("max_gen_toks") else None
    results, _, samples = evaluate(lm, files, int(settings.get("num_fewshot", 4)), settings.get("limit"), gen,
                                   log_samples=True)
    r = results["gsm8k"]
    metrics = {"gsm8k/accuracy": 100.0 * r["exact_match,flexible-extract"],
               "gsm8k/strict": 100.0 * r["exact_match,strict-match"]}
    for name, key in (("gsm8k/accuracy", "flexible-extract"), ("gsm8k/strict", "strict-match")):
        rows = sorted((s for s in samples.get("gsm8k", []) if s.get("filter") == key), key=lambda s: s["doc_id"])
        uncertainty.record(name, [f"gsm8k/{s['doc_id']}" for s in rows],
                           [100.0 * float(s["exact_match"]) for s in rows])
    return metrics
