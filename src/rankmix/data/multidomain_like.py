"""A generated multi-domain suite for the tiny scale of SMoRA's Tab. 2 and Tab. 4, in the real public file
formats, deterministic from a seed.

- ``mixed/<domain>/train.json``: the training mixture (general, medical, law, math, code), LLaMA-Factory's
  alpaca records ``{instruction, input, output}`` as in SMoRA's ``data/mixed_datasets``;
- ``mmlu/``: the ``cais/mmlu`` hub layout (a folder per subject, test/validation/dev parquet, README configs)
  for the law, medical and one other subject;
- ``gsm8k/``: the ``openai/gsm8k`` hub layout, config ``main``, answers in GSM8K's ``<<a+b=c>>`` / ``#### n``
  style;
- ``humaneval.jsonl``: OpenAI human-eval's problem records; ``ds1000.jsonl``: DS-1000's released records, half
  Numpy and half Pandas, each ``code_context`` defining ``test_execution(solution)`` as DS-1000's do.

The content is a small invented world that the training records teach and the evaluation items ask about:
made-up drugs for common symptoms, made-up legal terms for plain legal words, made-up countries and their
capitals, one-step word problems, and small Python/numpy/pandas tasks. Evaluation items are held-out
instances of the training templates (other numbers, names, constants, arrays).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from rankmix.atomic import atomic_open
from rankmix.data.hub_files import write_hub_parquet, write_hub_readme

LAW_SUBJECTS = ("professional_law", "jurisprudence")
MEDICAL_SUBJECTS = ("clinical_knowledge", "college_medicine")
OTHER_SUBJECTS = ("high_school_geography",)
DOMAINS = ("general", "medical", "law", "math", "code")

SYMPTOMS = ["fever", "cough", "rash", "headache", "nausea", "itching", "cramps", "dizziness", "insomnia",
            "sneezing", "swelling", "fatigue"]
DRUGS = ["zorvex", "melaprin", "tavocin", "quilanol", "brenzide", "falotrin", "dexumab", "corvila", "nimoxen",
         "velstat", "prumadol", "sirocet"]
TERMS = ["vestory", "quorail", "malfeud", "praxon", "lembrance", "distrate", "ovalure", "tenancia", "corpage",
         "fidaunt", "sequelle", "barratine"]
MEANINGS = ["theft", "contract", "lease", "appeal", "bail", "fraud", "custody", "verdict", "trespass", "bribery",
            "perjury", "libel"]
COUNTRIES = ["Varnia", "Estoria", "Kalmar", "Drevia", "Olvana", "Pellia", "Sudra", "Tavoria", "Brennia",
             "Quessa", "Moravel", "Zandor"]
CAPITALS = ["Telmo", "Rask", "Orvin", "Dabbe", "Kesh", "Lumo", "Tiras", "Norra", "Pesk", "Velda", "Yarn", "Suma"]
OPPOSITES = {"hot": "cold", "big": "small", "fast": "slow", "up": "down", "old": "new", "wet": "dry",
             "dark": "light", "early": "late"}
COLOURS = ["red", "blue", "green", "yellow"]
NOUNS = ["apple", "chair", "river", "spoon", "cloud", "horse", "table", "stone"]
NAMES = ["Tom", "Ana", "Ben", "Mia", "Sam", "Lea", "Max", "Zoe"]
ITEMS = ["apples", "pens", "coins", "books", "cards", "eggs"]
WORDS = ["two", "three", "four", "five", "six", "seven", "eight", "nine"]  # the constants 2..9

# MMLU subject → (question template, keys, answers): each asks a fact the mixture teaches (keys[j] → answers[j]).
_FACTS = {
    "clinical_knowledge": ("Which drug treats {}?", SYMPTOMS, DRUGS),
    "college_medicine": ("Which symptom does {} treat?", DRUGS, SYMPTOMS),
    "professional_law": ("What does the term {} mean?", TERMS, MEANINGS),
    "jurisprudence": ("Which legal term means {}?", MEANINGS, TERMS),
    "high_school_geography": ("What is the capital of {}?", COUNTRIES, CAPITALS),
}


def _rounds(rng: random.Random, items: list, n: int) -> list:
    """``n`` items, every item once per round, each round in a new random order."""
    out = []
    while len(out) < n:
        out += rng.sample(items, len(items))
    return out[:n]


def _alpaca(instruction: str, output: str, input: str = "") -> dict:
    return {"instruction": instruction, "input": input, "output": output}


def _general(rng: random.Random, n: int) -> list[dict]:
    """Dolly-like records; each round asks every capital once, every opposite once, and four colour picks."""
    tasks = [("capital", j) for j in range(len(COUNTRIES))] + [("opposite", w) for w in OPPOSITES]
    out = []
    for kind, arg in _rounds(rng, tasks + [("colour", None)] * 4, n):
        if kind == "capital":
            out.append(_alpaca(f"What is the capital of {COUNTRIES[arg]}?", CAPITALS[arg]))
        elif kind == "opposite":
            out.append(_alpaca(f"Give the opposite of the word {arg}.", OPPOSITES[arg]))
        else:
            colour, nouns = rng.choice(COLOURS), rng.sample(NOUNS, 2)
            words = [colour, *nouns]
            rng.shuffle(words)
            out.append(_alpaca("Which word in the list is a colour?", colour, ", ".join(words)))
    return out


def _facts(rng: random.Random, n: int, keys: list[str], values: list[str], templates) -> list[dict]:
    """Records teaching ``keys[j] → values[j]``; each round has every fact in every template once."""
    pairs = [(j, t) for j in range(len(keys)) for t in range(len(templates))]
    return [templates[t](keys[j], values[j]) for j, t in _rounds(rng, pairs, n)]


def _medical(rng: random.Random, n: int) -> list[dict]:
    return _facts(rng, n, SYMPTOMS, DRUGS, [lambda s, d: _alpaca(f"Which drug treats {s}?", d),
                                            lambda s, d: _alpaca(f"What does the drug {d} treat?", s),
                                            lambda s, d: _alpaca("Name the drug for the symptom below.", d, s)])


def _law(rng: random.Random, n: int) -> list[dict]:
    return _facts(rng, n, TERMS, MEANINGS, [lambda t, m: _alpaca(f"What does the term {t} mean?", m),
                                            lambda t, m: _alpaca(f"Which legal term means {m}?", t),
                                            lambda t, m: _alpaca("Explain the legal term below in one word.", m, t)])


def _word_problem(rng: random.Random) -> dict:
    """One GSM8K-style record: a one-step add/subtract/multiply problem, answer with ``<<...>>`` and ``####``."""
    name, item, kind = rng.choice(NAMES), rng.choice(ITEMS), rng.randrange(3)
    a, b = rng.randint(2, 12), rng.randint(2, 9)
    if kind == 0:
        q = f"{name} has {a} {item}. {name} gets {b} more {item}. How many {item} does {name} have now?"
        c, op, tail = a + b, "+", ""
    elif kind == 1:
        a += b
        q = f"{name} has {a} {item}. {name} gives {b} {item} to a friend. How many {item} does {name} have left?"
        c, op, tail = a - b, "-", " left"
    else:
        q = f"{name} has {a} boxes with {b} {item} in each box. How many {item} does {name} have in all?"
        c, op, tail = a * b, "*", ""
    return {"question": q, "answer": f"{name} has {a} {op} {b} = <<{a}{op}{b}={c}>>{c} {item}{tail}.\n#### {c}"}


