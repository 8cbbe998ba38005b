"""A trained run as files other tools read: ``python -m rankmix.export <run folder> <out>`` (or ``make export RUN=…``).

A run's folder holds the adapter weights only (``checkpoints/last.ckpt``, Lightning's ``model.`` prefix) and its
config; the backbone is rebuilt from that config. ``export_run`` rebuilds the adapted model exactly as the run did
(the backbone from ``backbone``: a config-built one from its ``init_seed``, a pretrained one from its folder or hub
id; the method injected from ``method``; the tested checkpoint's tensors loaded) and writes

- ``<out>/adapter/``: the adapter in peft's layout (``rankmix.adapters.export_peft``): LoRA, MoSLoRA, TS-Mixing, FLoRA
  and the peft-backed baselines load with plain ``peft.PeftModel.from_pretrained``; the routed methods (SMoRA,
  LoRA-MoE, HydraLoRA, SMEAR) with ``rankmix.peft.from_pretrained``. Its ``base_model_name_or_path`` is
  ``<out>/base`` for a config-built backbone, else the backbone's own name.
- ``<out>/base/``: the frozen backbone with ``save_pretrained``, when it was built from a config (random init at the
  tiny scale: no hub has it); a pretrained backbone is not copied.
- ``<out>/merged/``: the model with ΔW merged into the base weights (W = W0 + ΔW), a plain transformers model, for the
  methods whose update is a fixed matrix; a routed method has none and gets no merged folder.
- the tokenizer beside each model, saved so that ``tokenizer(text)`` starts with BOS, as every prompt of a run did
  (``rankmix.data.instruction`` puts BOS first; ``add_bos_token: true``), padding on the left for generation.
- ``<out>/lm_eval/``: the run's test split as an lm-evaluation-harness task group (an instruction-tuning run scored
  by exact match): one ``generate_until`` task per record task, greedy, the run's ``max_new_tokens``, stopping at EOS,
  exact match after the suite's normalisation (strip, lower case, no periods: ``rankmix.metrics.text.normalize_em``),
  and a group that averages the tasks unweighted, as the suite's score does (per task, then the mean over tasks).
  ``lm_eval --model hf --model_args pretrained=<out>/merged --include_path <out>/lm_eval --tasks rankmix`` then
  gives the run's ``test/em`` / 100.
- ``<out>/export.json``: what was written, from which run and checkpoint.

For a config-built backbone the export checks itself (``verify``, on by default there): the rebuilt, adapted model's
loss on the run's test split must equal the run's ``test/loss``, so the base weights written are those the run used.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

import torch

from rankmix.errors import NotMergeableError, RankmixError
from rankmix.modules.builder import builder_target

CHECKPOINT_PREFIX = "model."   # Lightning saves the module's ``model`` attribute under this prefix
LM_EVAL_GROUP = "rankmix"
INSTRUCTION_BUILDER = "rankmix.modules.causal_lm.build_causal_lm"   # the runs export takes
EM_REGEXES = [r"^\s+", r"\s+$", r"\."]   # in this order: strip, then drop periods (normalize_em; case is ignored)


# -- the run ------------------------------------------------------------------------------------------------------
def run_config(run_dir: Path):
    """The run's resolved config and result (``<run>/result.json``, written when the run finished)."""
    from omegaconf import OmegaConf

    path = run_dir / "result.json"
    if not run_dir.is_dir():
        raise RankmixError(f"{run_dir}: not a folder; give a run's folder, runs/<table-id>/<run-key>/")
    if not path.is_file():
        raise RankmixError(f"{path}: not found; the run has not finished (run its command again to finish it)")
    result = json.loads(path.read_text())
    if result.get("status") != "ok":
        raise RankmixError(f"{path}: the run's status is {result['status']!r}; only a finished run can be exported")
    return OmegaConf.create(result["config"]), result


