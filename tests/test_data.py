"""Generated data and record files: determinism, formats, and errors that name the file and line."""

import json
from pathlib import Path

import pytest

from rankmix.atomic import write_jsonl_atomic
from rankmix.data.files import check_jsonl
from rankmix.data.instruction import InstructionDataModule
from rankmix.data.synthetic import TASKS, generate_records
from rankmix.errors import ConfigError, DataError

GEN = {"kind": "symbolic", "tasks": ["copy", "reverse", "sort"], "n_train": 5, "n_validation": 2, "n_test": 3,
       "min_len": 2, "max_len": 4, "seed": 7}


def test_generation_is_deterministic_and_correct():
    a = list(generate_records(["reverse", "sort", "shift", "first", "last"], 20, 2, 5, seed=3))
    assert a == list(generate_records(["reverse", "sort", "shift", "first", "last"], 20, 2, 5, seed=3))
    assert a != list(generate_records(["reverse", "sort", "shift", "first", "last"], 20, 2, 5, seed=4))
    for r in a:
        xs = r["inputs"].split(" : ")[1].split()
        assert r["targets"].split() == TASKS[r["task"]](xs)
        assert set(r) == {"inputs", "targets", "task", "domain", "metric"}
    assert next(r for r in a if r["task"] == "shift" and "l" in r["inputs"].split(" : ")[1].split())


def test_unknown_generated_task():
    with pytest.raises(ValueError, match="unknown generated task 'nope'"):
        list(generate_records(["nope"], 1, 1, 2, 0))


def test_data_module_generates_once_and_encodes(tmp_path, tiny_tokenizer_for):
    dm = InstructionDataModule(data_dir=None, cache_dir=str(tmp_path), source=GEN, max_length=32)
    dm.prepare_data()
    files = dm.files()
    assert [sum(1 for _ in open(files[s])) for s in ("train", "validation", "test")] == [15, 6, 9]
    before = files["train"].read_text()
    dm.prepare_data()
    assert files["train"].read_text() == before
    dm.set_tokenizer(tiny_tokenizer_for(files["train"]))
    dm.setup()
    ex = dm.examples["train"][0]
    n_prompt = len(ex["prompt_ids"])
    assert ex["labels"][:n_prompt] == [-100] * n_prompt and ex["labels"][n_prompt:] == ex["input_ids"][n_prompt:]
    batch = next(iter(dm.test_dataloader()))
    assert (batch["prompt_mask"][:, -1] == 1).all()  # prompts are left-padded for generation
    assert batch["targets"] and len(batch["task"]) == batch["input_ids"].shape[0]


def test_user_data_dir_must_hold_the_splits(tmp_path):
    (tmp_path / "mine").mkdir()
    write_jsonl_atomic(tmp_path / "mine" / "train.jsonl", [{"inputs": "a", "targets": "b", "task": "t"}])
    dm = InstructionDataModule(data_dir=str(tmp_path / "mine"), cache_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="has no validation.jsonl"):
        dm.check_paths()


@pytest.mark.parametrize(("lines", "message"), [
    (['{"inputs": "a", "targets": "b", "task": "t"}', '{"inputs": "a", "task": "t"}'],
     r"bad.jsonl:2: missing field 'targets'"),
    (['{"inputs": "a", "targets": "b", "task": "t"}', "not json"], r"bad.jsonl:2: not valid JSON"),
    (['["a", "b"]'], r"bad.jsonl:1: expected a JSON object"),
    (['{"inputs": "a", "targets": 3, "task": "t"}'], r"bad.jsonl:1: field 'targets' must be a string"),
    ([], r"bad.jsonl: no records"),
])
def test_bad_records_name_file_and_line(tmp_path, lines, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + ("\n" if lines else ""))
    with pytest.raises(DataError, match=message):
        check_jsonl(path, ("inputs", "targets", "task"))


def test_over_long_record_names_the_fix(tmp_path, tiny_tokenizer_for):
    dm = InstructionDataModule(data_dir=None, cache_dir=str(tmp_path), source=GEN, max_length=6)
    dm.prepare_data()
    dm.set_tokenizer(tiny_tokenizer_for(dm.files()["train"]))
    with pytest.raises(DataError, match=r"train.jsonl: record 1 is \d+ tokens, over task.max_length=6.*"
                                         r"set \+\+task.datamodule.max_length=<tokens>"):
        dm.setup()