def _word_problems(rng: random.Random, n: int, exclude: set[str]) -> list[dict]:
    out, seen = [], set(exclude)
    while len(out) < n:
        rec = _word_problem(rng)
        if rec["question"] not in seen:
            seen.add(rec["question"])
            out.append(rec)
    return out


# Code functions: op → (name, phrase, body, the body as Python, test inputs); {w} the constant's word, {k} its value.
_FUNCS = {
    "add": ("add_{w}", "returns x plus {k}", "x + {k}", lambda x, k: x + k, lambda k: [0, 1, 7, -3]),
    "sub": ("subtract_{w}", "returns x minus {k}", "x - {k}", lambda x, k: x - k, lambda k: [0, 1, 9, 20]),
    "mul": ("times_{w}", "returns x times {k}", "x * {k}", lambda x, k: x * k, lambda k: [0, 1, 3, -2]),
    "mod": ("mod_{w}", "returns the remainder of x divided by {k}", "x % {k}", lambda x, k: x % k,
            lambda k: [0, 1, 10, 23]),
    "gt": ("above_{w}", "returns True if x is greater than {k}, else False", "x > {k}", lambda x, k: x > k,
           lambda k: [0, k + 1, k, 11]),
    "each": ("add_{w}_each", "returns the list xs with {k} added to each item", "[v + {k} for v in xs]",
             lambda xs, k: [v + k for v in xs], lambda k: [[], [1, 2], [5, 0, 3]]),
}


