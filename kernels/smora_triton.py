"""Triton kernels for SMoRA's sparse rank path, forward and backward, and their autograd Function.

The adapter path is memory-bound (arithmetic intensity ≈ r FLOP/byte), so the kernels work on a dense tile
over all r ranks and do the router, top-k, gating and masking in registers, instead of gathering rows per
token (which re-reads x k times) or grouping tokens by rank:

- forward (one kernel per token tile): one pass over x computes S = x Aᵀ (T × r) and the router logits
  x W_gᵀ (T × E) together; the epilogue picks the top-k experts by k iterated arg-maxes (ties to the lowest
  index), forms the gates (sigmoid-normalised or softmax, see ``kernels.reference``), C = S ⊙ gates · scale,
  then streams y = C Bᵀ over the output columns. Saved for backward: C, S, gates, router activations and
  indices (T × r and T × E floats: megabytes, not the hundreds of MB of per-token copies of A and B).
- backward (one kernel per token tile): dC = dy B, then dS = dC ⊙ gates · scale and the router-logit
  gradient through the chosen gate, in registers. The weight and input gradients are then four dense GEMMs
  with K = r or E (dA = dSᵀ x, dW_g = dLᵀ x, dB = dyᵀ C, dx = dS A + dL W_g): cuBLAS reads x and dy once
  each, deterministically.

Every ``tl.dot`` accumulates in fp32 and states its input precision (``dot_precision``): the dots that stream
x or dy take their operands in the input dtype, so bf16/fp16 inputs multiply on the 16-bit tensor cores
(exact products, at twice TF32's peak rate) and fp32 inputs in ``tf32x3`` (three TF32
products: within a few fp32 ulps, so the router picks the experts an fp32 reference picks, at the tests' fp32
tolerance); the dots whose operands are fp32 in registers (C Bᵀ, the expert spread) use TF32 for 16-bit inputs
(it holds their operands exactly or to 10 bits, more than the inputs carry) and ``tf32x3`` for fp32 inputs. The
CPU interpreter computes every dot in fp32, so the tests' tolerance is the compiled kernel's for fp32 inputs.

Block sizes are autotuned on CUDA over ``CONFIGS``, less those that need more shared memory than the GPU has
per block (``rankmix.kernels.compiled.shared_memory_pruner``); they are fixed otherwise, so importing this module
never needs a GPU. Set ``TRITON_INTERPRET=1`` before importing to run the kernels on the CPU (tests);
``rankmix.kernels.compile_report`` compiles them for sm_80 and sm_90 without a GPU.
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the package works without Triton: the smora layer falls back to PyTorch
    triton = None

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
FIXED = {"BM": 16, "BK": 32, "BN": 32}  # interpreter / no autotuning; every dot dimension ≥ 16


def available(device: torch.device) -> bool:
    """Whether the Triton path can run for tensors on ``device``."""
    return triton is not None and (device.type == "cuda" or INTERPRET)


def _pad(n: int) -> int:
    return max(16, 1 << (n - 1).bit_length())


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot``'s input precision for fp32 operands when the inputs are ``dtype`` (see the module docstring)."""
    return "tf32x3" if dtype == torch.float32 else "tf32"


