"""DS-1000 as SMoRA's Tab. 4 scored it: the original release (``ds1000_data/``, 2022), OpenCompass's prompts and
the code-evaluator server's extraction and execution. Every program runs in ``rankmix.benchmarks.sandbox``.

The rules, as read in the official files:

- **Release** (OpenCompass ``configs/datasets/ds1000/ds1000_service_eval_gen_cbc84f.py``: ``path='./ds1000_data/'``;
  code-evaluator ``docker/ds1000/Dockerfile``: ``HKUNLP/DS-1000/raw/main/ds1000_data.zip``, unzipped): one folder a
  problem, ``ds1000_data/<Lib>/<Insertion|Completion>/q<N>/``, holding ``.cfg`` (ini: ``[library] lib``, ``[test]
  test_type, test_case_cnt``, ``[perturbation] perturbation_type, perturbation_origin_id``), ``prompt.txt``,
  ``reference_code.txt``, ``code_context.txt`` (the program with ``[insert]``; it reads ``--test_case``, loads
  ``input/input<i>.pkl`` and writes ``result/result_<i>.pkl``), ``test_code.py`` (``test(result, ans)``, with
  ``stringTest(code)`` where ``test_type`` is 3), ``test_generate_pickle.py``, ``input/``, ``ans/`` (and
  ``ans/oracle_plot.png`` for Matplotlib). A copy of the release: Yale-LILY/NLP4Code@c0fe0c32
  ``DS_1000/ds1000_data`` (files with CRLF line ends).
- **Loader** (OpenCompass ``opencompass/datasets/ds1000.py`` ``DS1000Dataset``, identical in StyxXuan/smora@7e7ada17
  ``packages/opencompass``): ``mode='Insertion'`` by default; problems of a library sorted by the number after
  ``q``; files read in text mode (universal newlines: CRLF becomes LF); the prompt is ``prompt.txt`` as read, given
  as the only user turn (``'{prompt}'``, ``HuggingFacewithChatTemplate``).
- **Blanking** (``DS1000ServiceEvaluator.score``): a prediction over 10,000 characters is sent as ``''``.
- **Extraction** (code-evaluator@de09b8e3 ``evals/ds1000/evaluation.py`` ``ds1000_postprocess``): five
  ``re.search`` with ``re.DOTALL``, each on what the previous left, each replacing the text with its group 1 only
  where it matches: ``<code>(.*?)</code>``, ``(.*?)</code>``, ````` ```python(.*?)``` `````, ````` ```(.*?)``` `````,
  ``BEGIN SOLUTION(.*?)END SOLUTION``. Where the uploaded file's name holds ``Matplotlib`` (the evaluator names it
  ``ds1000_<lib>.json``), ``ds1000_matplotlib_postprocess`` then drops every line containing ``plt.show()``,
  ``plt.clf()``, ``plt.close()`` or ``savefig``. (OpenCompass's own ``ds1000_postprocess`` lacks the second
  search; the server's is the one the service config uses.)
- **Execution** (``score_single``): the problem folder copied into a fresh directory with an empty ``result/``;
  ``program.py`` = ``code_context`` with ``[insert]`` replaced by the extracted code; ``python program.py
  --test_case <i>`` for i in 1..max(1, test_case_cnt), 60 s each (process group killed after); any nonzero exit
  fails. Then ``test_code.py`` is imported; where ``test_type`` is 3, the code's lines that contain ``print`` are
  removed (by ``list.remove`` while iterating the same list, so a line right after a removed one is kept) and
  ``stringTest`` is called (an exception fails; its value is overwritten below); then for each case
  ``pass = test(pickle(result_<i>), pickle(ans<i>)) == 1`` (an exception fails), the last case's value counting.

Here the whole of ``score_single`` runs inside the sandbox as one program (:func:`program`): it writes the
problem's files into a folder of its private working folder, runs each test case as ``<python> program.py --test_case <i>`` with
60 s, imports ``test_code.py`` and applies the checks above. ``test_code.py`` of 159 problems imports ``parser``,
removed in Python 3.10; where it is missing, a stand-in that does what those tests use (``parser.suite`` raising
``SyntaxError`` on code that does not parse, ``parser.st2list`` whose leaves include every token's text) is put on
the path (:data:`PARSER_SHIM`).
"""

from __future__ import annotations

