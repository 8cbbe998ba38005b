"""DS-1000 as SMoRA's evaluation scored it (rankmix.benchmarks.ds1000_official): the evaluation server's extraction
on replies of every shape, the original release's folder layout read as OpenCompass's loader reads it, and its
execution in the sandbox. Every expected value below was worked out by hand from the official rules; the problems
are made up."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from rankmix.benchmarks import ds1000, ds1000_official
from rankmix.benchmarks.sandbox import SandboxSettings
from rankmix.errors import DataError
from rankmix.modules.benchmark_lm import StopStrings, cut_at_stops, stop_criteria, summarise_runs

FENCE = "`" * 3


# -- extraction: (reply, library, what the server runs) ------------------------------------------------------------
REPLIES = {
    "prose + python block": (
        f"Sure! Here is how:\n{FENCE}python\nresult = a.sum(axis=0)\n{FENCE}\nThis sums the columns.", "Numpy",
        "\nresult = a.sum(axis=0)\n"),
    "code tags": ("<code>\nresult = df.mean()\n</code>\nEND SOLUTION", "Pandas", "\nresult = df.mean()\n"),
    "text then closing code tag": ("result = np.flip(a)\n</code>\nEND SOLUTION", "Numpy", "result = np.flip(a)\n"),
    # the first search finds the later <code>...</code> pair, the prompt's echoed tail: that is what runs
    "text, closing tag, then the prompt's tail": (
        "result = np.flip(a)\n</code>\nEND SOLUTION\n<code>\nprint(result)\n</code>", "Numpy", "\nprint(result)\n"),
    "plain block": (f"Use this:\n{FENCE}\nresult = len(s)\n{FENCE}\nDone.", "Scipy", "\nresult = len(s)\n"),
    "begin/end solution": ("BEGIN SOLUTION\nresult = x ** 2\nEND SOLUTION\nmore", "Sklearn", "\nresult = x ** 2\n"),
    "code tags around begin/end": (
        "<code>\nBEGIN SOLUTION\nresult = t * 2\nEND SOLUTION\n</code>", "Pytorch", "\nresult = t * 2\n"),
    "code tags inside a python block": (
        f"{FENCE}python\n<code>\nresult = 7\n</code>\n{FENCE}", "Numpy", "\nresult = 7\n"),
    "python block before a stray closing tag": (
        f"{FENCE}python\nresult = 1\n{FENCE}\n</code> trailing", "Numpy", "\nresult = 1\n"),
    "two python blocks: the first": (
        f"{FENCE}python\nresult = 'first'\n{FENCE}\nor\n{FENCE}python\nresult = 'second'\n{FENCE}", "Pandas",
        "\nresult = 'first'\n"),
    "python block holding begin/end": (
        f"{FENCE}python\nBEGIN SOLUTION\nresult = 3\nEND SOLUTION\n{FENCE}", "Numpy", "\nresult = 3\n"),
    "unclosed python block: kept whole": (
        f"Answer:\n{FENCE}python\nresult = 4\n", "Numpy", f"Answer:\n{FENCE}python\nresult = 4\n"),
    "bare code": ("result = a[::-1]", "Numpy", "result = a[::-1]"),
    "matplotlib lines dropped": (
        f"{FENCE}python\nplt.plot(x, y)\nplt.show()\nfig.savefig('a.png')\nplt.close()\nplt.clf()\nplt.title('t')\n"
        f"{FENCE}", "Matplotlib", "\nplt.plot(x, y)\nplt.title('t')\n"),
    "the same lines kept outside Matplotlib": (
        f"{FENCE}python\nplt.plot(x, y)\nplt.show()\n{FENCE}", "Numpy", "\nplt.plot(x, y)\nplt.show()\n"),
    "over 10,000 characters: blanked": (f"{FENCE}python\nresult = 0\n{FENCE}" + "#" * 10_000, "Numpy", ""),
}


@pytest.mark.parametrize("shape", REPLIES)
def test_official_extraction_on_every_shape(shape):
    reply, library, expected = REPLIES[shape]
    assert ds1000_official.official_solution(reply, library) == expected
    problem = {"metadata": {"library": library}}
    assert ds1000.solution(problem, reply, "official", 10_000) == expected


def test_blanking_is_strictly_over_the_limit():
    assert ds1000_official.blank_long("x" * 10_000) == "x" * 10_000
    assert ds1000_official.blank_long("x" * 10_001) == ""
    assert ds1000_official.blank_long("x" * 10_001, None) == "x" * 10_001


def test_xlang_extraction_keeps_the_prose_the_official_one_drops():
    reply = REPLIES["prose + python block"][0]
    problem = {"metadata": {"library": "Numpy"}}
    kept = ds1000.solution(problem, reply, "xlang")
    assert kept.startswith("Sure! Here is how:") and "result = a.sum(axis=0)" in kept
    with pytest.raises(SyntaxError):
        compile(kept, "<reply>", "exec")
    compile(ds1000.solution(problem, reply, "official"), "<reply>", "exec")
    with pytest.raises(ValueError, match="extraction"):
        ds1000.solution(problem, reply, "nearest")


def test_string_test_input_removes_print_lines_the_official_way():
    # a line right after a removed one is skipped by the iteration, so it stays even when it prints
    code = "a = 1\nprint(a)\nprint(a + 1)\nb = 2\nprint(b)"
    assert ds1000_official.string_test_input(code) == "a = 1\nprint(a + 1)\nb = 2"
    # a line split around "print" into a bare "#" piece is kept
    assert ds1000_official.string_test_input("#print#\nc = 3") == "#print#\nc = 3"


# -- the original release ------------------------------------------------------------------------------------------
def _cfg(lib: str, test_type: int, cases: int, origin: int) -> str:
    return (f"[perturbation]\r\nperturbation_type = Origin\r\nperturbation_origin_id = {origin}\r\n\r\n"
            f"[test]\r\ntest_case_cnt = {cases}\r\ntest_type = {test_type}\r\n\r\n[library]\r\nlib = {lib}\r\n")


NUMPY_CONTEXT = """import pickle
import argparse
parser = argparse.ArgumentParser()
parser.add_argument("--test_case", type=int, default=1)
args = parser.parse_args()
import numpy as np
a = pickle.load(open(f"input/input{args.test_case}.pkl", "rb"))
[insert]
with open('result/result_{}.pkl'.format(args.test_case), 'wb') as file:
    pickle.dump(result, file)