if triton is not None:

    @triton.jit
    def _spread(P: tl.constexpr, E_PAD: tl.constexpr, R_PAD: tl.constexpr):
        """E_PAD × R_PAD 0/1 matrix: entry (e, j) is 1 when rank j belongs to expert e (j // P == e)."""
        ee = tl.arange(0, E_PAD)
        rr = tl.arange(0, R_PAD)
        return ((rr[None, :] // P) == ee[:, None]).to(tl.float32)

    @triton.jit
    def _expand(g, P: tl.constexpr, E_PAD: tl.constexpr, R_PAD: tl.constexpr, F32_DOT: tl.constexpr):
        """Expert gates (BM × E_PAD) → rank gates (BM × R_PAD)."""
        if P == 1:
            return g
        return tl.dot(g, _spread(P, E_PAD, R_PAD), input_precision=F32_DOT)

    @triton.jit
    def _fwd_kernel(x_ptr, a_ptr, b_ptr, w_ptr, bias_ptr, out_ptr, c_ptr, s_ptr, g_ptr, act_ptr, idx_ptr,
                    T, D_IN, D_OUT, R, E, scale,
                    K_E: tl.constexpr, P: tl.constexpr, SIGMOID: tl.constexpr, R_PAD: tl.constexpr,
                    E_PAD: tl.constexpr, F32_DOT: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr,
                    BN: tl.constexpr):
        rows = tl.program_id(0) * BM + tl.arange(0, BM)
        row_ok = rows < T
        rr = tl.arange(0, R_PAD)
        ee = tl.arange(0, E_PAD)
        r_ok = rr < R
        e_ok = ee < E
        acc_s = tl.zeros((BM, R_PAD), tl.float32)
        acc_l = tl.zeros((BM, E_PAD), tl.float32)
        for k0 in range(0, D_IN, BK):  # one pass over x for both A and the router
            kk = k0 + tl.arange(0, BK)
            k_ok = kk < D_IN
            xt = tl.load(x_ptr + rows[:, None] * D_IN + kk[None, :], mask=row_ok[:, None] & k_ok[None, :],
                         other=0.0)
            at = tl.load(a_ptr + rr[:, None] * D_IN + kk[None, :], mask=r_ok[:, None] & k_ok[None, :],
                         other=0.0).to(xt.dtype)
            wt = tl.load(w_ptr + ee[:, None] * D_IN + kk[None, :], mask=e_ok[:, None] & k_ok[None, :],
                         other=0.0).to(xt.dtype)
            acc_s += tl.dot(xt, tl.trans(at), input_precision=F32_DOT)  # the input dtype, fp32 accumulator
            acc_l += tl.dot(xt, tl.trans(wt), input_precision=F32_DOT)

        bias = tl.load(bias_ptr + ee, mask=e_ok, other=0.0).to(tl.float32)
        if SIGMOID:
            act = tl.sigmoid(acc_l)
        else:
            act = acc_l
        score = act + bias[None, :]
        work = tl.where(e_ok[None, :], score, float("-inf"))
        sel = tl.zeros((BM, E_PAD), tl.int32)
        for j in tl.static_range(K_E):  # k iterated arg-maxes, ties to the lowest index
            best = tl.max(work, axis=1)
            pick = tl.min(tl.where(work == best[:, None], ee[None, :], E_PAD), axis=1)
            hit = ee[None, :] == pick[:, None]
            sel = sel | hit.to(tl.int32)
            work = tl.where(hit, float("-inf"), work)
            tl.store(idx_ptr + rows * K_E + j, pick, mask=row_ok)
        chosen = sel != 0
        if SIGMOID:
            total = tl.sum(tl.where(chosen, score, 0.0), axis=1)
            g = tl.where(chosen, score / total[:, None] * K_E, 0.0)
        else:
            top = tl.max(tl.where(chosen, score, float("-inf")), axis=1)
            ex = tl.where(chosen, tl.exp(score - top[:, None]), 0.0)
            g = ex / tl.sum(ex, axis=1)[:, None]
        c = acc_s * _expand(g, P, E_PAD, R_PAD, F32_DOT) * scale

        rs_mask = row_ok[:, None] & r_ok[None, :]
        es_mask = row_ok[:, None] & e_ok[None, :]
        tl.store(c_ptr + rows[:, None] * R + rr[None, :], c, mask=rs_mask)
        tl.store(s_ptr + rows[:, None] * R + rr[None, :], acc_s, mask=rs_mask)
        tl.store(g_ptr + rows[:, None] * E + ee[None, :], g, mask=es_mask)
        tl.store(act_ptr + rows[:, None] * E + ee[None, :], act, mask=es_mask)
        for n0 in range(0, D_OUT, BN):  # y = C Bᵀ, streamed over the output columns
            nn = n0 + tl.arange(0, BN)
            n_ok = nn < D_OUT
            bt = tl.load(b_ptr + nn[:, None] * R + rr[None, :], mask=n_ok[:, None] & r_ok[None, :],
                         other=0.0).to(tl.float32)
            y = tl.dot(c, tl.trans(bt), input_precision=F32_DOT)
            tl.store(out_ptr + rows[:, None] * D_OUT + nn[None, :], y.to(out_ptr.dtype.element_ty),
                     mask=row_ok[:, None] & n_ok[None, :])

    @triton.jit
    def _gate_bwd_kernel(dy_ptr, b_ptr, s_ptr, g_ptr, act_ptr, idx_ptr, bias_ptr, ds_ptr, dl_ptr,
                         T, D_OUT, R, E, scale,
                         K_E: tl.constexpr, P: tl.constexpr, SIGMOID: tl.constexpr, R_PAD: tl.constexpr,
                         E_PAD: tl.constexpr, F32_DOT: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr,
                         BN: tl.constexpr):
        rows = tl.program_id(0) * BM + tl.arange(0, BM)
        row_ok = rows < T
        rr = tl.arange(0, R_PAD)
        ee = tl.arange(0, E_PAD)
        r_ok = rr < R
        e_ok = ee < E
        dc = tl.zeros((BM, R_PAD), tl.float32)
        for n0 in range(0, D_OUT, BN):  # dC = dy B
            nn = n0 + tl.arange(0, BN)
            n_ok = nn < D_OUT
            dyt = tl.load(dy_ptr + rows[:, None] * D_OUT + nn[None, :], mask=row_ok[:, None] & n_ok[None, :],
                          other=0.0)
            bt = tl.load(b_ptr + nn[:, None] * R + rr[None, :], mask=n_ok[:, None] & r_ok[None, :],
                         other=0.0).to(dyt.dtype)
            dc += tl.dot(dyt, bt, input_precision=F32_DOT)  # the input dtype, fp32 accumulator
        rs_mask = row_ok[:, None] & r_ok[None, :]
        es_mask = row_ok[:, None] & e_ok[None, :]
        s = tl.load(s_ptr + rows[:, None] * R + rr[None, :], mask=rs_mask, other=0.0)
        g = tl.load(g_ptr + rows[:, None] * E + ee[None, :], mask=es_mask, other=0.0)
        act = tl.load(act_ptr + rows[:, None] * E + ee[None, :], mask=es_mask, other=0.0)
        sel = tl.zeros((BM, E_PAD), tl.int32)
        for j in tl.static_range(K_E):
            pick = tl.load(idx_ptr + rows * K_E + j, mask=row_ok, other=E_PAD)
            sel = sel | (ee[None, :] == pick[:, None]).to(tl.int32)
        chosen = sel != 0

        ds = dc * _expand(g, P, E_PAD, R_PAD, F32_DOT) * scale
        dgr = dc * s * scale
        if P == 1:
            dg = dgr
        else:  # rank gradients summed per expert
            dg = tl.dot(dgr, tl.trans(_spread(P, E_PAD, R_PAD)), input_precision=F32_DOT)
        if SIGMOID:  # g_e = k s_e / Σ s  →  ds_f = (k/Σ)(dg_f − Σ_e dg_e g_e / k);  s = σ(l) + b
            bias = tl.load(bias_ptr + ee, mask=e_ok, other=0.0).to(tl.float32)
            score = act + bias[None, :]
            total = tl.sum(tl.where(chosen, score, 0.0), axis=1)
            total = tl.where(total == 0.0, 1.0, total)  # rows past T select nothing
            mean = tl.sum(tl.where(chosen, dg * g, 0.0), axis=1) / K_E
            dscore = tl.where(chosen, K_E / total[:, None] * (dg - mean[:, None]), 0.0)
            dl = dscore * act * (1.0 - act)
        else:  # softmax over the selected logits
            mean = tl.sum(tl.where(chosen, dg * g, 0.0), axis=1)
            dl = tl.where(chosen, g * (dg - mean[:, None]), 0.0)
        tl.store(ds_ptr + rows[:, None] * R + rr[None, :], ds, mask=rs_mask)
        tl.store(dl_ptr + rows[:, None] * E + ee[None, :], dl, mask=es_mask)


# The block configurations the autotuner may choose on CUDA (before shared-memory pruning); the two-stage one is
# the one fp32 inputs at r = 128 fit in on sm_80 (results/bench/kernels-compile.md).
CONFIGS = [{"BM": bm, "BK": bk, "BN": bn, "num_warps": w, "num_stages": s}
           for bm in (16, 32, 64) for bk, bn in ((64, 64), (128, 128)) for w, s in ((4, 3), (8, 3))]
CONFIGS.append({"BM": 16, "BK": 64, "BN": 64, "num_warps": 8, "num_stages": 2})
_TUNED: dict = {}


def configs() -> list:
    """``CONFIGS`` as ``triton.Config`` objects."""
    return [triton.Config({k: c[k] for k in ("BM", "BK", "BN")}, num_warps=c["num_warps"], num_stages=c["num_stages"])
            for c in CONFIGS]


def _launch(kernel, name: str, T: int, args: tuple, meta: dict) -> None:
    """Run ``kernel`` over token tiles: autotuned block sizes on CUDA, ``FIXED`` ones otherwise."""
    if INTERPRET or not torch.cuda.is_available():
        kernel[(triton.cdiv(T, FIXED["BM"]),)](*args, **meta, **FIXED)
        return
    if name not in _TUNED:
        from rankmix.kernels.compiled import shared_memory_pruner

        _TUNED[name] = triton.autotune(configs(), key=["T", "R", "E"],
                                       prune_configs_by={"early_config_prune": shared_memory_pruner(kernel)})(kernel)
    _TUNED[name][lambda m: (triton.cdiv(T, m["BM"]),)](*args, **meta)


def _meta(r: int, n_experts: int, k: int, p: int, sigmoid: bool, dtype: torch.dtype) -> dict:
    """The kernels' constexprs for rank ``r``, ``k`` of ``n_experts`` experts of ``p`` ranks, inputs ``dtype``."""
    r_pad = _pad(r)
    return {"K_E": k, "P": p, "SIGMOID": sigmoid, "R_PAD": r_pad, "E_PAD": r_pad if p == 1 else _pad(n_experts),
            "F32_DOT": dot_precision(dtype)}


def smora_forward(x, A, B, W, bias, k: int, p: int, sigmoid: bool, scale: float):
    """Δ (T × d_out) and the saved tensors (C, S, gates, activations, indices); inputs must be contiguous."""
    T, d_in = x.shape
    r, n_experts, d_out = A.shape[0], W.shape[0], B.shape[0]
    f32 = {"device": x.device, "dtype": torch.float32}
    out = torch.empty(T, d_out, device=x.device, dtype=x.dtype)
    c, s = torch.empty(T, r, **f32), torch.empty(T, r, **f32)
    g, act = torch.empty(T, n_experts, **f32), torch.empty(T, n_experts, **f32)
    idx = torch.empty(T, k, device=x.device, dtype=torch.int32)
    _launch(_fwd_kernel, "fwd", T, (x, A, B, W, bias, out, c, s, g, act, idx, T, d_in, d_out, r, n_experts, scale),
            _meta(r, n_experts, k, p, sigmoid, x.dtype))
    return out, c, s, g, act, idx


def smora_gate_backward(dy, B, s, g, act, idx, bias, k: int, p: int, sigmoid: bool, scale: float):
    """dS (T × r) and the router-logit gradient dL (T × E), fp32."""
    T, d_out = dy.shape
    r, n_experts = s.shape[1], g.shape[1]
    ds = torch.empty_like(s)
    dl = torch.empty_like(g)
    _launch(_gate_bwd_kernel, "bwd", T, (dy, B, s, g, act, idx, bias, ds, dl, T, d_out, r, n_experts, scale),
            _meta(r, n_experts, k, p, sigmoid, dy.dtype))
    return ds, dl


class SMoRATriton(torch.autograd.Function):
    """(x, A, B, W_g, bias, k, p, sigmoid, scale) → (Δ, expert indices, expert gates); gradients for x, A, B, W_g."""

    @staticmethod
    def forward(ctx, x, A, B, W, bias, k, p, sigmoid, scale):
        x, A, B, W, bias = (t.contiguous() for t in (x, A, B, W, bias.float()))
        out, c, s, g, act, idx = smora_forward(x, A, B, W, bias, k, p, sigmoid, scale)
        ctx.save_for_backward(x, A, B, W, bias, c, s, g, act, idx)
        ctx.cfg = (k, p, sigmoid, scale)
        ctx.mark_non_differentiable(idx, g)
        return out, idx, g

    @staticmethod
    def backward(ctx, dout, _didx, _dg):
        x, A, B, W, bias, c, s, g, act, idx = ctx.saved_tensors
        dout = dout.contiguous()
        ds, dl = smora_gate_backward(dout, B, s, g, act, idx, bias, *ctx.cfg)
        ds, dl = ds.to(x.dtype), dl.to(x.dtype)
        need = ctx.needs_input_grad
        dx = ds @ A + dl @ W if need[0] else None
        dA = ds.T @ x if need[1] else None
        dB = dout.T @ c.to(dout.dtype) if need[2] else None
        dW = dl.T @ x if need[3] else None
        return dx, dA, dB, dW, None, None, None, None, None
