"""DS-1000 (Lai et al., 2023), scored with the semantics of its own harness; every program runs in
``rankmix.benchmarks.sandbox``, never in this process.

The harness, as verified (github.com/xlang-ai/DS-1000 itself has no stored snapshot here, so the facts come from
copies of its files; line numbers are those of the copy named):

- Records: one JSON object a line in ``data/ds1000.jsonl.gz`` (hub ``xlangai/DS-1000``, split ``test``, file
  ``test.jsonl``) with ``prompt``, ``reference_code``, ``metadata`` {problem_id, library_problem_id, library,
  test_case_cnt, perturbation_type, perturbation_origin_id} and ``code_context``; the context defines
  ``generate_test_case(test_case_id)``, ``exec_test(result, ans)``, an ``exec_context`` with ``[insert]`` and
  ``test_execution(solution)``, some also ``test_string(solution)``
  (Soul22238/EECS487GroupProject@2542bcd7 DS-1000-dataset/data/sample300ds1000.jsonl:1; loading:
  test_ds1000.py:12-18 of Soul22238/EECS487GroupProject@80904335).
- Program: ``code_context + '\\n' + f'code = {repr(solution)}\\n' + 'test_execution(code)\\n'`` then
  ``'test_string(code)\\n'`` if ``'test_string('`` occurs in the context, else ``'\\n'`` (test_ds1000.py:35-40).
- A program passes when running it raises nothing within ``timeout=120`` s (test_ds1000.py:42; execution.py:16-37,
  83-88 of the same copy: ``exec`` under ``time_limit``, any exception or timeout fails).
- Post-processing: split at ``</code>``, drop ```` ```python ````, split at ```` ``` ````, split at
  ``\\nEND SOLUTION``, drop ``<code>`` (test_ds1000.py:62-71). Generation stops at ``</code>`` and ``# SOLUTION END``
  (bigcode-project/bigcode-evaluation-harness@48d56dcd bigcode_eval/tasks/ds1000.py:66); ``postprocess`` cuts at
  ``# SOLUTION END`` first, so an unstopped generation scores as a stopped one would.
- Report: the mean 0/1 score grouped by ``metadata.library`` (test_ds1000.py:57) — one answer a problem, i.e.
  pass@1; the README's expected output lists Matplotlib, Numpy, Pandas, Pytorch, Scipy, Sklearn, Tensorflow.

Here pass@1 is in percent, and ``ds1000/average`` is the unweighted mean of the seven library scores. The harness's
120 s limit is ``SandboxSettings(timeout_s=120)``. A problem passes when the sandbox saw the program run to its end
and the solution is not flagged by ``rankmix.benchmarks.suspicious``; a flagged one whose program finished is
``suspicious``, and ``ds1000/suspicious`` counts the flagged solutions.

Two releases and two extractions (``task.benchmarks.ds1000.release`` / ``extraction``): ``xlang_2024`` is the
release above; ``hkunlp_2022`` is the original ``ds1000_data/`` folder that SMoRA's OpenCompass evaluation read,
scored as its evaluation server did (``rankmix.benchmarks.ds1000_official``). ``extraction: official`` is that
server's five searches (and its Matplotlib line filter), ``xlang`` the harness's ``postprocess`` above; ``max_chars``
blanks longer replies first (OpenCompass: 10,000). ``timeout_s`` is per test case for ``hkunlp_2022`` (60 s), per
program for ``xlang_2024`` (120 s).

Per-item scores (``rankmix.uncertainty``, :func:`record_runs`): a problem's score is its pass rate in percent over
the evaluations made (one greedy evaluation: 0 or 100). ``ds1000/<lib>`` is the mean of its problems' scores, with
the closed-form standard error; ``ds1000/average`` the unweighted mean of the seven library means, with the
stratified standard error (strata: libraries). With repeated sampled evaluations (SMoRA's n runs) ``ds1000/<lib>``
is the mean over runs of the run's pass rate, which is the mean over problems of each problem's pass rate over the
runs (the same problems every run): its standard error is that of those per-problem rates, so both the draw of
problems and that of completions are in it; the spread over runs alone is ``ds1000/<lib>/std``.
``ds1000/<lib>/best`` (the run with the best average) gets that run's 0/100 scores: its standard error over the
problems given that run, which does not count the choice of the best of n runs (a maximum is above a typical run).
Item ids are ``ds1000/<Lib>/<problem id>``; the problems of a library not installed are left out, as they are from
the metric.
"""