@pytest.mark.parametrize(("source", "target", "cutoff", "kept"), [
    (10, 3, 8, (5, 3)),      # a short response is kept whole; the prompt's end is cut
    (3, 10, 8, (3, 5)),      # a short prompt is kept whole; the response is cut
    (10, 10, 8, (4, 4)),     # both long: cut in proportion
    (2, 2, 8, (2, 2)),       # nothing to cut
])
def test_llama_factory_truncation_is_its_infer_seqlen(source, target, cutoff, kept):
    from rankmix.data.instruction import llama_factory_truncation

    s, t = llama_factory_truncation(list(range(source)), list(range(100, 100 + target)), cutoff)
    assert (len(s), len(t)) == kept and s == list(range(kept[0])) and t == list(range(100, 100 + kept[1]))


def test_over_long_records_cut_as_llama_factory(tmp_path, tiny_tokenizer_for):
    dm = InstructionDataModule(data_dir=None, cache_dir=str(tmp_path), source=GEN, max_length=6, overlong="llama_factory",
                               loss_on_prompt=True)
    dm.prepare_data()
    dm.set_tokenizer(tiny_tokenizer_for(dm.files()["train"]))
    dm.setup()
    assert all(len(e["input_ids"]) <= 6 and e["labels"] == e["input_ids"] for e in dm.examples["train"])


def test_atomic_write_leaves_no_partial_file(tmp_path):
    path = tmp_path / "out.jsonl"

    def records():
        yield {"a": 1}
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_jsonl_atomic(path, records())
    assert not path.exists()


def test_an_atomic_folder_appears_whole_or_not_at_all(tmp_path):
    import os

    from rankmix.atomic import atomic_folder

    target = tmp_path / "data"
    with pytest.raises(RuntimeError), atomic_folder(target) as own:
        (own / "half.json").write_text("{}")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []   # neither the folder nor the writer's own copy
    old = os.umask(0o022)
    try:
        with atomic_folder(target) as own:
            assert not target.exists()
            (own / "a.json").write_text("1")
    finally:
        os.umask(old)
    assert target.stat().st_mode & 0o777 == 0o755   # as a plain mkdir gives it, not mkdtemp's 0700
    with atomic_folder(target) as own:   # a writer beside it finished first: its copy stays
        (own / "a.json").write_text("2")
    assert (target / "a.json").read_text() == "1" and [p.name for p in tmp_path.iterdir()] == ["data"]


@pytest.fixture
def tiny_tokenizer_for(tmp_path):
    from rankmix.backbones import build_word_level_tokenizer

    return lambda train_file: build_word_level_tokenizer([train_file], tmp_path / "tok")


def test_word_level_tokenizer_round_trips(tmp_path, tiny_tokenizer_for):
    path = tmp_path / "d.jsonl"
    write_jsonl_atomic(path, [{"inputs": "reverse : a b", "targets": "b a", "task": "reverse"}])
    tok = tiny_tokenizer_for(path)
    ids = tok("reverse : a b", add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == "reverse : a b" and tok.unk_token_id not in ids
    assert json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())


def test_prepared_data_follows_the_contents_of_the_files_it_reads(tmp_path):
    """FLAN files read into the prepared cache: an edited test file gives a new prepared copy with its records."""
    import shutil

    src = tmp_path / "flan"
    shutil.copytree(Path(__file__).parent / "fixtures" / "flan", src)
    source = {"kind": "flan", "test_file": str(src / "combined_test.json"), "train_dir": str(src / "train"),
              "n_train": 2, "n_validation": 1, "seed": 42}

    def prepared():
        dm = InstructionDataModule(data_dir=None, cache_dir=str(tmp_path / "cache"), source=source)
        dm.prepare_data()
        return dm.files()["test"], sum(1 for _ in open(dm.files()["test"]))

    records = [r for r in json.loads((src / "combined_test.json").read_text())
               if r["task"].startswith(("snli", "sst2"))]  # the tasks the training folder has
    (src / "combined_test.json").write_text(json.dumps(records))
    path, n = prepared()
    assert prepared()[0] == path and n == len(records) > 1  # unchanged files: the same copy
    (src / "combined_test.json").write_text(json.dumps(records[:1]))
    edited, m = prepared()
    assert edited != path and m == 1


