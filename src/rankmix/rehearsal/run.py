"""``make rehearse``: the tables' rows at ``scale=paper`` on stand-ins of the real backbones and real-layout data.

Each row runs as its table's multirun runs it (``python -m rankmix.train -m <the row's overrides> scale=paper``,
``rankmix.table_rows``), with the data paths its task reads pointed at the rehearsal's files. Only paths and length are
overridden: the backbones' ``name_or_path`` (``rankmix.rehearsal.standins``, each checked against the architecture
of the model it stands in for, as real weights are), the data paths
(``rankmix.rehearsal.data``), a step limit and an evaluation limit (``length_overrides``). Precision, prompts,
cutoff, decoding, optimizer and schedule stay the paper's (a CPU runs half precision in fp32 with a notice, as any
run on a CPU does: ``rankmix.fit.cpu_fallback``; a 4-bit base, which needs CUDA, is trained unquantised there, as
the report says). A machine with a GPU runs ``trainer=gpu``; one without, the default CPU trainer (the device
choice changes no paper setting).

Rows: ``all``; ``one``: one row per table family, method and backbone; ``family``: one row per table family
(SMoRA FLAN, SMoRA multi-domain, SMoRA code, MoSLoRA commonsense, VQA, COCO, CLIP-BART, SMoLA, the generated
tasks). The report,
``results/rehearse/<device>.md``, gives per row pass/fail with the error line, seconds per step and peak memory,
the settings that matter, and a projected cost at the true size (``projection``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from rankmix.locations import SOURCE, results_root, work_root

INSTRUCTION_TASKS = ("flan", "commonsense", "generated")   # InstructionDataModule: an example limit of its own
BENCHMARKS = {"multidomain": ("mmlu", "gsm8k", "humaneval"), "codealpaca": ("ds1000",),  # scored after training
              "visual_instruction": ("mmbench_en", "mmbench_cn", "seedbench", "ai2d", "scienceqa_img", "textvqa",
                                     "mathvista", "mmvet", "mme")}
BENCHMARK_LIMIT = {"visual_instruction": 2}   # MME's questions come in pairs (one image, a yes and a no)


def length_overrides(task: str, steps: int = 2, examples: int = 8, batches: int | None = None,
                     method: dict | None = None) -> list[str]:
    """The rehearsal's length: ``steps`` optimizer steps, one validation and one test batch, at most
    ``examples`` evaluation records where the data module can cut them, and with ``batches`` that many training
    batches per epoch (an optimizer step then ends the epoch, however many batches the row accumulates). A
    schedule that spans the run (AdaLoRA's ``total_step: auto``) is given the shortest length its phases allow
    (tinit + tfinal + 1), of which the rehearsal runs the first ``steps``."""
    out = [f"++trainer.max_steps={steps}", "++trainer.limit_val_batches=1", "++trainer.limit_test_batches=1"]
    if batches:
        out.append(f"++trainer.limit_train_batches={batches}")
    if method and method.get("total_step") == "auto":
        out.append(f"method.total_step={int(method['tinit']) + int(method['tfinal']) + 1}")
    from rankmix import tasks

    if task in INSTRUCTION_TASKS or task in tasks.names():   # a benchmark folder's task is named after it
        out.append(f"++task.datamodule.max_eval_samples={{validation:{examples},test:{examples}}}")
    limit = BENCHMARK_LIMIT.get(task, 1)   # one item (or pair) of each benchmark
    out += [f"++task.benchmarks.{name}.limit={limit}" for name in BENCHMARKS.get(task, ())]
    return out


FAMILIES = {"flan": "SMoRA FLAN", "multidomain": "SMoRA multi-domain", "codealpaca": "SMoRA code",
            "commonsense": "MoSLoRA commonsense", "vqa": "VQA", "coco_caption": "COCO",
            "vl_multitask": "CLIP-BART", "generated": "generated tasks", "visual_instruction": "LLaVA"}
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled"}


@dataclass
class Row:
    table: str
    experiment: str
    family: str
    method: str
    backbone: str
    task: str
    result: dict = field(default_factory=dict)


def family_of(table: str, task: str) -> str:
    return "SMoLA" if table.startswith("smola") else FAMILIES.get(task, task)


def all_rows(tables: list[str] | None = None) -> list[Row]:
    """Every row of the chosen tables (all by default), composed at ``scale=paper`` to read its family,
    method and backbone."""
    from rankmix.config import compose_config
    from rankmix.table_rows import all_tables, row_overrides

    known = all_tables()
    unknown = sorted(set(tables or []) - set(known))
    if unknown:
        raise SystemExit(f"rankmix: error: unknown table(s) {', '.join(unknown)}; known: {', '.join(known)}")
    out = []
    for table, experiments in known.items():
        if tables and table not in tables:
            continue
        for exp in experiments:
            cfg = compose_config([*row_overrides(table, exp), "scale=paper"], validated=False)
            out.append(Row(table, exp, family_of(table, cfg.task.name), cfg.method.name, cfg.backbone.name,
                           cfg.task.name))
    return out


# The method a family's one row rehearses (``family``): the paper's own.
PAPER_METHOD = {"SMoRA FLAN": "smora", "SMoRA multi-domain": "smora", "SMoRA code": "smora",
                "MoSLoRA commonsense": "moslora", "VQA": "routing", "COCO": "routing", "CLIP-BART": "routing",
                "SMoLA": "smola"}


def select(rows: list[Row], how: str) -> list[Row]:
    """``all`` rows, ``one`` per (family, method, backbone), or ``family``: one per family, of its paper's
    method where the family has one."""
    if how == "all":
        return rows
    if how == "family":
        rows = sorted(rows, key=lambda r: r.method != PAPER_METHOD.get(r.family))  # stable: table order kept
    key = {"one": lambda r: (r.family, r.method, r.backbone), "family": lambda r: r.family}[how]
    seen, out = set(), []
    for r in rows:
        if key(r) not in seen:
            seen.add(key(r))
            out.append(r)
    return out


def pretrained_parts(backbone: dict, prefix: str = "") -> dict[str, str]:
    """``{key of its name_or_path: hub id}`` for each part of a composed backbone that loads by hub id."""
    out = {}
    if backbone.get("source") == "pretrained" and not str(backbone.get("name_or_path", "")).startswith("pkg:"):
        out[prefix + "name_or_path"] = backbone["name_or_path"]
        if backbone.get("vae"):   # an SDXL backbone's separate VAE (MoSLoRA Tab. 6: the fp16-fix VAE)
            out[prefix + "vae"] = backbone["vae"]
    for k, v in backbone.items():
        if isinstance(v, dict) and k not in ("tokenizer", "config"):
            out.update(pretrained_parts(v, f"{prefix}{k}."))
    return out


def projector_override(backbone: dict, parts: dict[str, str], standins: dict[str, Path], cache: Path) -> list[str]:
    """A LLaVA backbone's pretrained projector, replaced by a stand-in that fits its parts' stand-ins."""
    from rankmix.rehearsal.standins import build_projector_standin

    projector = backbone.get("projector") or {}
    if not projector.get("name_or_path"):
        return []
    folder = build_projector_standin(projector["name_or_path"], projector["file"],
                                     standins[parts["vision.name_or_path"]], standins[parts["llm.name_or_path"]], cache)
    return [f"backbone.projector.name_or_path={folder}"]


def compose_paper(row: Row, overrides: list[str] = ()) -> dict:
    """The row's config at ``scale=paper`` (scale applied), as a plain dict."""
    from omegaconf import OmegaConf

    from rankmix.config import compose_run
    from rankmix.table_rows import row_overrides

    cfg = compose_run([*row_overrides(row.table, row.experiment), "scale=paper", *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


# 4-bit loading (QLoRA) needs a CUDA GPU: on a CPU the rehearsal trains the row's base unquantised, and says so
UNQUANTISED = "~backbone.llm.quantization"


def rehearsal_overrides(row: Row, parts: dict[str, str], standins: dict[str, Path], data: dict[str, str], gpu: bool,
                        length: list[str] | None = None) -> list[str]:
    """The row's command-line overrides: this machine's device (``trainer=gpu`` where it has one), the data paths
    its task reads pointed at the rehearsal's files (``data``: what ``rankmix.rehearsal.data`` wrote for the task),
    the stand-ins for the backbone's hub ids, and the rehearsal's length. Each stand-in declares the model it stands
    in for (``rankmix.backbones.STANDIN_DIR``), so the row's architecture check runs on it as on the real weights."""
    args = (["trainer=gpu"] if gpu else []) + [f"{k}={v}" for k, v in data.items()]
    args += [f"backbone.{key}={standins[hub]}" for key, hub in parts.items()]
    return args + (length_overrides(row.task) if length is None else length)


def written_data(task: str, composed: dict, root: Path) -> dict[str, str]:
    """``{key: path}`` of the data a row's task reads, written under ``root`` in the real layout with made-up
    content: a benchmark folder's own ``write`` (``rankmix.tasks``), else the task's writer in
    ``rankmix.rehearsal.data``; {} for a task whose data is generated at every scale."""
    from rankmix import tasks
    from rankmix.rehearsal import data as rdata

    kind = ((composed["task"].get("datamodule") or {}).get("source") or {}).get("kind")
    if kind in tasks.names():
        return {f"task.datamodule.source.{k}": str(v) for k, v in tasks.get(kind).write(root, 0).items()}
    return rdata.WRITERS[task](root) if task in rdata.WRITERS else {}


def run_row(row: Row, overrides: list[str], work: Path, timeout: int) -> dict:
    """Run one row as its table's multirun would, in its own results folder; what it left there."""
    from rankmix.table_rows import multirun_overrides, row_overrides

    results, runs = work / "results", work / "runs"
    cmd = [sys.executable, "-m", "rankmix.train", "-m", *row_overrides(row.table, row.experiment), "scale=paper",
           *multirun_overrides(overrides), f"paths.results_dir={results}", f"paths.runs_dir={runs}", "rerun=true"]
    (work / "command.txt").parent.mkdir(parents=True, exist_ok=True)
    (work / "command.txt").write_text(shlex.join(cmd) + "\n")
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, cwd=SOURCE, env={**os.environ, **OFFLINE}, capture_output=True, text=True,
                              timeout=timeout)
        rc, log = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        rc, log = None, f"{e.stdout or ''}{e.stderr or ''}\ntimed out after {timeout} s"
    (work / "log.txt").write_text(log if isinstance(log, str) else log.decode(errors="replace"))
    done = sorted(results.glob("*/runs/*.json"))
    failed = sorted(results.glob("*/failed/*.json"))
    out = {"seconds": round(time.time() - t0, 1), "rc": rc, "command": shlex.join(cmd)}
    if done and rc == 0:
        run = json.loads(done[0].read_text())
        return {**out, "status": "pass", "run": run}
    error = json.loads(failed[0].read_text())["error"] if failed else last_error(str(log))
    return {**out, "status": "fail", "error": error.strip().splitlines()[0][:300] if error.strip() else "no output"}


def last_error(log: str) -> str:
    """The line that says what went wrong in a run's output: a ``rankmix: error:`` line, a Python exception,
    else the last line."""
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    for pattern in (r"^rankmix: error:", r"^\w+(Error|Exception)\b", r"timed out after"):
        hits = [ln for ln in lines if re.search(pattern, ln)]
        if hits:
            return hits[-1]
    return lines[-1] if lines else ""


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(0).lower()).strip("-")
    return "cpu"


def batch_text(config: dict) -> str:
    """The per-device batch × accumulation on one device (a row's global batch: ``= <global>``)."""
    from omegaconf import OmegaConf

    from rankmix.batching import accumulation

    dm = config["task"].get("datamodule", {})
    accumulate = accumulation(OmegaConf.create({"task": config["task"], "trainer": config["trainer"]}))
    wanted = config["task"].get("global_batch_size")
    return f"{dm.get('batch_size')}×{accumulate}" + (f" = {wanted}" if wanted else "")


def settings(config: dict) -> dict:
    """The settings a reader checks first: lr, epochs, batch, precision, prompt, activation checkpointing."""
    dm, trainer = config["task"].get("datamodule", {}), config["trainer"]
    prompt = dm.get("prompt_template") or dm.get("prompt_format") or "—"
    return {"lr": config["optimizer"]["lr"], "epochs": trainer.get("max_epochs"),
            "batch": batch_text(config),
            "precision": trainer.get("precision"), "prompt": prompt,
            "checkpointing": config["backbone"].get("activation_checkpointing", "none")}


def rehearse(rows: list[Row], width: str, out: Path, work: Path, timeout: int = 1800,
             own: dict[str, str] | None = None, steps: int = 2, examples: int = 8,
             batches: int | None = None, extra: list[str] = ()) -> Path:
    """Run ``rows`` and write the report ``out`` (and its JSON), after each row, so that a stopped rehearsal keeps
    the rows it ran; returns its path. ``own``: data paths that replace the
    written ones where a task reads that key (a real file of the user's); ``extra``: overrides added to every
    row's command."""
    import torch

    from rankmix.rehearsal import projection
    from rankmix.rehearsal.standins import build_standin

    gpu = torch.cuda.is_available()
    cache = work_root() / ".cache" / "rehearse"
    standins, data = {}, {}
    for i, row in enumerate(rows, 1):
        print(f"rankmix: rehearse [{i}/{len(rows)}] {row.table} {row.experiment}", flush=True)
        try:
            composed = compose_paper(row)
            parts = pretrained_parts(composed["backbone"])
            for hub in parts.values():
                if hub not in standins:
                    standins[hub] = build_standin(hub, cache, width=width)
            if row.task not in data:
                written = written_data(row.task, composed, cache / "data" / row.task)
                data[row.task] = {k: (own or {}).get(k, v) for k, v in written.items()}
            overrides = rehearsal_overrides(row, parts, standins, data[row.task], gpu,
                                      length_overrides(row.task, steps, examples, batches, composed["method"]))
            overrides += projector_override(composed["backbone"], parts, standins, cache) + list(extra)
            unquantised = not gpu and bool((composed["backbone"].get("llm") or {}).get("quantization"))
            run = [*overrides, UNQUANTISED] if unquantised else overrides
            row.result = run_row(row, run, work / f"{i:03d}", timeout)
            config = compose_paper(row, overrides)   # as requested (a CPU runs half precision in fp32)
            row.result["settings"] = settings(config)
            if unquantised:
                row.result["settings"]["quantization"] = "4-bit (CPU: unquantised)"
            row.result["projection"] = projection.project(config, parts)
        except Exception as e:  # noqa: BLE001 -- a row that cannot even be set up is a failed row, reported
            row.result = {**row.result, "status": "fail", "error": f"{type(e).__name__}: {e}".splitlines()[0][:300]}
        print(f"rankmix: rehearse {row.experiment}: {row.result['status']}"
              + (f": {row.result['error']}" if row.result["status"] == "fail" else ""), flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)   # after each row: a stopped rehearsal keeps what it ran
        done = merged(rows[:i], out.with_suffix(".json"))
        out.write_text(report(done, width, length_overrides("flan", steps, examples, batches)))
    return out


def merged(rows: list[Row], path: Path) -> list[Row]:
    """``rows`` with the rows of earlier rehearsals kept in ``path`` (a rehearsal of some tables updates
    their rows of the report, the others stay); the union is written back to ``path``."""
    from dataclasses import asdict

    def named(r: Row) -> tuple[str, str]:   # a row's name in its table (a report may predate a row's new path)
        return r.table, r.experiment.rsplit("/", 1)[-1]

    fresh = {named(r) for r in rows}
    kept = [Row(**r) for r in json.loads(path.read_text())] if path.is_file() else []
    out = sorted([r for r in kept if named(r) not in fresh] + rows, key=named)
    slim = [{**asdict(r), "result": {k: v for k, v in r.result.items() if k != "run"}
             | ({"run": {k: r.result["run"][k] for k in ("train", "params")}} if "run" in r.result else {})}
            for r in out]
    path.write_text(json.dumps(slim, indent=1, default=str) + "\n")
    return out


def _mb(run: dict) -> str:
    peak = (run.get("train") or {}).get("peak_memory") or {}
    return f"{peak['peak_mb']:.0f}" if "peak_mb" in peak else "—"


def _per_step(run: dict) -> str:
    train = run.get("train") or {}
    steps, fit = train.get("global_step"), train.get("fit_s")
    return f"{fit / steps:.1f}" if steps and fit is not None else "—"


def report(rows: list[Row], width: str, length: list[str], when: str | None = None) -> str:
    """The rehearsal's report; ``when``: the rehearsal's date (default now), given where only the projections
    are recomputed (``python -m rankmix.rehearsal --reproject``)."""
    from rankmix.rehearsal.memory_report import memory_sections
    from rankmix.rehearsal.projection import fmt_count, fmt_fits, fmt_gib
    from rankmix.rehearsal.standin_basics import LAYERS, WIDTH_DIVISOR

    passed = sum(r.result.get("status") == "pass" for r in rows)
    shape = "real widths" if width == "full" else f"widths ÷ {WIDTH_DIVISOR}"
    now = time.strftime('%Y-%m-%d %H:%M', time.gmtime())
    lines = [
        f"# Rehearsal on {device_name()}: {passed}/{len(rows)} rows pass",
        "",
        f"`make rehearse` at {when or now} UTC: every row at `scale=paper` on "
        f"stand-ins of the real backbones ({LAYERS} layers, {shape}, random weights, the real tokenizers' special "
        f"tokens) and real-layout made-up data; overridden: the paths and the length (`{' '.join(length)}`). "
        "Seconds per step and peak memory are the stand-in's; on a CPU half precision runs in fp32 (shown as "
        "`bf16-mixed (CPU: 32-true)`; `rankmix.fit.cpu_fallback`) and a 4-bit base unquantised (4-bit loading "
        "needs CUDA; shown as `4-bit (CPU: unquantised)`). The projection is for the real model at the "
        "row's paper settings (`rankmix.rehearsal.projection`: parameter counts exact, memory per GPU from "
        f"activation bytes measured on this machine, § Memory projection), computed at {now} UTC.",
        "",
        "| table | row | family | status | s (row) | s/step | peak MB | lr | epochs | batch | precision | prompt "
        "| params (true size) | trainable | activated | tokens/epoch ≤ | checkpointing | GiB/GPU | fits (GiB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        res, run = r.result, r.result.get("run") or {}
        s, p = res.get("settings") or {}, res.get("projection") or {}
        fallback = ((run.get("train") or {}).get("cpu_fallback") or {}).get("trainer.precision")
        precision = f"{fallback[0]} (CPU: {fallback[1]})" if fallback else s.get("precision", "—")
        if s.get("quantization"):
            precision += f", {s['quantization']}"
        prompt = str(s.get("prompt", "—")).replace("|", "\\|").replace("\n", "\\n")
        lines.append(
            f"| {r.table} | {r.experiment.rsplit('/', 1)[-1]} | {r.family} | {res.get('status', 'not run')} "
            f"| {res.get('seconds', '—')} | {_per_step(run)} | {_mb(run)} | {s.get('lr', '—')} | {s.get('epochs', '—')} | {s.get('batch', '—')} "
            f"| {precision} | `{prompt}` | {fmt_count(p.get('total'))} | {fmt_count(p.get('trainable'))} "
            f"| {fmt_count(p.get('activated'))} | {fmt_count(p.get('tokens_per_epoch'))} "
            f"| {s.get('checkpointing', '—')} | {fmt_gib(p['memory_gib']) if 'memory' in p else '—'} | {fmt_fits(p)} |")
    failed = [r for r in rows if r.result.get("status") != "pass"]
    if failed:
        lines += ["", "## Failed rows", ""]
        lines += [f"- {r.table} `{r.experiment}`: {r.result.get('error', 'not run')}" for r in failed]
    lines += memory_sections(rows)
    notes = sorted({n for r in rows for n in (r.result.get("projection") or {}).get("notes", [])})
    if notes:
        lines += ["", "## Projection notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def reproject(path: Path, tables: list[str] | None = None) -> Path:
    """Recompute the projection of the rows of the rehearsal report ``path`` (its ``.json`` beside it; ``tables``: only
    theirs) from each row's paper config, keeping the rehearsal's own columns and its date. Both files are
    rewritten after each row, so an interrupted run keeps what it measured."""
    from rankmix.rehearsal.projection import project

    header = path.read_text().split("\n", 3)[2]
    when = re.search(r"`make rehearse` at (.+?) UTC", header)
    length = re.search(r"the length \(`([^`]*)`\)", header)
    width = "full" if path.stem.endswith("-full") else "reduced"
    from rankmix.table_rows import row_name

    rows = [Row(**r) for r in json.loads(path.with_suffix(".json").read_text())]
    for row in rows:   # a report may name a row by an older path (smora/1/lora_64 for smora-1/lora_64)
        row.experiment = row_name(row.table, row.experiment.rsplit("/", 1)[-1])
    chosen = [r for r in rows if not tables or r.table in tables]
    for i, row in enumerate(chosen, 1):
        print(f"rankmix: project [{i}/{len(chosen)}] {row.table} {row.experiment}", flush=True)
        config = compose_paper(row)
        row.result["projection"] = project(config, pretrained_parts(config["backbone"]))
        row.result["settings"] = {**row.result.get("settings", {}), **settings(config)}
        rows = merged(rows, path.with_suffix(".json"))
        path.write_text(report(rows, width, length.group(1).split() if length else [],
                               when=when.group(1) if when else None))
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="rankmix-rehearse", description=__doc__.split("\n")[0])
    ap.add_argument("--rows", choices=["all", "one", "family"], default="all")
    ap.add_argument("--width", choices=["reduced", "full"], default="reduced",
                    help="full: the real widths (depth still reduced), for a GPU")
    ap.add_argument("--tables", nargs="*", help="only these table ids (default: every table)")
    ap.add_argument("--out", type=Path, help="the report (default results/rehearse/<device>.md)")
    ap.add_argument("--timeout", type=int, default=1800,
                    help="seconds per row (an SDXL row at 1024 px took 15 min on 2 busy CPU cores)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=PATH",
                    help="a data path of your own in place of the written one, e.g. "
                         "task.datamodule.source.test_file=/data/combined_test.json (the real SMoRA file)")
    ap.add_argument("--steps", type=int, default=2, help="optimizer steps per row")
    ap.add_argument("--examples", type=int, default=8, help="evaluation records per row (instruction tasks)")
    ap.add_argument("--batches", type=int, help="training batches per epoch (default: as many as the steps need)")
    ap.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                    help="a Hydra override added to every row's command (make gpu-check: its step-cost callback)")
    ap.add_argument("--reproject", type=Path, metavar="REPORT",
                    help="run nothing: recompute the projections of a report (results/rehearse/<device>.md) from "
                         "its rows' paper configs (with --tables: only theirs)")
    a = ap.parse_args(argv)
    if a.reproject:
        print(f"rankmix: report: {reproject(a.reproject, a.tables)}")
        return 0
    own = dict(kv.split("=", 1) for kv in a.set)
    rows = select(all_rows(a.tables), a.rows)
    out = a.out or results_root() / "rehearse" / f"{device_name()}{'' if a.width == 'reduced' else '-full'}.md"
    with tempfile.TemporaryDirectory(prefix="rankmix-rehearse-") as work:
        rehearse(rows, a.width, out, Path(work), a.timeout, own, a.steps, a.examples, a.batches, a.override)
    print(out.read_text())
    print(f"rankmix: report: {out}")
    return 0 if all(r.result.get("status") == "pass" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