from __future__ import annotations

import importlib.util
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from rankmix import uncertainty
from rankmix.benchmarks import ds1000_official, suspicious
from rankmix.benchmarks.sandbox import SandboxSettings, check_isolation, run_program
from rankmix.data.files import jsonl_lines
from rankmix.data.hub_files import local_dataset_kwargs
from rankmix.errors import DataError, first_line

LIBRARIES = ("Pandas", "Numpy", "Matplotlib", "Scipy", "Sklearn", "Pytorch", "Tensorflow")
MODULES = {"Pandas": "pandas", "Numpy": "numpy", "Matplotlib": "matplotlib", "Scipy": "scipy", "Sklearn": "sklearn",
           "Pytorch": "torch", "Tensorflow": "tensorflow"}
FIELDS = ("prompt", "reference_code", "metadata", "code_context")
METADATA = ("problem_id", "library_problem_id", "library", "test_case_cnt", "perturbation_type",
            "perturbation_origin_id")
HUB_ID = "xlangai/DS-1000"
WHERE = f"use DS-1000's data/ds1000.jsonl.gz (github.com/xlang-ai/DS-1000) or the hub dataset {HUB_ID}"
DETAIL_CHARS = 300
RELEASES = ("hkunlp_2022", "xlang_2024")
EXTRACTIONS = ("official", "xlang")


def _check(source: str, rec, fields: tuple[str, ...] = FIELDS) -> dict:
    """``rec`` as a DS-1000 record, or a ``DataError`` naming ``source`` (file:line or dataset record)."""
    if not isinstance(rec, dict):
        raise DataError(f"{source}: expected a JSON object, got {type(rec).__name__}")
    for key in fields:
        if key not in rec:
            raise DataError(f"{source}: missing field {key!r}; DS-1000 records need {', '.join(FIELDS)}")
        if key != "metadata" and not isinstance(rec[key], str):
            raise DataError(f"{source}: field {key!r} must be a string, got {type(rec[key]).__name__}")
    meta = rec["metadata"]
    if not isinstance(meta, dict):
        raise DataError(f"{source}: field 'metadata' must be an object, got {type(meta).__name__}")
    for key in METADATA:
        if key not in meta:
            raise DataError(f"{source}: missing field 'metadata.{key}'; DS-1000 metadata has {', '.join(METADATA)}")
    if meta["library"] not in LIBRARIES:
        raise DataError(f"{source}: metadata.library is {meta['library']!r}; expected one of {', '.join(LIBRARIES)}")
    return rec


def load_problems(path_or_id: str, release: str = "xlang_2024", mode: str = "Insertion") -> list[dict]:
    """DS-1000 problems. ``xlang_2024``: a local ``.jsonl`` / ``.jsonl.gz`` file in the released format, or a hub
    dataset id (split ``test``), every record checked; ``hkunlp_2022``: the original ``ds1000_data`` folder, its
    ``mode`` prompts (``rankmix.benchmarks.ds1000_official.load_release``)."""
    if release not in RELEASES:
        raise DataError(f"DS-1000 release {release!r}; known: {', '.join(RELEASES)}")
    if release == "hkunlp_2022":
        return ds1000_official.load_release(path_or_id, mode)
    path = Path(path_or_id)
    if path.is_file() or path.name.endswith((".jsonl", ".jsonl.gz")):
        if not path.is_file():
            raise DataError(f"{path}: file not found; {WHERE}")
        problems = [_check(f"{path}:{lineno}", rec) for lineno, rec in jsonl_lines(path)]
    else:
        import datasets

        try:
            rows = list(datasets.load_dataset(path_or_id, split="test", **local_dataset_kwargs(path_or_id)))
        except Exception as e:  # noqa: BLE001 -- offline, unknown id, bad format: one message
            reason = first_line(e)
            raise DataError(f"{path_or_id}: not a local file and not loadable from the hub ({reason}); "
                            f"{WHERE}") from None
        problems = [_check(f"{path_or_id} (test split) record {i}", rec) for i, rec in enumerate(rows, 1)]
    if not problems:
        raise DataError(f"{path_or_id}: no records; {WHERE}")
    return problems