def test_data_fingerprint_changes_with_a_files_contents_not_its_mtime(tmp_path):
    import os

    from rankmix.data.fingerprints import data_paths, fingerprint

    (tmp_path / "d").mkdir()
    f = tmp_path / "d" / "test.jsonl"
    f.write_text('{"a": 1}\n')
    node = {"data_dir": str(tmp_path / "d"), "source": {"train_file": "org/hub-id", "test_file": None}}
    assert data_paths(node) == [tmp_path / "d"]
    before = fingerprint(data_paths(node))
    os.utime(f, (1, 1))  # touched, or copied: the same contents
    assert fingerprint(data_paths(node)) == before
    f.write_text('{"a": 2}\n')
    assert fingerprint(data_paths(node)) != before
    assert fingerprint(data_paths({"source": {"kind": "symbolic"}})) is None


def test_atomic_writes_respect_the_umask_and_killed_writers_are_cleaned(tmp_path):
    import os

    from rankmix.atomic import atomic_open, stale_temporaries

    old = os.umask(0o022)
    try:
        with atomic_open(tmp_path / "r.json") as f:
            f.write("{}")
    finally:
        os.umask(old)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644
    (tmp_path / ".r.json.abc123.tmp").write_text("{")  # as a killed writer leaves it
    assert stale_temporaries(tmp_path / "r.json") == [tmp_path / ".r.json.abc123.tmp"]


def test_names_from_data_files_stay_inside_their_folder(tmp_path):
    from rankmix.data.files import inside

    assert inside(tmp_path, "a/b.jpg", "image file", "x.json") == tmp_path / "a" / "b.jpg"
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "linked").symlink_to(tmp_path / "elsewhere")  # a symlinked image folder is the user's choice
    assert inside(tmp_path, "linked/c.jpg", "image file", "x.json") == tmp_path / "linked" / "c.jpg"
    with pytest.raises(DataError, match=r"x.json: task name '../../etc/passwd' leads out of"):
        inside(tmp_path, "../../etc/passwd", "task name", "x.json")


def test_runs_side_by_side_fill_a_shared_cache_one_after_the_other(tmp_path):
    """A second process that fills the same cache waits for the first (it failed on h5py's lock before)."""
    import subprocess
    import sys
    import time

    from rankmix.atomic import one_writer

    cache = tmp_path / "prepared" / "shapes-x"
    waiter = ("import sys, time; from rankmix.atomic import one_writer\n"
              f"with one_writer({str(cache)!r}): print(time.time())")
    with one_writer(cache):
        proc = subprocess.Popen([sys.executable, "-c", waiter], stdout=subprocess.PIPE, text=True)
        time.sleep(1.5)
        assert proc.poll() is None   # still waiting for the lock
        released = time.time()
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and float(out) >= released


def test_generated_data_in_the_cache_is_keyed_by_the_code_that_wrote_it(tmp_path, monkeypatch):
    """An edited generator writes its data again: the cached copy a run reads never comes from older code (committed
    CLIP-BART numbers once came from a features file an earlier extractor had left in the cache)."""
    from rankmix.data import coco_like
    from rankmix.data.fingerprints import code_fingerprint
    from rankmix.modules.warm_start import warm_start_path

    (tmp_path / "made_up_writer.py").write_text("SIZE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = code_fingerprint("made_up_writer")
    (tmp_path / "made_up_writer.py").write_text("SIZE = 2\n")
    assert code_fingerprint("made_up_writer") == before   # one key while a run goes on, edited or not
    code_fingerprint.cache_clear()                        # the next run
    assert code_fingerprint("made_up_writer") != before

    source = {"n_train": 4, "n_restval": 0, "n_val": 2, "n_test": 2, "size": 32, "seed": 0, "noise": 0.2}

    class Config:
        model_type = "toy"

        @staticmethod
        def to_dict():
            return {"model_type": "toy"}

    model = type("Model", (), {"config": Config})()
    root, weights = coco_like.prepared(tmp_path, source, "data_dir"), warm_start_path(model, ["a b"], {"epochs": 1}, tmp_path)
    monkeypatch.setattr(coco_like, "code_fingerprint", lambda *modules: "edited")
    import rankmix.modules.warm_start as warm_start

    monkeypatch.setattr(warm_start, "code_fingerprint", lambda *modules: "edited")
    assert coco_like.prepared(tmp_path, source, "data_dir") != root
    assert warm_start_path(model, ["a b"], {"epochs": 1}, tmp_path) != weights
