"""SMoRA's Triton kernels compiled for sm_80 and sm_90 on this CPU (Triton's own ptxas, no GPU): what the
interpreter accepts and the compiler refuses fails here. The compiles run in subprocesses without
``TRITON_INTERPRET`` (conftest sets it for the interpreter tests of this process)."""

import csv
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton")
pytestmark = pytest.mark.triton_compile


def _python(args: list[str], tmp_path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")  # compiled here, not found in a cache
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=timeout)


def test_representative_matrix_compiles_both_kernels_for_sm80_and_sm90(tmp_path):
    from rankmix.kernels import smora_triton

    r = _python(["-m", "rankmix.kernels.compile_report", "--matrix", "representative", "--jobs", "1",
                 "--out", str(tmp_path)], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "kernels-compile.csv")))
    assert {(row["kernel"], row["target"]) for row in rows} == {
        (k, t) for k in ("forward", "backward") for t in ("sm_80", "sm_90")}
    assert {row["dtype"] for row in rows} == {"fp32", "bf16", "fp16"}
    assert {row["gate"] for row in rows} == {"sigmoid", "softmax"}
    assert {row["r"] for row in rows} == {"8", "16", "32", "64", "128"}
    assert len({row["config"] for row in rows}) == len(smora_triton.CONFIGS)  # every autotuning configuration
    assert all(int(row["shared"]) > 0 and int(row["registers"]) > 0 and not row["error"] for row in rows)
    assert "shared memory / registers per thread / stack" in (tmp_path / "kernels-compile.md").read_text()


SCRIPT = textwrap.dedent('''
    import torch, triton, triton.language as tl
    from rankmix.kernels import compiled

    @triton.jit
    def matmul(a_ptr, b_ptr, c_ptr, K, BLOCK: tl.constexpr):
        ii = tl.arange(0, BLOCK)
        acc = tl.zeros((BLOCK, BLOCK), tl.float32)
        for k0 in range(0, K, BLOCK):
            a = tl.load(a_ptr + ii[:, None] * K + k0 + ii[None, :])
            b = tl.load(b_ptr + (k0 + ii[:, None]) * BLOCK + ii[None, :])
            acc += tl.dot(a, b)
        tl.store(c_ptr + ii[:, None] * BLOCK + ii[None, :], acc)

    args = [torch.empty(1, dtype=torch.bfloat16), torch.empty(1, dtype=torch.bfloat16), torch.empty(1), 4096]
    target = compiled.TARGETS["sm_80"]
    try:
        compiled.compile_for(matmul, args, {"BLOCK": 8}, triton.Config({}), target)
        print("8 wide: compiled")
    except Exception as e:
        print("8 wide: refused:", type(e).__name__)
    from rankmix.kernels import compile_report
    kernel, kargs, meta = compile_report.launch({"kernel": "forward", "r": 64, "p": 1, "k": 8, "gate": "sigmoid",
                                                 "dtype": "bf16"})
    try:  # the forward kernel with x's tiles 8 wide: a bf16 tl.dot needs K >= 16
        compiled.compile_for(kernel, kargs, meta, triton.Config({"BM": 16, "BK": 8, "BN": 32}), target)
        print("forward BK=8: compiled")
    except Exception as e:
        print("forward BK=8: refused:", type(e).__name__)
    configs = [triton.Config({"BLOCK": b}, num_stages=3) for b in (16, 32, 64, 128)]
    shared = {c.kwargs["BLOCK"]: compiled.compile_for(matmul, args, c.kwargs, c, target).metadata.shared
              for c in configs}
    print("shared", shared)
    prune = compiled.shared_memory_pruner(matmul, target, limit=shared[64])
    kept = prune(configs, dict(zip(["a_ptr", "b_ptr", "c_ptr", "K"], args)), grid=None, warmup=False)
    print("kept", [c.kwargs["BLOCK"] for c in kept])
''')


def test_the_compiler_refuses_a_dot_under_16_wide_and_the_pruner_drops_what_does_not_fit(tmp_path):
    """What the interpreter runs (a 16-bit tl.dot with K = 8, in a toy kernel and in the forward kernel with 8-wide
    x tiles) fails the compile; the autotuner's pruning rule
    keeps exactly the configurations whose compiled shared memory is within the limit (launch options ignored)."""
    (tmp_path / "probe.py").write_text(SCRIPT)
    r = _python([str(tmp_path / "probe.py")], tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout.splitlines()
    assert out[0].startswith("8 wide: refused")
    assert out[1].startswith("forward BK=8: refused")
    shared = eval(out[2].removeprefix("shared "))  # noqa: S307 -- our own printed dict
    assert shared[16] < shared[32] < shared[64] < shared[128]
    assert out[3] == "kept [16, 32, 64]"


def test_the_matrix_holds_every_smora_setting_of_the_tables():
    """(r, rank_partition, k experts) of every experiment that picks the smora method is one the matrix compiles."""
    from conftest import REPO, compose
    from rankmix.kernels import compile_report

    conf = REPO / "conf" / "experiment"
    found = set()
    for path in conf.rglob("*.yaml"):
        if "override /method: smora" in path.read_text():
            m = compose(f"experiment={path.relative_to(conf).with_suffix('').as_posix()}").method
            found.add((m.r, m.rank_partition, m.k // m.rank_partition))
    assert len(found) >= 9 and found <= set(compile_report.TABLE_SETTINGS)