def tested_checkpoint(run_dir: Path, result: dict) -> Path:
    """The checkpoint whose weights were tested: the selected best (``train.tested_checkpoint.path``) or the last."""
    selection = (result.get("train") or {}).get("tested_checkpoint") or {}
    path = Path(selection["path"]) if selection.get("path") else run_dir / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise RankmixError(f"{path}: the run's tested checkpoint is missing; train the run again (rerun=true)")
    return path


def run_tokenizer(cfg, run_dir: Path):
    """The run's tokenizer: the one it built and saved (``<run>/tokenizer``) or the pretrained one it read."""
    from transformers import AutoTokenizer

    from rankmix.backbones import load_tokenizer

    spec = cfg.backbone.tokenizer
    if spec.get("source") in ("word_level", "byte_bpe"):
        folder = run_dir / "tokenizer"
        if not (folder / "tokenizer.json").is_file():
            raise RankmixError(f"{folder}: the run's tokenizer is missing; train the run again (rerun=true)")
        return AutoTokenizer.from_pretrained(folder)
    return load_tokenizer(spec, [], run_dir / "tokenizer", model_name=cfg.backbone.get("name_or_path"))


def evaluator_tokenizer(tokenizer, folder: Path):
    """``tokenizer`` saved in ``folder`` and read back with ``add_bos_token=True`` and left padding: encoding a prompt
    gives BOS first, as the run's prompts (``<s> prompt``), with no option for an evaluator to remember."""
    from transformers import AutoTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder, add_bos_token=True)
    if tok.pad_token is None:
        tok.pad_token = tokenizer.pad_token
    tok.padding_side = "left"
    ids = tok("x")["input_ids"]
    if tok.bos_token_id is None or not ids or ids[0] != tok.bos_token_id:
        raise RankmixError(f"{folder}: this tokenizer ({type(tok).__name__}) does not put BOS first with "
                           "add_bos_token=True; an evaluator must add it (lm-eval: add_bos_token=True)")
    tok.save_pretrained(folder)
    config_file = folder / "tokenizer_config.json"
    saved = json.loads(config_file.read_text())
    saved.update(add_bos_token=True, padding_side="left")
    config_file.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
    return tok


def adapted_model(cfg, run_dir: Path, tokenizer, checkpoint: Path):
    """(the backbone as the run built it, the same backbone with the run's adapters loaded) — the base is a copy
    taken before injection, for ``save_pretrained``."""
    import copy

    from omegaconf import OmegaConf

    from rankmix.adapters import adapter_state_dict, inject
    from rankmix.adapters.inject import load_fitting
    from rankmix.backbones import build_backbone

    backbone = build_backbone(cfg.backbone, tokenizer)
    base = copy.deepcopy(backbone) if cfg.backbone.get("source") == "config" else None
    inject(backbone, OmegaConf.to_container(cfg.method, resolve=True))
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    state = {k[len(CHECKPOINT_PREFIX):]: v for k, v in state.items() if k.startswith(CHECKPOINT_PREFIX)}
    expected = set(adapter_state_dict(backbone))
    load_fitting(backbone, {k: v for k, v in state.items() if k in expected}, expected, checkpoint)
    backbone.eval()
    return base, backbone


# -- checks -------------------------------------------------------------------------------------------------------
@torch.no_grad()
def test_loss(model, dm) -> float:
    """The loss on the run's test split as the run logged it: each batch's mean token loss, weighted by its records."""
    from rankmix.adapters import adapter_context

    total, n = 0.0, 0
    for batch in dm.test_dataloader():
        with adapter_context(model, attention_mask=batch["attention_mask"]):
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        total += float(out.loss) * batch["input_ids"].shape[0]
        n += batch["input_ids"].shape[0]
    return total / max(n, 1)


def check_loss(model, dm, result: dict, rel_tol: float = 1e-4) -> float:
    """Refuse when the rebuilt model's test loss differs from the run's ``test/loss`` (other base weights)."""
    expected = (result.get("metrics") or {}).get("test/loss")
    got = test_loss(model, dm)
    if expected is None:
        raise RankmixError("the run's result has no test/loss to check the rebuilt model against; export with "
                           "--no-verify")
    if not math.isclose(got, expected, rel_tol=rel_tol, abs_tol=1e-6):
        raise RankmixError(f"the rebuilt model's test loss is {got:.6f}, the run's {expected:.6f}: this environment "
                           "does not rebuild the run's backbone (another torch version or device?); export on the "
                           "machine that trained it")
    return got


