"""Triton kernels of SMoRA's sparse rank path against autograd of the float64 PyTorch reference.

Without a GPU these run in Triton's CPU interpreter (conftest sets TRITON_INTERPRET=1 before any import);
on a GPU they run compiled. Select them with ``-m triton_interpreter``.
"""

import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from rankmix.adapters import build
from rankmix.kernels import reference, smora_triton

pytestmark = [
    pytest.mark.triton_interpreter,
    pytest.mark.skipif(smora_triton.triton is None, reason="needs the triton package"),
]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# fp32 inputs: compiled, the kernels' dots run in tf32x3 (smora_triton.dot_precision: within a few fp32 ulps);
# the interpreter computes them in fp32. One tolerance for both; plain TF32 would need ~2e-3 and could flip experts.
TOL = {"atol": 1e-4, "rtol": 1e-4}


def _inputs(T, d_in, d_out, r, p, seed=0, tie=False):
    g = torch.Generator().manual_seed(seed)
    E = r // p
    x = torch.randn(T, d_in, generator=g)
    A = torch.randn(r, d_in, generator=g) / d_in**0.5
    B = torch.randn(d_out, r, generator=g)
    W = torch.randn(E, d_in, generator=g) / d_in**0.5
    bias = 0.05 * torch.randn(E, generator=g)
    if tie:  # identical router rows and no bias: every score is tied with its twin
        W[1::2] = W[0::2]
        bias.zero_()
    return [t.to(DEVICE) for t in (x, A, B, W, bias)]


def _compare(T=37, d_in=48, d_out=40, r=8, p=1, k=2, gate="sigmoid", scale=2.0, tie=False):
    x, A, B, W, bias = _inputs(T, d_in, d_out, r, p, tie=tie)
    ours = [t.clone().requires_grad_(True) for t in (x, A, B, W)]
    out, idx, _ = smora_triton.SMoRATriton.apply(*ours, bias, k, p, gate == "sigmoid", scale)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    (out * upstream).sum().backward()
    ref_in = [t.double().clone().requires_grad_(True) for t in (x, A, B, W)]
    ref, ref_idx, _ = reference.smora_dense(*ref_in, bias.double(), k, p, gate, scale)
    (ref * upstream.double()).sum().backward()
    assert torch.equal(idx.long(), ref_idx), "different experts selected"
    torch.testing.assert_close(out.double(), ref, **TOL)
    for name, a, b in zip("x A B W_router".split(), ours, ref_in, strict=True):
        torch.testing.assert_close(a.grad.double(), b.grad, **TOL, msg=lambda m, n=name: f"d{n}: {m}")


@pytest.mark.parametrize("gate", ["sigmoid", "softmax"])
@pytest.mark.parametrize("k", [1, 3, 8])  # k = 1, k < r, k = r
def test_values_and_gradients(gate, k):
    _compare(r=8, k=k, gate=gate)


@pytest.mark.parametrize("gate", ["sigmoid", "softmax"])
@pytest.mark.parametrize(("r", "p", "k"), [(8, 2, 2), (16, 4, 2), (12, 4, 1)])  # block experts, r not a power of 2
def test_block_experts(gate, r, p, k):
    _compare(r=r, p=p, k=k, gate=gate)


@pytest.mark.parametrize("gate", ["sigmoid", "softmax"])
def test_tied_router_scores_pick_the_lower_index(gate):
    _compare(r=8, k=3, gate=gate, tie=True)


def test_token_count_not_a_multiple_of_the_block():
    for T in (1, 15, 17, 50):
        _compare(T=T, d_in=33, d_out=19, r=8, k=2)


def test_half_precision_inputs_accumulate_in_fp32():
    x, A, B, W, bias = _inputs(24, 32, 32, 8, 1)
    dtype = torch.bfloat16 if DEVICE == "cuda" else torch.float16
    out, _, _ = smora_triton.SMoRATriton.apply(x.to(dtype), A.to(dtype), B.to(dtype), W.to(dtype), bias, 2, 1, True, 1.0)
    ref, _, _ = reference.smora_dense(*(t.to(dtype).double() for t in (x, A, B, W)), bias.double(), 2, 1, "sigmoid", 1.0)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), ref, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("gate", ["sigmoid", "softmax"])
def test_layer_triton_backend_matches_dense_masked(gate):
    torch.manual_seed(0)  # the input must not depend on which tests ran before
    x = torch.randn(2, 9, 32).to(DEVICE)
    results = []
    for backend in ("dense_masked", "triton"):
        torch.manual_seed(3)
        layer = build("smora", nn.Linear(32, 24), r=8, k=2, gate=gate, backend=backend, bias_update="none").to(DEVICE)
        with torch.no_grad():
            layer.lora_B.weight.normal_()
            layer.router_bias.normal_(std=0.05)
        xi = x.clone().requires_grad_(True)
        y = layer(xi)
        y.pow(2).sum().backward()
        results.append((y, xi.grad, layer.lora_A.weight.grad, layer.router.weight.grad, layer.load_counts.clone()))
    for a, b in zip(*results, strict=True):  # float32 sums in another order: ~1e-4 apart; a wrong rank would be O(1)
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)


def test_works_without_triton_installed():
    """import rankmix and the smora layer run without Triton; backend=triton falls back with one notice."""
    code = (
        "import sys, warnings; sys.modules['triton'] = None\n"
        "import torch, rankmix.adapters as A\n"
        "warnings.simplefilter('always')\n"
        "layer = A.build('smora', torch.nn.Linear(8, 8), r=4, k=2, backend='triton')\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    layer(torch.randn(3, 8)); layer(torch.randn(3, 8))\n"
        "print(len(w), w[0].message)\n"
        "print(A.build('smora', torch.nn.Linear(8, 8), r=4, k=2).resolve_backend(torch.randn(1, 8)))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    first, second = r.stdout.strip().splitlines()
    assert first.startswith("1 smora: backend=triton needs Triton and a CUDA device")
    assert second == "dense_masked"
