"""DS-1000 scoring (rankmix.benchmarks.ds1000) on small made-up problems in the released record format."""

from __future__ import annotations

import copy
import gzip
import json

import pytest

from rankmix.benchmarks import ds1000
from rankmix.benchmarks.sandbox import SandboxSettings
from rankmix.errors import DataError

SETTINGS = SandboxSettings(timeout_s=5, workers=4)

NUMPY_CONTEXT = '''import numpy as np
import copy
import io
import tokenize


def generate_test_case(test_case_id):
    def define_test_input(test_case_id):
        if test_case_id == 1:
            a = np.arange(6).reshape(2, 3)
        elif test_case_id == 2:
            a = np.random.default_rng(7).integers(-50, 50, size=(4, 5))
        return a

    def generate_ans(data):
        return data.sum()

    test_input = define_test_input(test_case_id)
    expected_result = generate_ans(copy.deepcopy(test_input))
    return test_input, expected_result


def exec_test(result, ans):
    np.testing.assert_equal(result, ans)
    return 1


exec_context = r"""
import numpy as np
a = test_input
[insert]
"""


def test_execution(solution: str):
    code = exec_context.replace("[insert]", solution)
    for i in range(2):
        test_input, expected_result = generate_test_case(i + 1)
        test_env = {"test_input": test_input}
        exec(code, test_env)
        assert exec_test(test_env["result"], expected_result)


def test_string(solution: str):
    tokens = [t.string for t in tokenize.tokenize(io.BytesIO(solution.encode("utf-8")).readline)]
    assert "for" not in tokens and "while" not in tokens
'''

PANDAS_CONTEXT = '''import pandas as pd
import numpy as np
import copy


def generate_test_case(test_case_id):
    def define_test_input(test_case_id):
        if test_case_id == 1:
            df = pd.DataFrame({"x": [1.0, 2.0, 6.0], "y": [3.0, 5.0, 7.0]})
        return df

    def generate_ans(data):
        return data.mean()

    test_input = define_test_input(test_case_id)
    expected_result = generate_ans(copy.deepcopy(test_input))
    return test_input, expected_result


def exec_test(result, ans):
    try:
        pd.testing.assert_series_equal(result, ans, check_dtype=False)
        return 1
    except Exception:
        return 0


exec_context = r"""
import pandas as pd
import numpy as np
df = test_input
[insert]
"""


def test_execution(solution: str):
    code = exec_context.replace("[insert]", solution)
    for i in range(1):
        test_input, expected_result = generate_test_case(i + 1)
        test_env = {"test_input": test_input}
        exec(code, test_env)
        assert exec_test(test_env["result"], expected_result)
'''


def record(problem_id: int, library: str, context: str, reference: str, prompt: str) -> dict:
    return {"prompt": prompt, "reference_code": reference,
            "metadata": {"problem_id": problem_id, "library_problem_id": problem_id, "library": library,
                         "test_case_cnt": 2 if library == "Numpy" else 1, "perturbation_type": "Origin",
                         "perturbation_origin_id": problem_id},
            "code_context": context}


NUMPY = record(0, "Numpy", NUMPY_CONTEXT, "result = a.sum()\n",
               "Problem:\nHow do I add up every element of a numpy array?\n\nA:\n<code>\nimport numpy as np\n"
               "a = np.arange(6).reshape(2, 3)\n</code>\nresult = ... # put solution in this variable\n"
               "BEGIN SOLUTION\n<code>\n")
PANDAS = record(1, "Pandas", PANDAS_CONTEXT, "result = df.mean()\n",
                "Problem:\nI want the mean of each column of my DataFrame as a Series.\n\nA:\n<code>\n"
                "import pandas as pd\ndf = pd.DataFrame({'x': [1.0, 2.0, 6.0], 'y': [3.0, 5.0, 7.0]})\n</code>\n"
                "result = ... # put solution in this variable\nBEGIN SOLUTION\n<code>\n")

CASES = [  # (problem, raw generation, passes)
    (NUMPY, NUMPY["reference_code"], True),
    (PANDAS, PANDAS["reference_code"], True),
    (NUMPY, "result = a.max()\n", False),
    (PANDAS, "result = df.sum()\n", False),
    (NUMPY, "while True:\n    pass\n", False),
    (NUMPY, "result = 0\nfor v in a.flat:\n    result += v\n", False),  # right answer, but test_string forbids loops
    (NUMPY, "```python\nresult = a.sum()\n```\nThis adds up all elements.", True),
]


@pytest.fixture(scope="module")
def scored():
    return ds1000.score([c[0] for c in CASES], [c[1] for c in CASES], SETTINGS)


def test_reference_passes_and_wrong_fails(scored):
    _, _, records = scored
    assert [r["status"] == "passed" for r in records] == [c[2] for c in CASES], records
    assert [r["library"] for r in records] == [c[0]["metadata"]["library"] for c in CASES]