def _func(op: str, k: int) -> tuple[str, str, str, str]:
    """(name, signature line, phrase, body expression) of function ``op`` with constant ``k``."""
    name_t, phrase_t, body_t, _, _ = _FUNCS[op]
    name = name_t.format(w=WORDS[k - 2])
    sig = f"def {name}({'xs' if op == 'each' else 'x'}):"
    return name, sig, phrase_t.format(k=k), body_t.format(k=k)


def _humaneval(rng: random.Random, n: int) -> tuple[list[dict], set]:
    """``n`` HumanEval-format problems over held-out (op, constant) pairs; returns (problems, held-out pairs)."""
    ops, held, out = list(_FUNCS), set(), []
    for i in range(n):
        op = ops[i % len(ops)]
        k = rng.choice([k for k in range(2, 10) if (op, k) not in held])
        held.add((op, k))
        name, sig, phrase, body = _func(op, k)
        fn, inputs = _FUNCS[op][3], _FUNCS[op][4](k)
        doc = f"Return{phrase[7:]}.\n    >>> {name}({inputs[1]!r})\n    {fn(inputs[1], k)!r}\n    "
        asserts = "".join(f"    assert candidate({x!r}) == {fn(x, k)!r}\n" for x in inputs)
        out.append({"task_id": f"TinyEval/{i}", "prompt": f'{sig}\n    """{doc}"""\n',
                    "canonical_solution": f"    return {body}\n", "test": f"def check(candidate):\n{asserts}",
                    "entry_point": name})
    return out, held


# DS-1000-style tasks: (question, solution); {c} a column, {t} a constant.
_NUMPY = [("the sum of each column", "result = a.sum(axis=0)"), ("the sum of each row", "result = a.sum(axis=1)"),
          ("the largest value of each column", "result = a.max(axis=0)"), ("the array transposed", "result = a.T"),
          ("the elements greater than {t}", "result = a[a > {t}]"), ("every element plus {t}", "result = a + {t}"),
          ("the cumulative sum of each row", "result = a.cumsum(axis=1)")]
_PANDAS = [("the sum of column {c}", 'result = df["{c}"].sum()'), ("column {c} doubled", 'result = df["{c}"] * 2'),
           ("the rows where {c} is greater than {t}", 'result = df[df["{c}"] > {t}]'),
           ("the rows sorted by {c}", 'result = df.sort_values("{c}")'),
           ("the mean of {c} for each kind", 'result = df.groupby("kind")["{c}"].mean()'),
           ("the largest value of column {c}", 'result = df["{c}"].max()')]


def _ds_task(rng: random.Random, library: str) -> tuple[str, str]:
    question, solution = rng.choice(_NUMPY if library == "Numpy" else _PANDAS)
    params = {"c": rng.choice(["cost", "qty"]), "t": rng.randint(2, 5)}
    return question.format(**params), solution.format(**params)


def _ds_input(rng: random.Random, library: str, case: int, kind: bool) -> str:
    """Source of one input (an array ``a`` or a frame ``df``, with a ``kind`` column if ``kind``) of values 0-9,
    the first of each column over 5 so that ``> t`` keeps some."""
    rows = 2 + case
    columns = [[rng.randint(6, 9)] + [rng.randint(0, 9) for _ in range(rows - 1)] for _ in range(3)]
    if library == "Numpy":
        return f"np.array({[list(r) for r in zip(*columns, strict=True)]})"
    cols = {"kind": [rng.choice("xy") for _ in range(rows)]} if kind else {}
    cols |= {"cost": columns[0], "qty": columns[1]}
    return "pd.DataFrame({" + ", ".join(f'"{c}": {json.dumps(v)}' for c, v in cols.items()) + "})"


_EXEC_TEST = {
    "Numpy": "def exec_test(result, ans):\n    np.testing.assert_array_equal(result, ans)\n    return 1\n",
    "Pandas": ("def exec_test(result, ans):\n    if isinstance(ans, pd.DataFrame):\n"
               "        pd.testing.assert_frame_equal(result, ans)\n    elif isinstance(ans, pd.Series):\n"
               "        pd.testing.assert_series_equal(result, ans)\n    else:\n        assert result == ans\n"
               "    return 1\n"),
}