"""
NUMPY_TEST = "import numpy as np\n\n\ndef test(result, ans):\n    np.testing.assert_array_equal(result, ans)\n    return 1\n"
PARSER_TEST = NUMPY_TEST + """import parser


def extract_element(t):
    if type(t) != list:
        return [t]
    xs = []
    for e in t:
        xs += extract_element(e)
    return xs


def stringTest(code):
    leaves = extract_element(parser.st2list(parser.suite(code)))
    return "for" not in leaves
"""
PANDAS_CONTEXT = """import pickle
import argparse
parser = argparse.ArgumentParser()
parser.add_argument("--test_case", type=int, default=1)
args = parser.parse_args()
import pandas as pd
df = pickle.load(open(f"input/input{args.test_case}.pkl", "rb"))
###BEGIN SOLUTION
[insert]
###END SOLUTION
with open('result/result_{}.pkl'.format(args.test_case), 'wb') as f:
    pickle.dump(result, f)
"""
PANDAS_TEST = "import pandas as pd\n\n\ndef test(result, ans):\n    pd.testing.assert_series_equal(result, ans)\n    return 1\n"


def _problem(folder, lib, number, prompt, context, test_code, reference, inputs, answers, test_type=1):
    q = folder / lib / "Insertion" / f"q{number}"
    (q / "input").mkdir(parents=True)
    (q / "ans").mkdir()
    (q / ".cfg").write_bytes(_cfg(lib, test_type, len(inputs), number).encode())
    for name, text in {"prompt.txt": prompt, "code_context.txt": context, "test_code.py": test_code,
                       "reference_code.txt": reference, "test_generate_pickle.py": "# writes input/ and ans/\n"}.items():
        (q / name).write_bytes(text.replace("\n", "\r\n").encode())  # the release's files have CRLF line ends
    for i, (x, y) in enumerate(zip(inputs, answers, strict=True), 1):
        (q / "input" / f"input{i}.pkl").write_bytes(pickle.dumps(x))
        (q / "ans" / f"ans{i}.pkl").write_bytes(pickle.dumps(y))


NUMPY_PROMPT = ("Problem:\nI have an array and want its rows reversed.\nA:\n<code>\nimport numpy as np\n"
                "a = np.arange(6).reshape(3, 2)\n</code>\nresult = ... # put solution in this variable\n"
                "BEGIN SOLUTION\n<code>\n[insert]\n</code>\nEND SOLUTION\n<code>\nprint(result)\n</code>\n")


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    import pandas as pd

    root = tmp_path_factory.mktemp("release") / "ds1000_data"
    arrays = [np.arange(6).reshape(3, 2), np.array([[5, -1], [0, 2]])]
    _problem(root, "Numpy", 2, NUMPY_PROMPT, NUMPY_CONTEXT, NUMPY_TEST, "result = a[::-1]",
             arrays, [x[::-1] for x in arrays])
    _problem(root, "Numpy", 10, NUMPY_PROMPT.replace("reversed", "summed"), NUMPY_CONTEXT, PARSER_TEST,
             "result = a.sum(axis=1)", arrays, [x.sum(axis=1) for x in arrays], test_type=3)
    frames = [pd.DataFrame({"k": [1, 2, 3], "v": [0.5, 1.5, 2.5]})]
    _problem(root, "Pandas", 0, "Problem:\nTake the column v.\nA:\n<code>\nimport pandas as pd\n</code>\n"
             "BEGIN SOLUTION\n<code>\n[insert]\n</code>\nEND SOLUTION\n", PANDAS_CONTEXT, PANDAS_TEST,
             "result = df['v']", frames, [f["v"] for f in frames])
    _problem(root, "Pandas", 1, "Problem:\nCount the rows.\n", PANDAS_CONTEXT, PANDAS_TEST, "result = len(df)",
             frames, [f["k"] for f in frames])
    completion = root / "Numpy" / "Completion" / "q2"
    completion.mkdir(parents=True)  # the other mode's folders are not read in Insertion mode
    return root


def test_release_is_read_as_the_loader_reads_it(release):
    problems = ds1000.load_problems(str(release), "hkunlp_2022")
    # the config's library order (Pandas first), problems sorted by number (q2 before q10)
    assert [p["metadata"]["problem_id"] for p in problems] == ["Pandas/q0", "Pandas/q1", "Numpy/q2", "Numpy/q10"]
    numpy2 = problems[2]
    assert numpy2["prompt"] == NUMPY_PROMPT  # prompt.txt as read in text mode: CRLF is LF, nothing added
    assert "[insert]" in numpy2["prompt"] and "\r" not in numpy2["prompt"]
    assert numpy2["code_context"] == NUMPY_CONTEXT and numpy2["reference_code"] == "result = a[::-1]"
    assert numpy2["metadata"] == {"problem_id": "Numpy/q2", "library_problem_id": 2, "library": "Numpy",
                                  "test_case_cnt": 2, "test_type": 1, "perturbation_type": "Origin",
                                  "perturbation_origin_id": "2"}
    assert problems[3]["metadata"]["test_type"] == 3
    files = ds1000_official.problem_files(numpy2)
    assert {"input/input1.pkl", "input/input2.pkl", "ans/ans1.pkl", "ans/ans2.pkl", "test_code.py", ".cfg",
            "code_context.txt", "prompt.txt"} <= set(files)


def test_release_errors_name_the_file(release, tmp_path):
    with pytest.raises(DataError, match="ds1000_data.zip"):
        ds1000.load_problems(str(tmp_path / "absent"), "hkunlp_2022")
    with pytest.raises(DataError, match="no <Lib>/Insertion/q<N>/"):
        ds1000_official.load_release(release, "Insertion", ("Tensorflow",))
    with pytest.raises(DataError, match="release"):
        ds1000.load_problems(str(release), "hkunlp_2023")
    broken = tmp_path / "ds1000_data" / "Numpy" / "Insertion" / "q0"
    broken.mkdir(parents=True)
    (broken / ".cfg").write_text("[library]\nlib = Numpy\n")
    with pytest.raises(DataError, match=r"no \[test\] test_type"):
        ds1000.load_problems(str(tmp_path / "ds1000_data"), "hkunlp_2022")


SETTINGS = SandboxSettings(timeout_s=20, workers=2)


def test_release_problems_run_as_the_server_runs_them(release):
    problems = ds1000.load_problems(str(release), "hkunlp_2022")
    replies = [
        f"Here:\n{FENCE}python\nresult = df['v']\n{FENCE}",             # Pandas q0: passes
        "<code>\nresult = df['v']\n</code>",                            # Pandas q1: wrong answer
        "result = a[::-1]\n</code>\nEND SOLUTION",                       # Numpy q2: passes on both test cases
        f"{FENCE}python\nresult = a.sum(axis=1)\nprint(result)\n{FENCE}",  # Numpy q10: stringTest via parser
    ]
    metrics, missing, records = ds1000.score(problems, replies, SETTINGS, "official", 10_000)
    assert [r["status"] for r in records] == ["passed", "failed", "passed", "passed"], records
    assert records[0]["solution"] == "\nresult = df['v']\n"
    assert metrics["ds1000/pandas"] == 50.0 and metrics["ds1000/numpy"] == 100.0
    assert "ds1000/average" not in metrics and "ds1000/scipy" in missing
    # the xlang extraction keeps the prose of the first reply: a syntax error, a failure
    _, _, xlang = ds1000.score(problems[:1], replies[:1], SETTINGS, "xlang")
    assert xlang[0]["status"] == "failed"


def test_string_test_that_does_not_parse_fails(release):
    problem = ds1000.load_problems(str(release), "hkunlp_2022")[3]
    _, _, records = ds1000.score([problem], ["result = a.sum(axis=1)\nif ("], SETTINGS, "official")
    assert records[0]["status"] == "failed"


def test_each_test_case_has_its_own_time_limit(release):
    problem = ds1000.load_problems(str(release), "hkunlp_2022")[2]
    assert ds1000_official.sandbox_seconds(problem, 60) == 2 * 60 + 60
    _, _, records = ds1000.score([problem], ["import time\ntime.sleep(30)\nresult = a[::-1]"],
                                 SandboxSettings(timeout_s=2, workers=1), "official")
    assert records[0]["status"] == "failed" and "no exit within 2.0 s" in records[0]["detail"]


# -- decoding and repeated sampled evaluations -------------------------------------------------------------------
class _Tokenizer:
    """A character-level tokenizer with one special token, enough for the stop logic."""

    eos_token_id = 0
    SPECIAL = {"<|eot_id|>": 1}

    def __call__(self, text, add_special_tokens=False):
        if text in self.SPECIAL:
            return {"input_ids": [self.SPECIAL[text]]}
        return {"input_ids": [ord(c) for c in text]}

    def convert_ids_to_tokens(self, i):
        return {v: k for k, v in self.SPECIAL.items()}.get(i, chr(i))

    def batch_decode(self, rows, skip_special_tokens=False):
        names = {v: k for k, v in self.SPECIAL.items()}
        return ["".join(names.get(int(i), "" if int(i) == 0 else chr(int(i))) for i in row) for row in rows]


def test_stops_in_the_vocabulary_end_by_id_the_others_by_text():
    eos, strings = stop_criteria(_Tokenizer(), ["<|eot_id|>", "<|end_of_text|>"])
    assert eos == [0, 1] and strings == ["<|end_of_text|>"]
    assert cut_at_stops("x = 1<|end_of_text|>junk<|eot_id|>", ["<|end_of_text|>", "<|eot_id|>"]) == "x = 1"


def test_stop_strings_end_each_sequence_on_its_own():
    tok = _Tokenizer()
    crit = StopStrings(tok, ["<|end_of_text|>"], prompt_width=2)
    ids = lambda s: [ord(c) for c in s]  # noqa: E731
    rows = torch.tensor([ids("ab" + "x<|end_of_text|>"), ids("ab" + "y = 2 and 3 more")])
    assert crit(rows, None).tolist() == [True, False]
    # the prompt is not looked at: a stop string in it ends nothing
    crit = StopStrings(tok, ["<|end_of_text|>"], prompt_width=16)
    assert crit(torch.tensor([ids("<|end_of_text|>z")]), None).tolist() == [False]


def test_repeated_runs_report_mean_std_and_the_best_run():
    runs = [{"ds1000/numpy": 10.0, "ds1000/pandas": 20.0, "ds1000/average": 15.0, "ds1000/suspicious": 0.0},
            {"ds1000/numpy": 30.0, "ds1000/pandas": 10.0, "ds1000/average": 20.0, "ds1000/suspicious": 2.0},
            {"ds1000/numpy": 20.0, "ds1000/pandas": 0.0, "ds1000/average": 10.0, "ds1000/suspicious": 1.0}]
    out = summarise_runs(runs)
    assert out["ds1000/numpy"] == pytest.approx(20.0) and out["ds1000/numpy/std"] == pytest.approx(10.0)
    assert out["ds1000/average/best"] == 20.0 and out["ds1000/pandas/best"] == 10.0  # run 2 has the best average
    assert out["ds1000/best_run"] == 2.0 and out["ds1000/runs"] == 3.0
    assert out["ds1000/suspicious"] == pytest.approx(1.0) and "ds1000/suspicious/best" not in out