def postprocess(generation: str) -> str:
    """The harness's cleanup of a raw generation (after cutting at the ``# SOLUTION END`` stop sequence)."""
    code = generation.split("# SOLUTION END")[0]
    code = code.split("</code>")[0]
    code = code.replace("```python", "")
    code = code.split("```")[0]
    code = code.split("\nEND SOLUTION")[0]
    return code.replace("<code>", "")


def solution(problem: dict, generation: str, extraction: str = "xlang", max_chars: int | None = None) -> str:
    """The code run for ``generation``: longer than ``max_chars`` blanked, then ``official`` (the evaluation
    server's searches, and its filter for Matplotlib) or ``xlang`` (``postprocess``) extraction."""
    if extraction not in EXTRACTIONS:
        raise ValueError(f"DS-1000 extraction {extraction!r}; known: {', '.join(EXTRACTIONS)}")
    if extraction == "official":
        return ds1000_official.official_solution(generation, problem["metadata"]["library"], max_chars)
    return postprocess(ds1000_official.blank_long(generation, max_chars))


def program(problem: dict, solution: str, timeout_s: float = ds1000_official.CASE_TIMEOUT_S) -> str:
    """The program the harness executes for ``solution`` (already extracted); for an ``hkunlp_2022`` problem, the
    evaluation server's work with ``timeout_s`` per test case."""
    if problem.get("release") == "hkunlp_2022":
        return ds1000_official.program(problem, solution, timeout_s)
    context = problem["code_context"]
    return (context + "\n" + f"code = {solution!r}\n" + "test_execution(code)\n"
            + ("test_string(code)\n" if "test_string(" in context else "\n"))


def missing_libraries() -> dict[str, str]:
    """Library name -> why it cannot be scored, for each library whose module this interpreter (the one the
    sandbox runs) cannot import."""
    return {lib: f"module {module} is not installed (pip install '.[ds1000]')"
            for lib, module in MODULES.items() if importlib.util.find_spec(module) is None}


def _run(problems: list[dict], solutions: list[str], settings: SandboxSettings):
    """Each problem's program in the sandbox (an ``hkunlp_2022`` one with its test cases' time), in order."""
    check_isolation(settings)

    def one(item):
        problem, code = item
        if problem.get("release") == "hkunlp_2022":
            limit = ds1000_official.sandbox_seconds(problem, settings.timeout_s)
            return run_program(program(problem, code, settings.timeout_s), replace(settings, timeout_s=limit))
        return run_program(program(problem, code), settings)

    with ThreadPoolExecutor(max_workers=max(1, settings.workers)) as pool:
        return list(pool.map(one, zip(problems, solutions, strict=True)))