# -- merging ------------------------------------------------------------------------------------------------------
def merged_model(model):
    """W = W0 + ΔW in every adapted layer, the plain modules back in place (a transformers model again); raises
    ``NotMergeableError`` for a routed method. rankmix's own layers merge with ``merge_and_unload``; peft's (DoRA,
    LoHa, LoKr, AdaLoRA) with their own ``merge``."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    from rankmix.adapters import adapter_layers, merge_and_unload

    if adapter_layers(model):
        return merge_and_unload(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, module.get_base_layer())
    return model


# -- the lm-eval task ---------------------------------------------------------------------------------------------
def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_") or "task"


def write_lm_eval_tasks(cfg, dm, tokenizer, out: Path, group: str = LM_EVAL_GROUP) -> list[str] | None:
    """The run's test split as lm-eval tasks under ``out`` (see the module docstring); None (nothing written) for a
    run whose prompts or scoring lm-eval's exact match does not express (a non-template prompt, another scorer)."""
    import yaml

    if cfg.task.get("scorer", "generic") != "generic" or getattr(dm, "prompt_format", "template") != "template":
        return None
    limit = (dm.max_eval_samples or {}).get("test")
    with open(dm.files()["test"], encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    records = records[:limit] if limit else records
    by_task: dict[str, list[dict]] = {}
    for rec in records:
        by_task.setdefault(rec["task"], []).append(
            {"prompt": dm.prompt_template.format(**rec), "targets": rec["targets"], "task": rec["task"]})
    out.mkdir(parents=True, exist_ok=True)
    names, used = [], set()
    for task, rows in sorted(by_task.items()):
        name = f"{group}_{_safe(task)}"
        while name in used:
            name += "_"
        used.add(name)
        names.append(name)
        data = out / f"{name}.jsonl"
        data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        spec = {
            "task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data.resolve())}},
            "test_split": "test", "output_type": "generate_until", "doc_to_text": "{{prompt}}",
            "doc_to_target": "{{targets}}",
            "generation_kwargs": {"until": [tokenizer.eos_token], "do_sample": False,
                                  "max_gen_toks": int(cfg.task.datamodule.max_new_tokens)},
            "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                             "ignore_case": True, "regexes_to_ignore": EM_REGEXES}],
            "metadata": {"version": 1, "source_task": task},
        }
        (out / f"{name}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
    group_spec = {"group": group, "task": names,
                  "aggregate_metric_list": [{"metric": "exact_match", "aggregation": "mean", "weight_by_size": False}],
                  "metadata": {"version": 1}}
    (out / f"{group}.yaml").write_text(yaml.safe_dump(group_spec, sort_keys=False))
    return names


# -- the export ---------------------------------------------------------------------------------------------------
def export_run(run_dir: str | Path, out: str | Path, verify: bool | None = None, merged: bool = True,
               lm_eval: bool = True) -> dict:
    """Write a finished run as the module docstring describes; ``verify``: check the rebuilt model against the run's
    test loss (None: when the backbone is built from a config). Returns what ``<out>/export.json`` records."""
    from rankmix.adapters import adapter_layers, export_peft
    from rankmix.config import register_resolvers
    from rankmix.data.loading import prepared_datamodule

    register_resolvers()
    run_dir, out = Path(run_dir).resolve(), Path(out).resolve()
    cfg, result = run_config(run_dir)
    built_by = builder_target(cfg.task)
    if built_by != INSTRUCTION_BUILDER:
        raise RankmixError(f"{run_dir}: its task is built by {built_by}; export takes instruction-tuning runs (built by "
                           f"{INSTRUCTION_BUILDER})")
    if out.exists() and any(out.iterdir()):
        raise RankmixError(f"{out}: exists and is not empty; give a new folder")
    checkpoint = tested_checkpoint(run_dir, result)
    config_built = cfg.backbone.get("source") == "config"
    tokenizer = run_tokenizer(cfg, run_dir)
    base, model = adapted_model(cfg, run_dir, tokenizer, checkpoint)
    dm = prepared_datamodule(cfg)
    dm.set_tokenizer(tokenizer)
    record = {"run": str(run_dir), "checkpoint": str(checkpoint), "method": cfg.method.name,
              "metrics": {k: v for k, v in (result.get("metrics") or {}).items() if k.startswith("test/")}}
    if verify if verify is not None else config_built:
        dm.setup("test")
        record["verified_test_loss"] = check_loss(model, dm, result)

    base_name = cfg.backbone.get("name_or_path")
    if base is not None:
        base.save_pretrained(out / "base")
        evaluator_tokenizer(tokenizer, out / "base")
        base_name = str(out / "base")
        record["base"] = base_name
    export_peft(model, out / "adapter", base_model_name_or_path=base_name)
    tok = evaluator_tokenizer(tokenizer, out / "adapter")
    record["adapter"] = str(out / "adapter")
    record["loads_with"] = ("rankmix.peft.from_pretrained" if adapter_layers(model) and any(
        layer.routes() for layer in adapter_layers(model).values()) else "peft.PeftModel.from_pretrained")
    if merged:
        try:
            plain = merged_model(model)
        except NotMergeableError as e:
            record["merged"] = None
            record["not_merged"] = str(e)
        else:
            plain.save_pretrained(out / "merged")
            evaluator_tokenizer(tokenizer, out / "merged")
            record["merged"] = str(out / "merged")
    if lm_eval:
        tasks = write_lm_eval_tasks(cfg, dm, tok, out / "lm_eval")
        record["lm_eval"] = {"include_path": str(out / "lm_eval"), "group": LM_EVAL_GROUP, "tasks": tasks,
                             "expected_exact_match": (result.get("metrics") or {}).get("test/em", 0.0) / 100.0
                             if tasks else None} if tasks else None
    (out / "export.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def main(argv: list[str] | None = None) -> int:
    """``python -m rankmix.export <run folder> <out>``: ``export_run``, one line per folder written; 2 with one
    ``rankmix: error:`` line when the run cannot be exported."""
    parser = argparse.ArgumentParser(prog="python -m rankmix.export", description=(
        "Write a finished run's adapter in peft's layout, its base model (config-built backbones), the merged model "
        "(mergeable methods), the tokenizer (BOS first) and an lm-eval task of its test split."))
    parser.add_argument("run", help="the run's folder, runs/<table-id>/<run-key>/")
    parser.add_argument("out", help="a new (or empty) folder to write")
    check = parser.add_mutually_exclusive_group()
    check.add_argument("--verify", dest="verify", action="store_true", default=None,
                       help="check the rebuilt model's test loss against the run's (default: config-built backbones)")
    check.add_argument("--no-verify", dest="verify", action="store_false")
    parser.add_argument("--no-merged", dest="merged", action="store_false", help="skip the merged model")
    args = parser.parse_args(argv)
    try:
        record = export_run(args.run, args.out, verify=args.verify, merged=args.merged)
    except RankmixError as e:
        print(f"rankmix: error: {e}", file=sys.stderr)
        return 2
    print(f"rankmix: adapter: {record['adapter']} (loads with {record['loads_with']})")
    if record.get("base"):
        print(f"rankmix: base model: {record['base']}")
    if record.get("merged"):
        print(f"rankmix: merged model: {record['merged']}")
    elif "not_merged" in record:
        print(f"rankmix: no merged model: {record['not_merged']}")
    if record.get("lm_eval"):
        print(f"rankmix: lm-eval tasks: --include_path {record['lm_eval']['include_path']} --tasks "
              f"{record['lm_eval']['group']} (the run's test/em: {record['lm_eval']['expected_exact_match']:.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
