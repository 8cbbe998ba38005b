"""End-to-end inference cost of SMoRA's sparse rank path (SMoRA Fig. 6, right side): ``make bench-e2e``
(``python -m rankmix.kernels.bench_e2e``).

As the paper measures it: for each implementation, the mean time to generate the first token of an answer
(prefill of the prompt and one decoding step, ``generate(max_new_tokens=1)``) over ``--n`` test prompts taken one
at a time, and the mean peak accelerator memory of that step. The model is the one an experiment config builds
(``--experiment``, default SMoRA Tab. 1's SMoRA-64-8, at ``--scale``) with its adapters as initialised: timing does
not depend on trained values. Variants: LoRA with SMoRA's total rank (the dense reference), and the SMoRA layer's
backends — ``dense_masked`` (all r ranks computed, the unselected masked: the einsum form), ``gather`` (A[idx] and
B[:, idx] gathered per token: the official indexed form in PyTorch) and, on a CUDA GPU, ``triton``. Peak memory
is measured on CUDA only. Writes ``results/bench/e2e-<device>.csv`` and ``.md`` after each variant (a run stopped
early keeps the variants it finished); compare ratios within one file.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from rankmix.locations import SOURCE


def compose(experiment: str, scale: str, overrides: list[str]):
    """The experiment's run config, composed as ``python -m rankmix.train`` composes it (``rankmix.config``)."""
    from rankmix.config import compose_config

    return compose_config([f"experiment={experiment}", f"scale={scale}", *overrides])


def variants(method: dict, gpu: bool) -> dict[str, dict]:
    """Method configs to time: LoRA of the same total rank, then each SMoRA backend."""
    if method.get("name") != "smora":
        raise SystemExit(f"rankmix bench-e2e: the experiment's method is {method.get('name')!r}; pick a SMoRA one")
    lora = {"name": "lora", "r": method["r"], "alpha": method.get("alpha", 16), "dropout": 0.0,
            "target_modules": method.get("target_modules")}
    out = {f"lora_{method['r']}": lora}
    for backend in ("dense_masked", "gather", *(["triton"] if gpu else [])):
        out[f"smora_{backend}"] = {**method, "backend": backend}
    return out


def first_token_cost(model, prompts: list[dict], device: str, warmup: int) -> tuple[list[float], list[float]]:
    """Per prompt: seconds to the first generated token, and the peak memory of that step (MB, CUDA only)."""
    from rankmix.adapters import adapter_context

    times, peaks = [], []
    for i, p in enumerate(prompts):
        ids, mask = p["ids"].to(device), p["mask"].to(device)
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        with torch.no_grad(), adapter_context(model, attention_mask=mask):
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=1, do_sample=False,
                           pad_token_id=p["pad"])
        if device == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
        if i >= warmup:
            times.append(elapsed)
            if device == "cuda":
                peaks.append((torch.cuda.max_memory_allocated() - base) / 2**20)
    return times, peaks


def main(argv=None) -> int:
    from omegaconf import OmegaConf

    from rankmix.adapters import inject
    from rankmix.backbones import build_backbone, load_tokenizer
    from rankmix.data.loading import prepared_datamodule

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--experiment", default="smora-1/smora_64_8", help="a SMoRA experiment config (its backbone and task)")
    ap.add_argument("--scale", default="tiny", choices=["tiny", "paper"])
    ap.add_argument("--n", type=int, default=100, help="test prompts timed (the paper: 100)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--out", type=Path, default=SOURCE / "results" / "bench")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    a = ap.parse_args(argv)
    cfg = compose(a.experiment, a.scale, a.overrides)
    gpu = torch.cuda.is_available()
    todo = variants(OmegaConf.to_container(cfg.method, resolve=True), gpu)
    device = "cuda" if gpu else "cpu"
    name = torch.cuda.get_device_name(0) if gpu else "cpu"
    if not gpu:
        print("rankmix bench-e2e: no GPU present: timing on the CPU, without peak memory (measured on CUDA only) "
              "and without the Triton backend")
    with tempfile.TemporaryDirectory() as tmp:
        dm = prepared_datamodule(cfg)
        tokenizer = load_tokenizer(cfg.backbone.tokenizer, [dm.files()["train"]], Path(tmp) / "tokenizer",
                                   dm.template_text())
        dm.eval_batch_size = 1
        dm.set_tokenizer(tokenizer)
        dm.setup("test")
        prompts = []
        for batch in dm.test_dataloader():
            prompts.append({"ids": batch["prompt_ids"], "mask": batch["prompt_mask"], "pad": tokenizer.pad_token_id})
            if len(prompts) == a.n + a.warmup:
                break
        rows = []
        for variant, mcfg in todo.items():
            torch.manual_seed(0)
            model = build_backbone(cfg.backbone, tokenizer)
            inject(model, mcfg)
            model.to(device).eval()
            times, peaks = first_token_cost(model, prompts, device, a.warmup)
            rows.append({"device": name, "backbone": cfg.backbone.name, "scale": a.scale, "variant": variant,
                         "n": len(times), "ttft_ms_mean": round(1e3 * statistics.mean(times), 3),
                         "ttft_ms_median": round(1e3 * statistics.median(times), 3),
                         "peak_mb_mean": round(statistics.mean(peaks), 2) if peaks else ""})
            print(f"{variant:<20} first token {rows[-1]['ttft_ms_mean']:9.3f} ms (mean of {len(times)})  "
                  f"peak {rows[-1]['peak_mb_mean'] or '-'} MB", flush=True)
            del model
            write(rows, a.out, name, gpu)
    return 0


def write(rows: list[dict], out: Path, device: str, gpu: bool) -> None:
    from rankmix.kernels.bench import write_csv

    md = write_csv(rows, out, "e2e", device, gpu)
    ref = rows[0]["ttft_ms_mean"]
    lines = [f"# SMoRA end-to-end first-token cost on {device}", "",
             f"{rows[0]['backbone']} at scale {rows[0]['scale']}; mean over {rows[0]['n']} test prompts, one at a "
             "time; ratios against the first row, from this one run." + ("" if gpu else " Peak memory: CUDA only."),
             "", "| variant | first token ms (mean) | median | × first row | peak MB |", "|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['ttft_ms_mean']} | {r['ttft_ms_median']} | {r['ttft_ms_mean'] / ref:.2f} | "
              f"{r['peak_mb_mean'] or '-'} |" for r in rows]
    md.write_text("\n".join(lines) + "\n")
    print(f"rankmix bench-e2e: {md.with_suffix('.csv')}")


if __name__ == "__main__":
    raise SystemExit(main())