def score(problems: list[dict], generations: list[str], settings: SandboxSettings, extraction: str = "xlang",
          max_chars: int | None = None) -> tuple[dict[str, float], dict[str, str], list[dict]]:
    """(metrics, missing, records): pass@1 in percent per library (``ds1000/<library>``) and their unweighted mean
    (``ds1000/average``, only when all seven are scored); metric -> reason for each that is not; one record a
    problem (problem_id, library, generation, status, seconds, suspicious, detail); ``ds1000/suspicious`` counts the
    flagged solutions. Problems of a missing library are not run."""
    if len(problems) != len(generations):
        raise ValueError(f"{len(problems)} problems but {len(generations)} generations; one generation a problem")
    not_installed = missing_libraries()
    present = {p["metadata"]["library"] for p in problems}
    missing = {}
    for lib in LIBRARIES:
        if lib not in present:
            missing[f"ds1000/{lib.lower()}"] = f"no {lib} problems in the problem set"
        elif lib in not_installed:
            missing[f"ds1000/{lib.lower()}"] = not_installed[lib]
    runnable = [i for i, p in enumerate(problems) if p["metadata"]["library"] not in not_installed]
    codes = [solution(p, g, extraction, max_chars) for p, g in zip(problems, generations, strict=True)]
    outcomes = dict(zip(runnable, _run([problems[i] for i in runnable], [codes[i] for i in runnable], settings),
                        strict=True))
    records, passed, counted = [], dict.fromkeys(LIBRARIES, 0), dict.fromkeys(LIBRARIES, 0)
    for i, p in enumerate(problems):
        lib, flagged = p["metadata"]["library"], suspicious.flags(codes[i])
        if i in outcomes:
            outcome = outcomes[i]
            status = suspicious.status(outcome.status, flagged)
            counted[lib] += 1
            passed[lib] += status == "passed"
            seconds, detail = outcome.seconds, outcome.detail[-DETAIL_CHARS:]
        else:
            status, seconds, detail = "not run", 0.0, not_installed[lib]
        records.append({"problem_id": p["metadata"]["problem_id"], "library": lib, "generation": generations[i],
                        "solution": codes[i], "status": status, "seconds": seconds, "suspicious": flagged, "detail": detail})
    metrics = {f"ds1000/{lib.lower()}": 100.0 * passed[lib] / counted[lib] for lib in LIBRARIES if counted[lib]}
    if missing:
        missing["ds1000/average"] = f"needs all {len(LIBRARIES)} libraries scored; not scored: {', '.join(missing)}"
    else:
        metrics["ds1000/average"] = sum(metrics.values()) / len(LIBRARIES)
    metrics["ds1000/suspicious"] = float(sum(bool(r["suspicious"]) for r in records if r["status"] != "not run"))
    return metrics, missing, records


def record_runs(runs: list[list[dict]], best: int | None = None) -> None:
    """Per-item scores (``rankmix.uncertainty``) of ``ds1000/<lib>`` and ``ds1000/average`` from each evaluation's
    records (``score``'s, on the same problems): a problem's pass rate over the runs in percent; with ``best``
    (0-based) also ``ds1000/<lib>/best`` and ``ds1000/average/best`` from that run's records alone."""
    _record_rates("", runs)
    if best is not None:
        _record_rates("/best", [runs[best]])


def _record_rates(suffix: str, runs: list[list[dict]]) -> None:
    found: dict[str, dict[str, list[bool]]] = {}  # library -> problem id -> passed, per run
    for records in runs:
        for r in records:
            if r["status"] != "not run":
                found.setdefault(r["library"], {}).setdefault(str(r["problem_id"]), []).append(r["status"] == "passed")
    ids, scores, strata = [], [], []
    for lib in LIBRARIES:
        if lib not in found:
            continue
        lib_ids = [f"ds1000/{lib}/{i}" for i in found[lib]]
        lib_scores = [100.0 * sum(v) / len(v) for v in found[lib].values()]
        uncertainty.record(f"ds1000/{lib.lower()}{suffix}", lib_ids, lib_scores)
        ids, scores, strata = ids + lib_ids, scores + lib_scores, strata + [lib] * len(lib_ids)
    if set(found) == set(LIBRARIES):  # the unweighted mean of the seven library means: stratified by library
        uncertainty.record(f"ds1000/average{suffix}", ids, scores, strata)