import base64
import configparser
import re
import zlib
from pathlib import Path

from rankmix.errors import DataError

LIBRARIES = ("Pandas", "Numpy", "Tensorflow", "Scipy", "Sklearn", "Pytorch", "Matplotlib")  # the config's order
MODES = ("Insertion", "Completion")
MAX_CHARS = 10_000
CASE_TIMEOUT_S = 60.0
MATPLOTLIB_DROPS = ("plt.show()", "plt.clf()", "plt.close()", "savefig")
SEARCHES = (r"<code>(.*?)</code>", r"(.*?)</code>", r"```python(.*?)```", r"```(.*?)```",
            r"BEGIN SOLUTION(.*?)END SOLUTION")
CFG = (("library", "lib"), ("test", "test_type"), ("test", "test_case_cnt"), ("perturbation", "perturbation_type"),
       ("perturbation", "perturbation_origin_id"))
TEXT_FILES = ("reference_code.txt", "test_code.py", "code_context.txt", "test_generate_pickle.py", "prompt.txt")
WHERE = ("use the original DS-1000 release: ds1000_data.zip of HKUNLP/DS-1000 (the file code-evaluator's "
         "docker/ds1000/Dockerfile downloads), unzipped: ds1000_data/<Lib>/Insertion/q<N>/")


# -- extraction ---------------------------------------------------------------------------------------------------
def blank_long(prediction: str, max_chars: int | None = MAX_CHARS) -> str:
    """OpenCompass's ``DS1000ServiceEvaluator``: a prediction longer than ``max_chars`` is sent as ``''``."""
    return "" if max_chars is not None and len(prediction) > max_chars else prediction


def extract(text: str) -> str:
    """code-evaluator's ``ds1000_postprocess``: the five searches in turn, each narrowing what the last one left."""
    for pattern in SEARCHES:
        found = re.search(pattern, text, re.DOTALL)
        if found:
            text = found.group(1)
    return text


def drop_figure_calls(code: str) -> str:
    """The Matplotlib step: every line naming ``plt.show()``, ``plt.clf()``, ``plt.close()`` or ``savefig`` goes."""
    return "\n".join(line for line in code.split("\n") if not any(p in line for p in MATPLOTLIB_DROPS))


def official_solution(prediction: str, library: str, max_chars: int | None = MAX_CHARS) -> str:
    """What the evaluation server executes for a model's raw reply to a problem of ``library``."""
    code = extract(blank_long(prediction, max_chars))
    return drop_figure_calls(code) if library == "Matplotlib" else code


def string_test_input(code: str) -> str:
    """The code ``stringTest`` receives: lines holding ``print`` (and not split around a bare ``#``) removed the
    official way, by removing from the list being iterated, so the line after each removed one is not looked at."""
    lines = code.split("\n")
    for line in lines:
        if "print" in line and "#" not in line.split("print"):
            lines.remove(line)
    return "\n".join(lines)


# -- the release ----------------------------------------------------------------------------------------------------
def _read_problem(folder: Path, lib: str) -> dict:
    cfg = configparser.RawConfigParser()
    if not cfg.read(folder / ".cfg"):
        raise DataError(f"{folder / '.cfg'}: file not found; {WHERE}")
    meta = {}
    for section, key in CFG:
        try:
            meta[key] = cfg.get(section, key)
        except (configparser.NoSectionError, configparser.NoOptionError):
            raise DataError(f"{folder / '.cfg'}: no [{section}] {key}; the release's .cfg has "
                            f"{', '.join(f'[{s}] {k}' for s, k in CFG)}") from None
    if meta["lib"] != lib:
        raise DataError(f"{folder / '.cfg'}: lib = {meta['lib']}, but the folder is under {lib}/")
    texts = {}
    for name in TEXT_FILES:
        try:
            with open(folder / name, encoding="UTF-8") as f:  # text mode: universal newlines, as the loader reads
                texts[name.split(".")[0]] = f.read()
        except FileNotFoundError:
            raise DataError(f"{folder / name}: file not found; every problem folder has "
                            f"{', '.join(TEXT_FILES)}") from None
    try:
        cases, test_type = int(meta["test_case_cnt"]), int(meta["test_type"])
    except ValueError:
        raise DataError(f"{folder / '.cfg'}: test_case_cnt and test_type must be integers") from None
    number = int(folder.name[1:])
    return {"prompt": texts["prompt"], "reference_code": texts["reference_code"],
            "code_context": texts["code_context"], "test_code": texts["test_code"],
            "metadata": {"problem_id": f"{lib}/{folder.name}", "library_problem_id": number, "library": lib,
                         "test_case_cnt": cases, "test_type": test_type,
                         "perturbation_type": meta["perturbation_type"],
                         "perturbation_origin_id": meta["perturbation_origin_id"]},
            "problem_path": str(folder), "release": "hkunlp_2022"}