def test_hanging_solution_fails_within_timeout(scored):
    hang = scored[2][4]
    assert hang["status"] == "timeout"
    assert hang["seconds"] < SETTINGS.timeout_s + 3


def test_metrics_per_library(scored):
    metrics, missing, _ = scored
    assert metrics == {"ds1000/numpy": pytest.approx(40.0), "ds1000/pandas": pytest.approx(50.0),
                       "ds1000/suspicious": 0.0}
    assert missing["ds1000/tensorflow"] == "no Tensorflow problems in the problem set"
    assert set(missing) == {f"ds1000/{lib.lower()}" for lib in ds1000.LIBRARIES if lib not in ("Numpy", "Pandas")} | {
        "ds1000/average"}


def test_average_over_all_seven_libraries(monkeypatch):
    for lib in ds1000.LIBRARIES:
        monkeypatch.setitem(ds1000.MODULES, lib, "numpy")
    problems = [record(i, lib, NUMPY_CONTEXT, "", "") for i, lib in enumerate(ds1000.LIBRARIES)]
    generations = ["result = a.sum()\n" if i % 2 else "result = 0\n" for i in range(len(problems))]
    metrics, missing, _ = ds1000.score(problems, generations, SETTINGS)
    assert missing == {}
    assert metrics["ds1000/average"] == pytest.approx(100.0 * 3 / 7)
    assert metrics["ds1000/pandas"] == 0.0 and metrics["ds1000/numpy"] == 100.0


def test_library_not_installed(monkeypatch):
    monkeypatch.setitem(ds1000.MODULES, "Pandas", "rankmix_no_such_module")
    assert ds1000.missing_libraries()["Pandas"] == (
        "module rankmix_no_such_module is not installed (pip install '.[ds1000]')")
    metrics, missing, records = ds1000.score([NUMPY, PANDAS], [NUMPY["reference_code"]] * 2, SETTINGS)
    assert metrics == {"ds1000/numpy": 100.0, "ds1000/suspicious": 0.0}
    assert "rankmix_no_such_module is not installed" in missing["ds1000/pandas"]
    assert "ds1000/pandas" in missing["ds1000/average"]
    assert records[1]["status"] == "not run" and "rankmix_no_such_module" in records[1]["detail"]


@pytest.mark.parametrize("raw, cleaned", [
    ("result = a.sum()\n</code>\nEND SOLUTION\nSome words.", "result = a.sum()\n"),
    ("```python\nresult = a.sum()\n```\nThat is all.", "\nresult = a.sum()\n"),
    ("<code>\nresult = a.sum()\n</code>", "\nresult = a.sum()\n"),
    ("result = a.sum()\nEND SOLUTION\nmore", "result = a.sum()"),
    ("plt.plot(x, y)\n# SOLUTION END\nplt.show()\n", "plt.plot(x, y)\n"),
    ("result = a.sum()\n", "result = a.sum()\n"),
])
def test_postprocess(raw, cleaned):
    assert ds1000.postprocess(raw) == cleaned


def test_program_layout():
    expected = NUMPY_CONTEXT + "\ncode = 'x = 1'\ntest_execution(code)\ntest_string(code)\n"
    assert ds1000.program(NUMPY, "x = 1") == expected
    assert ds1000.program(PANDAS, "x = 1") == PANDAS_CONTEXT + "\ncode = 'x = 1'\ntest_execution(code)\n\n"


def test_load_problems_jsonl_and_gz(tmp_path):
    lines = "".join(json.dumps(r) + "\n" for r in (NUMPY, PANDAS))
    (tmp_path / "ds1000.jsonl").write_text(lines)
    with gzip.open(tmp_path / "ds1000.jsonl.gz", "wt") as f:
        f.write(lines)
    assert ds1000.load_problems(str(tmp_path / "ds1000.jsonl")) == [NUMPY, PANDAS]
    assert ds1000.load_problems(str(tmp_path / "ds1000.jsonl.gz")) == [NUMPY, PANDAS]


def test_malformed_records_name_file_line_and_field(tmp_path):
    path = tmp_path / "bad.jsonl"
    no_context = {k: v for k, v in PANDAS.items() if k != "code_context"}
    path.write_text(json.dumps(NUMPY) + "\n" + json.dumps(no_context) + "\n")
    with pytest.raises(DataError, match=rf"{path}:2: missing field 'code_context'"):
        ds1000.load_problems(str(path))
    no_library = copy.deepcopy(NUMPY)
    del no_library["metadata"]["library"]
    path.write_text(json.dumps(no_library) + "\n")
    with pytest.raises(DataError, match=rf"{path}:1: missing field 'metadata.library'"):
        ds1000.load_problems(str(path))
    path.write_text(json.dumps(NUMPY) + "\n\n{not json\n")
    with pytest.raises(DataError, match=rf"{path}:3: not valid JSON"):
        ds1000.load_problems(str(path))
    with pytest.raises(DataError, match="file not found"):
        ds1000.load_problems(str(tmp_path / "absent.jsonl.gz"))
