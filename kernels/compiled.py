"""Triton kernels compiled for a GPU target, with or without a GPU, and what the compiled kernel needs.

``compile_for`` specialises a kernel's launch arguments exactly as Triton's JIT does at a launch (argument
types, 16-byte alignment and divisibility by 16, the constexprs, the block configuration's warps and stages),
then runs ``triton.compile`` for the given ``GPUTarget``: TTIR, TTGIR, LLVM IR, PTX and, through the ``ptxas``
that ships with Triton, a cubin. No GPU and no CUDA driver are needed, so CI compiles for sm_80 and sm_90 on a
CPU, and a kernel the compiler refuses (a ``tl.dot`` under 16 wide, an unsupported dtype) fails there even though
Triton's CPU interpreter runs it.

``resources`` reads the shared memory (Triton's dynamic shared memory per block, from the compile metadata) and
the registers per thread and the stack frame (spills to local memory; Triton's ``n_spills`` is its size / 4) from
the cubin. ``shared_memory_pruner`` is the autotuner's ``early_config_prune``: it drops the block configurations
whose compiled kernel needs more shared memory per block than the target allows (``SHARED_LIMIT``, or the
device's own limit at a launch), which the GPU would refuse at launch.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import create_function_from_signature

# Shared memory per thread block (opt-in maximum) by compute capability, in bytes: CUDA C++ Programming Guide,
# "Technical Specifications per Compute Capability". The two CI targets are A100 (sm_80) and H100 (sm_90).
SHARED_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 87: 163 * 1024, 89: 99 * 1024, 90: 227 * 1024}
TARGETS = {"sm_80": GPUTarget("cuda", 80, 32), "sm_90": GPUTarget("cuda", 90, 32)}


def compile_for(kernel, args: Sequence, meta: dict, config: triton.Config, target: GPUTarget):
    """``kernel`` compiled for ``target`` as a launch with positional ``args`` (tensors may be on any device:
    only their dtype and alignment count; integers by value, as the JIT specialises them), constexprs ``meta``
    and block configuration ``config``. Returns Triton's ``CompiledKernel`` (cached on disk like any compile)."""
    from triton import knobs

    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    kwargs = {**meta, **config.all_kwargs(), "debug": kernel.debug or knobs.runtime.debug,
              "instrumentation_mode": knobs.compilation.instrumentation_mode}
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
    return triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target, options=options.__dict__)


def resources(compiled) -> dict:
    """Shared memory (bytes per block), registers per thread and stack bytes (spills) of a compiled kernel."""
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "kernel.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        dump = subprocess.run([triton.knobs.nvidia.cuobjdump.path, "--dump-resource-usage", str(cubin)],
                              capture_output=True, text=True, check=True).stdout
    usage = dict(re.findall(r"(REG|STACK|LOCAL):(\d+)", dump))
    return {"shared": compiled.metadata.shared, "registers": int(usage["REG"]),
            "stack": int(usage["STACK"]) + int(usage["LOCAL"])}


def device_limit() -> tuple[GPUTarget, int]:
    """This GPU's target and its shared memory per block (opt-in maximum), from the CUDA driver."""
    import torch
    from triton.runtime import driver

    props = driver.active.utils.get_device_properties(torch.cuda.current_device())
    return driver.active.get_current_target(), props["max_shared_mem"]


def shared_memory_pruner(kernel, target: GPUTarget | None = None, limit: int | None = None) -> Callable:
    """``early_config_prune`` for ``triton.autotune``: keep the configurations whose compiled ``kernel`` needs at
    most ``limit`` bytes of shared memory per block on ``target`` (default: this GPU's target and limit).
    Each configuration is compiled once per specialisation; the autotuner's own compile then hits Triton's cache."""

    def prune(configs: list[triton.Config], named_args: dict, **meta) -> list[triton.Config]:
        tgt, lim = (target, limit) if target is not None else device_limit()
        lim = lim if limit is None else limit
        args = [named_args[name] for name in kernel.arg_names if name in named_args]
        meta = {k: v for k, v in meta.items() if k in kernel.arg_names}  # the launch's grid and warmup are not
        return [c for c in configs if compile_for(kernel, args, meta, c, tgt).metadata.shared <= lim]

    return prune