def load_release(path: str | Path, mode: str = "Insertion", libs: tuple[str, ...] = LIBRARIES) -> list[dict]:
    """The problems of the original release under ``path`` (the ``ds1000_data`` folder), library by library in
    the config's order, each library's problems sorted by number, as OpenCompass's ``DS1000Dataset.load`` reads
    them. A library folder that is absent is skipped (its cells are then ``missing``)."""
    if mode not in MODES:
        raise DataError(f"DS-1000 mode {mode!r}; the release has {', '.join(MODES)}")
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; {WHERE}")
    problems = []
    for lib in libs:
        source = root / lib / mode
        if not source.is_dir():
            continue
        names = [p.name for p in source.iterdir() if p.is_dir()]
        bad = [n for n in names if not re.fullmatch(r"q\d+", n)]
        if bad:
            raise DataError(f"{source}: folders {', '.join(sorted(bad))} are not named q<N>")
        problems += [_read_problem(source / n, lib) for n in sorted(names, key=lambda n: int(n[1:]))]
    if not problems:
        raise DataError(f"{root}: no <Lib>/{mode}/q<N>/ problem folders; {WHERE}")
    return problems


def problem_files(problem: dict) -> dict[str, bytes]:
    """Every file of the problem's folder (relative path -> bytes), as ``score_single`` copies the folder."""
    folder = Path(problem["problem_path"])
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- the program run in the sandbox -----------------------------------------------------------------------------
PARSER_SHIM = '''"""A stand-in for the ``parser`` module (removed in Python 3.10) for DS-1000's stringTest: ``suite`` raises
SyntaxError where the code does not parse; the leaves of ``st2list`` are the token numbers and every token's text."""
import ast as _ast
import io as _io
import tokenize as _tokenize


def suite(source):
    _ast.parse(source)
    return [(t.type, t.string) for t in _tokenize.generate_tokens(_io.StringIO(source).readline)]


def st2list(tree, line_info=False, col_info=False):
    return [257] + [[kind, text] for kind, text in tree]
'''

DRIVER = '''import base64, importlib.util, os, pickle, signal, subprocess, sys, zlib

os.makedirs("problem")  # the sandbox's own program.py is this driver: the problem's files go one folder down
os.chdir("problem")
FILES = {files}
for _name, _data in FILES.items():
    _dir = os.path.dirname(_name)
    if _dir:
        os.makedirs(_dir, exist_ok=True)
    with open(_name, "wb") as _f:
        _f.write(zlib.decompress(base64.b64decode(_data)))
os.makedirs("result", exist_ok=True)
SOLUTION = {solution!r}
with open("program.py", "w", encoding="UTF-8") as _f:
    _f.write({context!r}.replace("[insert]", SOLUTION))
for _case in range(1, max(1, {cases}) + 1):
    _proc = subprocess.Popen([sys.executable, "program.py", "--test_case", str(_case)], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        _err = _proc.communicate(timeout={case_timeout})[1]
    except subprocess.TimeoutExpired:
        os.killpg(_proc.pid, signal.SIGKILL)
        _proc.wait()
        raise SystemExit("test case %d: no exit within {case_timeout} s" % _case)
    if _proc.returncode != 0:
        sys.stderr.write(_err.decode("utf-8", "replace")[-1500:])
        raise SystemExit("test case %d: exit status %d" % (_case, _proc.returncode))
if importlib.util.find_spec("parser") is None:
    os.makedirs("_compat", exist_ok=True)
    with open("_compat/parser.py", "w") as _f:
        _f.write({shim!r})
    sys.path.append(os.path.abspath("_compat"))
_spec = importlib.util.spec_from_file_location("test_code", "test_code.py")
test_module = importlib.util.module_from_spec(_spec)
sys.modules["test_code"] = test_module
_spec.loader.exec_module(test_module)
pass_flag = True
if {test_type} == 3:
    pass_flag = test_module.stringTest({string_code!r})
for _case in range(1, max(1, {cases}) + 1):
    with open("ans/ans%d.pkl" % _case, "rb") as _f:
        _ans = pickle.load(_f)
    with open("result/result_%d.pkl" % _case, "rb") as _f:
        _result = pickle.load(_f)
    pass_flag = test_module.test(_result, _ans) == 1
if not pass_flag:
    raise SystemExit("test() did not return 1")
'''