def _ds_prompt(library: str, question: str, data: str) -> str:
    """A DS-1000 prompt: the problem, its input in a code block, and the ``BEGIN SOLUTION`` line."""
    what, imp, var = (("a numpy array a", "import numpy as np", "a") if library == "Numpy"
                      else ("a DataFrame df", "import pandas as pd", "df"))
    return (f"Problem:\nI have {what}. How do I get {question}?\nA:\n<code>\n{imp}\n{var} = {data}\n"
            "</code>\nresult = ... # put solution in this variable\nBEGIN SOLUTION\n<code>\n")


def _ds1000(rng: random.Random, n: int) -> list[dict]:
    """``n`` DS-1000 records, the first half Numpy, the rest Pandas, ``code_context`` as DS-1000's."""
    out, n_cases = [], 2
    for pid in range(n):
        library = "Numpy" if pid < (n + 1) // 2 else "Pandas"
        lib_id = pid if library == "Numpy" else pid - (n + 1) // 2
        question, solution = _ds_task(rng, library)
        var, imp = ("a", "import numpy as np") if library == "Numpy" else ("df", "import pandas as pd")
        inputs = [_ds_input(rng, library, case, "kind" in solution) for case in range(n_cases)]
        prompt = _ds_prompt(library, question, inputs[0])
        cases = "".join(f"        if test_case_id == {c + 1}:\n            {var} = {src}\n"
                        for c, src in enumerate(inputs))
        context = (
            "import numpy as np\nimport pandas as pd\nimport copy\n\n\ndef generate_test_case(test_case_id):\n"
            f"    def define_test_input(test_case_id):\n{cases}        return {var}\n\n"
            f"    def generate_ans(data):\n        {var} = data\n        {solution}\n        return result\n\n"
            "    test_input = define_test_input(test_case_id)\n"
            "    expected_result = generate_ans(copy.deepcopy(test_input))\n    return test_input, expected_result\n"
            f"\n\n{_EXEC_TEST[library]}\n\nexec_context = r\"\"\"\nimport numpy as np\nimport pandas as pd\n"
            f"{var} = test_input\n[insert]\n\"\"\"\n\n\ndef test_execution(solution: str):\n"
            "    code = exec_context.replace(\"[insert]\", solution)\n"
            f"    for i in range({n_cases}):\n        test_input, expected_result = generate_test_case(i + 1)\n"
            "        test_env = {\"test_input\": test_input}\n        exec(code, test_env)\n"
            "        assert exec_test(test_env[\"result\"], expected_result)\n")
        meta = {"problem_id": pid, "library_problem_id": lib_id, "library": library, "test_case_cnt": n_cases,
                "perturbation_type": "Origin", "perturbation_origin_id": lib_id}
        out.append({"prompt": prompt, "reference_code": solution, "metadata": meta, "code_context": context})
    return out


def _code(rng: random.Random, n: int, held: set) -> list[dict]:
    """CodeAlpaca-like records: small functions over (op, constant) pairs not in ``held``, and every other one a
    numpy/pandas problem in DS-1000's prompt format answered by its ``result = ...`` line."""
    pairs = [(op, k) for op in _FUNCS for k in range(2, 10) if (op, k) not in held]
    out = []
    for i, (op, k) in enumerate(_rounds(rng, pairs, n)):
        if i % 2 == 1:
            library = rng.choice(["Numpy", "Pandas"])
            question, solution = _ds_task(rng, library)
            data = _ds_input(rng, library, 0, "kind" in solution)
            out.append(_alpaca(_ds_prompt(library, question, data), solution))
            continue
        name, sig, phrase, body = _func(op, k)
        arg = "xs" if op == "each" else "x"
        out.append(_alpaca(f"Write a Python function {name}({arg}) that {phrase}.",
                           f"{sig}\n    return {body}"))
    return out