def program(problem: dict, solution: str, case_timeout_s: float = CASE_TIMEOUT_S) -> str:
    """The sandbox program that does ``score_single``'s work for ``solution`` (already extracted): it finishes
    only when the solution passes."""
    files = {name: base64.b64encode(zlib.compress(data)).decode() for name, data in problem_files(problem).items()}
    meta = problem["metadata"]
    return DRIVER.format(files=repr(files), solution=solution, context=problem["code_context"],
                         cases=int(meta["test_case_cnt"]), case_timeout=float(case_timeout_s), shim=PARSER_SHIM,
                         test_type=int(meta["test_type"]), string_code=string_test_input(solution))


def sandbox_seconds(problem: dict, case_timeout_s: float = CASE_TIMEOUT_S) -> float:
    """The wall-clock limit of a problem's sandbox program: each test case's limit plus 60 s to write the files,
    import the test module and compare."""
    return case_timeout_s * max(1, int(problem["metadata"]["test_case_cnt"])) + 60.0


def write_made_up_release(root: str | Path) -> Path:
    """A two-problem folder in the original release's layout (``<root>/ds1000_data``: Numpy q0 and Pandas q0,
    Insertion mode, made-up content) for a rehearsal; returns the ``ds1000_data`` path."""
    import pickle

    import numpy as np
    import pandas as pd

    data = Path(root) / "ds1000_data"
    head = ('import pickle\nimport argparse\nparser = argparse.ArgumentParser()\n'
            'parser.add_argument("--test_case", type=int, default=1)\nargs = parser.parse_args()\n')
    tail = "\nwith open('result/result_{}.pkl'.format(args.test_case), 'wb') as f:\n    pickle.dump(result, f)\n"
    problems = {
        "Numpy": ("x = np.arange(4)", "result = x * 2", np.arange(4), np.arange(4) * 2,
                  "import numpy as np\n\n\ndef test(result, ans):\n    np.testing.assert_array_equal(result, ans)\n"
                  "    return 1\n"),
        "Pandas": ("df = pd.DataFrame({'a': [1, 2]})", "result = df['a'].sum()", pd.DataFrame({"a": [1, 2]}), 3,
                   "def test(result, ans):\n    assert result == ans\n    return 1\n")}
    for lib, (setup, reference, given, answer, test_code) in problems.items():
        q = data / lib / "Insertion" / "q0"
        (q / "input").mkdir(parents=True, exist_ok=True)
        (q / "ans").mkdir(exist_ok=True)
        module = MODULE_ALIASES[lib]
        name = setup.split(" =")[0]
        (q / ".cfg").write_text(f"[library]\nlib = {lib}\n\n[test]\ntest_type = 1\ntest_case_cnt = 1\n\n"
                                "[perturbation]\nperturbation_type = Origin\nperturbation_origin_id = 0\n")
        (q / "prompt.txt").write_text(f"Problem:\nFinish the code.\nA:\n<code>\n{module}\n{setup}\n</code>\n"
                                      "BEGIN SOLUTION\n<code>\n[insert]\n</code>\nEND SOLUTION\n")
        (q / "code_context.txt").write_text(
            f'{head}{module}\n{name} = pickle.load(open(f"input/input{{args.test_case}}.pkl", "rb"))\n[insert]\n{tail}')
        (q / "reference_code.txt").write_text(reference)
        (q / "test_code.py").write_text(test_code)
        (q / "test_generate_pickle.py").write_text("# the pickles were written with the folder\n")
        (q / "input" / "input1.pkl").write_bytes(pickle.dumps(given))
        (q / "ans" / "ans1.pkl").write_bytes(pickle.dumps(answer))
    return data


MODULE_ALIASES = {"Numpy": "import numpy as np", "Pandas": "import pandas as pd"}