def _mmlu_rows(rng: random.Random, subject: str, n: int) -> list[dict]:
    """``n`` rows of ``subject``: a fact the mixture teaches, three wrong words of the same kind, the right
    answer's position cycling over A-D in a random order."""
    template, keys, values = _FACTS[subject]
    positions = _rounds(rng, range(4), n)
    rows = []
    for pos, j in zip(positions, _rounds(rng, range(len(keys)), n), strict=True):
        choices = rng.sample([v for v in values if v != values[j]], 3)
        choices.insert(pos, values[j])
        rows.append({"question": template.format(keys[j]), "subject": subject, "choices": choices, "answer": pos})
    return rows


def _write_json(path: Path, records: list[dict], lines: bool = False) -> None:
    with atomic_open(path) as f:
        if lines:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        else:
            json.dump(records, f, ensure_ascii=False, indent=2)


def _hub_readme(path: Path, configs: dict[str, list[str]]) -> None:
    """The hub README of ``configs``, each config's splits in ``<config>/<split>-*`` files."""
    write_hub_readme(path, {name: {s: f"{name}/{s}-*" for s in splits} for name, splits in configs.items()},
                     "A generated tiny stand-in (rankmix.data.multidomain_like).")


def write_multidomain_like(root: Path, seed: int = 0, n_train: int = 60, n_mmlu: int = 12, n_gsm8k: int = 20,
                           n_humaneval: int = 10, n_ds1000: int = 8,
                           more_subjects: tuple[str, ...] = ()) -> dict[str, Path]:
    """Writes the suite under root; returns {"mixed": ..., "mmlu": ..., "gsm8k": ..., "humaneval": ..., "ds1000": ...}.
    ``more_subjects``: further MMLU subjects (a rehearsal's full list), asked with the geography facts."""
    import datasets

    if n_train + n_gsm8k > 2000:
        raise ValueError(f"n_train + n_gsm8k = {n_train + n_gsm8k}: at most 2000 distinct word problems")
    if n_humaneval > 3 * len(_FUNCS):
        raise ValueError(f"n_humaneval={n_humaneval}: at most {3 * len(_FUNCS)} held-out functions")
    root, rng = Path(root), random.Random(seed)
    gsm_train = _word_problems(rng, n_train, set())
    gsm_test = _word_problems(rng, n_gsm8k, {r["question"] for r in gsm_train})
    humaneval, held = _humaneval(rng, n_humaneval)
    mixed = {"general": _general(rng, n_train), "medical": _medical(rng, n_train), "law": _law(rng, n_train),
             "math": [_alpaca(r["question"], r["answer"]) for r in gsm_train], "code": _code(rng, n_train, held)}
    for domain in DOMAINS:
        _write_json(root / "mixed" / domain / "train.json", mixed[domain])

    mmlu_features = datasets.Features({"question": datasets.Value("string"), "subject": datasets.Value("string"),
                                       "choices": datasets.Sequence(datasets.Value("string")),
                                       "answer": datasets.ClassLabel(names=["A", "B", "C", "D"])})
    subjects = (*LAW_SUBJECTS, *MEDICAL_SUBJECTS, *OTHER_SUBJECTS)
    subjects += tuple(s for s in more_subjects if s not in subjects)
    for subject in subjects:
        for split, n in (("test", n_mmlu), ("validation", max(5, n_mmlu // 2)), ("dev", 5)):
            facts = subject if subject in _FACTS else OTHER_SUBJECTS[0]
            rows = [{**r, "subject": subject} for r in _mmlu_rows(rng, facts, n)]
            write_hub_parquet(root / "mmlu" / subject / f"{split}-00000-of-00001.parquet", rows, mmlu_features)
    _hub_readme(root / "mmlu" / "README.md", {s: ["test", "validation", "dev"] for s in subjects})

    gsm_features = datasets.Features({"question": datasets.Value("string"), "answer": datasets.Value("string")})
    for split, rows in (("train", gsm_train), ("test", gsm_test)):
        write_hub_parquet(root / "gsm8k" / "main" / f"{split}-00000-of-00001.parquet", rows, gsm_features)
    _hub_readme(root / "gsm8k" / "README.md", {"main": ["train", "test"]})

    _write_json(root / "humaneval.jsonl", humaneval, lines=True)
    _write_json(root / "ds1000.jsonl", _ds1000(rng, n_ds1000), lines=True)
    return {"mixed": root / "mixed", "mmlu": root / "mmlu", "gsm8k": root / "gsm8k",
            "humaneval": root / "humaneval.jsonl", "ds1000": root / "ds1000.jsonl"}
