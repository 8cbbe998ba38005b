"""Results tables: our numbers beside the paper's, one table per ``results/<table-id>/``.

Each run's JSON carries its ``table`` config. A run with ``table.cells`` fills those cells: every cell names
the paper CSV rows it reproduces (``match`` on the CSV's columns, files under ``results/paper/``) and the
metric of ours that corresponds: a test metric (``test/average``) or a dotted path into the run JSON
(``params.trainable``, ``train.wall_time_s``, ``train.peak_memory.peak_mb``). A cell with ``unit`` (M, h or G)
converts ours to the unit the paper prints (parameters in millions, seconds to hours, MiB to GiB) and reads
the paper's "28.3M" / "8.0h" / "29G" as numbers; ``column`` reads another column of the paper's row than
``value``. A metric the run's evaluation left out (``evaluation.missing`` of its JSON, e.g. SPICE without its
Java models) shows as "missing: <reason>", never as a number. Runs without cells list their metrics with no
paper value. A run whose model-written code ran without isolation (``evaluation.sandbox.isolated`` false) or had
samples flagged suspicious (``<benchmark>/suspicious`` metrics) is named under the table.

Two table-level options summarise runs against each other:

- ``seeds: [0, 1, 2]``: every row runs once per seed (``reproduce`` sweeps ``seed``), and each cell shows the
  mean ± sample std over the seeds; with ``ttest: {<match key>: <value>}`` a cell also gets the two-sided
  p-value of a paired t-test (pairs = seeds) against the row whose ``table.match`` is this row's with those
  values (e.g. ``{routing_function: none}``: each routing function against its own baseline).
- ``baseline: {<match key>: <value>}``: a cell with ``gain: true`` shows ours minus the same metric of the run
  whose ``table.match`` holds those values (e.g. the frozen backbone), the paper's "improvement over baseline".

``launcher: joblib`` runs the table's multirun with Hydra's joblib launcher: one run per CPU core, each with
cores / runs threads (a tiny model gains more from that than from threads), unless the overrides name another.
A table with ``paper_csv: null`` (one of ours, e.g. a comparison the paper describes without numbers) shows only
ours in its cells, with an empty paper column in the long listing. ``skip_unmatched: true`` drops a row's cell that matches no paper row (a paper that reports, per task, only the
best routing function) instead of failing.

A table without ``cells`` (``table.id=default``, or one's own ``table.id=<name>``) is a sweep table: one row per
configuration, the swept keys of the run keys as columns in numeric order, method, rank, trainable and activated
parameters, wall time, peak memory and each metric ± its standard error. Every cell of ours carries its standard
error over the test items (``rankmix.uncertainty``); a configuration run with several seeds (``SEEDS=n``) shows
mean ± std over them; with ``ttest`` or ``baseline`` a single run's cell also gets the p of a paired test over the
same test items against that row. Runs that are the same computation as another column (``run.reused_from``, or
the same ``computation_hash``: at tiny scale smora-1's ``_13b`` rows) are shown once, with a note; a tiny table
opens with a line on what that scale is evidence of.

CLI: ``python -m rankmix.tables build <id>``, ``list [--check]`` (``--check``: exit 1 when a run predates its
row's config or failed), ``reproduce <id> [overrides...]``, ``compare <id> --metric <m> --x <key>``, ``show <id>
<row> [overrides...]`` (one row's resolved config, e.g. ``show smora-1 lora_64 scale=paper``).
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import statistics
import subprocess
import sys
from pathlib import Path

from rankmix import uncertainty
from rankmix.atomic import atomic_open
from rankmix.errors import RankmixError
from rankmix.locations import results_root
from rankmix.results import current_format, read_json
from rankmix.table_rows import (
    all_tables,
    key_overrides,
    reproduce_command,
    row_name,
    row_overrides,
    table_spec,
)

COLUMNS = ["run", "scale", "cell", "metric", "paper", "ours", "diff"]
UNITS = {"M": 1e-6, "h": 1 / 3600, "G": 1 / 1024}  # parameters → millions, seconds → hours, MiB → GiB


def run_value(run: dict, name: str) -> float | None:
    """A metric of the run, else a dotted path into its JSON (``params.trainable``); None when absent."""
    if name in run["metrics"]:
        return run["metrics"][name]
    node = run
    for part in name.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node if isinstance(node, (int, float)) and not isinstance(node, bool) else None


def _number(text: str, unit: str | None) -> float | None:
    text = text.strip()
    if unit and text.endswith(unit):
        text = text[: -len(unit)]
    try:
        return float(text)
    except ValueError:
        return None


def _fmt(v) -> str:
    if v is None or v == "":
        return ""
    if isinstance(v, float):
        return f"{v:.2f}" if v == 0 or abs(v) >= 1 else f"{v:.3g}"
    return str(v)


def paper_rows(paper_dir: Path, csv_name: str, match: dict) -> list[dict]:
    path = paper_dir / csv_name
    if not path.is_file():
        raise RankmixError(f"{path}: paper table not found (copy it from the papers' clean tables)")
    with open(path, newline="") as f:
        # a key set to null is not a column of this table (a row config reused from another table)
        return [r for r in csv.DictReader(f) if all(r.get(k) == str(v) for k, v in match.items() if v is not None)]


def paper_value(paper_dir: Path, csv_name: str, match: dict, column: str | None = None) -> str:
    return printed(_one(paper_rows(paper_dir, csv_name, match), paper_dir / csv_name, match), column)


def _one(rows: list[dict], path: Path, match: dict) -> dict:
    if len(rows) != 1:
        raise RankmixError(f"{path}: {len(rows)} rows match {match}; a cell must match exactly one")
    return rows[0]


def printed(row: dict, column: str | None = None) -> str:
    """A paper row's value (``column``, else value / mean; no number printed, e.g. "not converge": the text)."""
    if column:
        return row[column]
    return row.get("value") or row.get("mean") or row.get("value_as_printed", "")


def table_rows(run: dict, paper_dir: Path, baseline: dict | None = None) -> list[dict]:
    """The run's cells (ours, the paper's, the difference); ``baseline``: the run that ``gain`` cells subtract."""
    table = run["config"].get("table", {})
    base = {"run": run["run"]["key"], "scale": run["run"]["scale"], "group": config_group(run)}
    if table.get("cells"):
        rows = []
        for cell in table["cells"]:
            match = {**table.get("match", {}), **cell["match"]}
            if table.get("paper_csv"):
                matched = paper_rows(paper_dir, table["paper_csv"], match)
                if table.get("skip_unmatched") and not matched:
                    continue
                paper_row = _one(matched, paper_dir / table["paper_csv"], match)
                paper = printed(paper_row, cell.get("column"))
            else:  # a table of ours (no paper numbers): the cells show our values only
                paper_row, paper = {}, ""
            ours = run_value(run, cell["metric"])
            if cell.get("gain") and isinstance(ours, (int, float)):
                if baseline is None:
                    raise RankmixError(f"table {table.get('id')}: cell {cell.get('label')!r} is a gain over the "
                                       f"baseline run {table.get('baseline')}, which has not finished")
                ref = run_value(baseline, cell["metric"])
                ours = ours - ref if isinstance(ref, (int, float)) else None
            missing = run.get("evaluation", {}).get("missing", {}).get(cell["metric"].split("/", 1)[-1])
            if ours is None and missing:
                ours = f"missing: {missing}"
            unit = cell.get("unit")
            if unit is not None:
                if unit not in UNITS:
                    raise RankmixError(f"table {table.get('id')}: cell unit {unit!r}; use one of {', '.join(UNITS)}")
                ours = ours * UNITS[unit] if isinstance(ours, (int, float)) else ours
            paper_num = _number(paper or "", unit)
            diff = ours - paper_num if isinstance(ours, (int, float)) and paper_num is not None else None
            label = cell.get("label") or ", ".join(f"{k}={v}" for k, v in cell["match"].items())
            paper_std = "" if cell.get("column") else paper_row.get("std") or ""
            row = {**base, "cell": label, "metric": cell["metric"], "paper": paper, "ours": ours, "diff": diff,
                   "paper_std": paper_std, "match": table.get("match", {}), "seed": run["config"].get("seed")}
            spread = run_value(run, cell["std"]) if cell.get("std") else None  # e.g. over repeated sampled evaluations
            if isinstance(ours, (int, float)):  # the standard error over the test items (rankmix.uncertainty)
                item = uncertainty.entry(run, cell["metric"])
                ref = uncertainty.entry(baseline, cell["metric"]) if cell.get("gain") and baseline else None
                if cell.get("gain"):  # a gain's error: that of the paired difference, when the items match
                    found = uncertainty.paired(item, ref) if item and ref else None
                    se = found[2] if found else None
                else:
                    se = item.get("se") if item else None
                if se is not None:
                    row["se"] = se * (UNITS[unit] if unit else 1)
                    row["n_items"] = item["n"]
                    row["shown"] = _pm(ours, row["se"])
                else:
                    row["no_se"] = run.get("evaluation", {}).get("no_se", {}).get(cell["metric"].split("/", 1)[-1])
                if isinstance(spread, (int, float)):  # repeated evaluations: their std, then the SE over the items
                    row["shown"] = _pm(ours, spread * (UNITS[unit] if unit else 1)) + " (std over runs" + (
                        f"; SE {row['se']:.2f})" if row.get("se") is not None else ")")
                row["item_entry"] = item
            rows.append(row)
        return rows
    rows = []
    for k, v in sorted(run["metrics"].items()):  # no cells: every metric, with its SE where items were kept
        item = uncertainty.entry(run, k) if isinstance(v, (int, float)) else None
        se = item.get("se") if item else None
        rows.append({**base, "cell": "", "metric": k, "paper": "", "ours": v, "diff": None,
                     **({"se": se, "n_items": item["n"]} if se is not None else {})})
    return rows


OUTCOMES = {"Win": "win", "Tie": "tie", "Loss": "loss", "Delta": "delta"}


def rating_rows(out_dir: Path, spec: dict, paper_dir: Path, scale: str) -> list[dict]:
    """A ``ratings`` table's cells (MoSLoRA Tab. 6): Win/Tie/Loss/Delta % per criterion from the raters' CSVs
    (``rankmix.rating``), and each criterion's rater agreement (no paper value)."""
    from rankmix.rating import summarise

    ratings = spec["ratings"]
    summary = summarise(out_dir / "ratings", ratings["criteria"])
    run = f"{ratings['first']['method']} vs {ratings['second']['method']}"
    hint = f"no ratings yet: rate on the page (python -m rankmix.rating serve {spec['id']} --rater NAME)"
    rows = []
    for c in ratings["criteria"]:
        s = summary[c["name"]]
        for printed_as, key in OUTCOMES.items():
            match = {"metric": c["name"], "outcome": printed_as}
            paper = printed(_one(paper_rows(paper_dir, spec["paper_csv"], match), paper_dir / spec["paper_csv"], match))
            ours = s[key] if s["votes"] else f"missing: {hint}"
            paper_num = _number(paper, None)
            rows.append({"run": run, "scale": scale, "cell": f"{c['label']} {printed_as}", "metric": f"{c['name']} "
                         f"{key} %", "paper": paper, "ours": ours, "diff": ours - paper_num if isinstance(ours, float)
                         and paper_num is not None else None})
        kappa = s["kappa"] if s["kappa"] is not None else (
            f"missing: {'needs two raters who answered the same pairs' if s['votes'] else hint}")
        rows.append({"run": run, "scale": scale, "cell": f"{c['label']} agreement (Fleiss' kappa, {s['raters']} "
                     f"raters, {s['votes']} votes)", "metric": f"{c['name']} kappa", "paper": "", "ours": kappa,
                     "diff": None})
    return rows


def sandbox_notes(runs: list[dict]) -> list[str]:
    """Markdown lines naming the runs whose model-written code ran unisolated or was flagged suspicious."""
    lines = []
    for r in runs:
        key = r["run"]["key"]
        if r.get("evaluation", {}).get("sandbox", {}).get("isolated") is False:
            lines.append(f"- `{key}`: model-written code ran WITHOUT isolation (task.sandbox.allow_unisolated=true)")
        flagged = {k.split("/")[-2]: int(v) for k, v in r["metrics"].items() if k.endswith("/suspicious") and v}
        if flagged:
            lines.append(f"- `{key}`: suspicious samples, not counted as passes: "
                         + ", ".join(f"{name} {n}" for name, n in sorted(flagged.items())))
    return ["", "Sandbox (rankmix.benchmarks.sandbox):", "", *lines] if lines else []


# what a table says once for all its rows (a row's own ``table.match``/``table.cells`` come from its run)
TABLE_LEVEL = ("id", "title", "paper_csv", "baseline", "seeds", "ttest", "ratings", "skip_unmatched")


def table_level_spec(table_id: str, runs: list[dict]) -> dict:
    """The table's own yaml (``conf/table/``) for what it says once for all rows, its cells' order included; a
    table without a yaml (one's own ``table.id=<name>``) as its first run recorded it."""
    recorded = runs[0]["config"].get("table", {}) if runs else {}
    own = table_spec(table_id)
    spec = {**recorded, **{k: v for k, v in own.items() if k in TABLE_LEVEL}}
    if own.get("cells"):
        spec["cells"] = own["cells"]
    return spec


def build_table(table_id: str, results_dir: Path, paper_dir: Path) -> Path:
    """Write ``results/<id>/table.{md,csv}`` from the finished runs' JSONs; returns the markdown path."""
    out_dir = Path(results_dir) / table_id
    runs = [r for p in sorted((out_dir / "runs").glob("*.json")) if (r := read_json(p)) and r.get("status") == "ok"]
    failed = [r for p in sorted((out_dir / "failed").glob("*.json")) if (r := read_json(p))]
    spec = table_level_spec(table_id, runs)
    if runs and not any(r["config"].get("table", {}).get("cells") or r["config"].get("table", {}).get("ratings")
                        for r in runs):
        return _write(out_dir, *sweep_table(table_id, runs, failed, spec))
    rows = [row for r in runs for row in table_rows(r, Path(paper_dir), _baseline_run(runs, spec.get("baseline"), r))]
    if spec.get("ratings") and runs:
        rows += rating_rows(out_dir, spec, Path(paper_dir), runs[0]["run"]["scale"])
    baselines = {r["run"]["scale"]: _baseline_run(runs, spec.get("baseline"), r) for r in runs}
    seeded = bool(spec.get("seeds")) or several_seeds(runs)
    reference = spec.get("ttest") or spec.get("baseline")
    if seeded:
        rows, columns = over_seeds(rows, spec.get("ttest")), COLUMNS + SEED_COLUMNS
    else:
        if reference:
            compare_items(rows, reference)
        columns = COLUMNS + [c for c in ("se", "n_items", "p") if any(row.get(c) is not None for row in rows)]
    title = (spec.get("title") or table_id) if runs else table_id
    scales = sorted({r["run"]["scale"] for r in runs})

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(row.get(k)) if k in ("ours", "diff", "std", "p", "se") else row.get(k, "")
                         for k in columns})
    md = [f"# {title}", "", f"Table `{table_id}`; scale: {', '.join(scales) or 'none'}; {len(runs)} finished runs."]
    md += scale_note(scales, [row.get("n_items") for row in rows], bool(spec.get("paper_csv")))
    cells = [row for row in rows if row["cell"]]
    if cells:
        if seeded:
            seeds = spec.get("seeds") or sorted({r["config"].get("seed") for r in runs}, key=lambda x: x or 0)
            md += ["", f"Each entry is ours / the paper's: mean ± std over seeds {seeds}"
                   + (f"; p: paired t-test over the seeds against the row with {spec['ttest']}; p < 0.05: the "
                      "difference holds at 95 %" if spec.get("ttest") else "") + "."]
        elif spec.get("paper_csv"):
            md += ["", "Each entry is ours / the paper's printed value."]
        else:
            md += ["", "Each entry is ours: the paper prints no numbers for this table."]
        if not seeded and any(row.get("se") is not None for row in cells):
            md += ["", f"Ours ± its standard error over the test items ({SE_TEXT})"
                   + (f"; (p=…): a paired test over the same test items against the row with {reference} (a paired "
                      "t-test for means, the paired bootstrap for corpus metrics), p < 0.05: the difference holds at "
                      "95 %" if reference and any(row.get("p") is not None for row in cells) else "")
                   + ". A cell without ± has no standard error: the reason is listed below."]
        if spec.get("baseline"):
            found = ", ".join(f"`{b['run']['key']}` at {scale}" if b else f"not finished at {scale}"
                              for scale, b in sorted(baselines.items()))
            md += ["", f"Gain cells: ours minus the baseline run ({spec['baseline']}, {found}) of the same scale."]
        columns_shown = {row["run"] for row in cells}
        same = {} if seeded else {k: v for k, v in same_computation_runs(runs).items()
                                  if k in columns_shown and v in columns_shown}
        if same:
            md += ["", "Columns joined by `=` are the same computation at this scale (" + ", ".join(
                f"`{k}` is `{v}`" for k, v in same.items()) + "): ours is shown once, beside each column's paper "
                "value in the header's order."]
        md += [""] + _pivot(cells, [c.get("label") for c in spec.get("cells", [])],
                            with_paper=bool(spec.get("paper_csv") or spec.get("ratings")), same=same)
        md += ["", "`paper` = the paper's printed value; `ours` = this suite's run; `diff` = ours − paper.", "",
               "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        md += ["| " + " | ".join(_short(row.get(k, "")) for k in columns) + " |" for row in cells]
        reasons = dict.fromkeys((row["cell"], row["ours"][len("missing: "):]) for row in cells
                                if isinstance(row["ours"], str) and row["ours"].startswith("missing: "))
        if reasons:
            md += ["", "Missing (left out by the evaluation, not substituted):", ""]
            md += [f"- {cell}: {reason}" for cell, reason in reasons]
        no_se = dict.fromkeys((row["cell"], row.get("no_se") or "the run's result keeps no per-item scores for it")
                              for row in cells if isinstance(row["ours"], (int, float)) and row.get("se") is None
                              and not seeded and not isinstance(row.get("shown"), str))
        if no_se and any(row.get("se") is not None for row in cells):
            md += ["", "No standard error:", ""] + [f"- {cell}: {reason}" for cell, reason in no_se]
    md += sandbox_notes(runs)
    if runs:
        names = sorted({k for r in runs for k in r["metrics"] if k.count("/") == 1})
        layouts = any((r.get("train", {}).get("batch_layout") or {}).get("global_batch_size") for r in runs)
        extra = ["batch: devices × batch × accumulation"] if layouts else []
        md += ["", "Run summary:", "",
               "| run | scale | " + " | ".join(extra + names) + " |", "|" + "---|" * (len(extra + names) + 2)]
        md += ["| " + " | ".join([r["run"]["key"], r["run"]["scale"], *([batch_layout_text(r)] if layouts else []),
                                  *(_fmt(r["metrics"].get(n)) for n in names)]) + " |" for r in runs]
    md += failed_lines(failed)
    return _write(out_dir, buf.getvalue(), "\n".join(md) + "\n")


SE_TEXT = ("closed form for means; a bootstrap over the items for the corpus metrics BLEU-4, METEOR and CIDEr: "
           "`rankmix.uncertainty`")
TINY_NOTE = ("Scale `tiny`: each backbone is a 2-layer, randomly initialised model of the full-size architecture, "
             "trained and tested on generated data{items}. It is evidence that the code path runs and learns, not "
             "evidence about the paper's numbers{paper}.")


def scale_note(scales: list[str], items: list, paper: bool = False) -> list[str]:
    """The line that says what a tiny table is (and is not) evidence of."""
    if "tiny" not in scales:
        return []
    ns = sorted({n for n in items if isinstance(n, int)})
    count = "" if not ns else f" ({ns[0]} test items per cell)" if len(ns) == 1 else \
        f" ({ns[0]}–{ns[-1]} test items per cell)"
    return ["", TINY_NOTE.format(items=count, paper="; the paper's value stays beside ours for reference" if paper
                                 else "")]


def failed_lines(failed: list[dict]) -> list[str]:
    if not failed:
        return []
    return ["", "## Failed runs (no table rows)", "", *(f"- `{r['run']['key']}`: {r.get('error', '')}" for r in failed)]


def _write(out_dir: Path, csv_text: str, md_text: str) -> Path:
    for name, text in (("table.csv", csv_text), ("table.md", md_text)):
        with atomic_open(out_dir / name) as f:
            f.write(text)
    return out_dir / "table.md"


def several_seeds(runs: list[dict]) -> bool:
    """Whether some configuration ran with more than one seed (``SEEDS=n``)."""
    seen: dict[str, set] = {}
    for r in runs:
        seen.setdefault(config_group(r), set()).add(r["config"].get("seed"))
    return any(len(s) > 1 for s in seen.values())


def without_seed(key: str) -> str:
    return re.sub(r"(^|,)seed=\d+", "", key).strip(",") or "default"


def config_group(run: dict) -> str:
    """The name of a run's configuration apart from its seed: its key without ``seed=``; a long key cut to a hash
    (whose hash covers the seed) gets the hash of its config without the seed instead."""
    key = run["run"]["key"]
    if "--" not in key:
        return without_seed(key)
    from rankmix.config import computation_hash

    def seedless(node):  # the seed and the settings that follow it (task.datamodule.seed: ${seed})
        return {k: seedless(v) for k, v in node.items() if k != "seed"} if isinstance(node, dict) else node

    return without_seed(key.rsplit("--", 1)[0]) + "--" + computation_hash(seedless(run.get("config", {})))[:8]


def same_computation_runs(runs: list[dict]) -> dict[str, str]:
    """``{run: the run of this table it repeats}``: reused from it (``run.reused_from``) or of the same
    ``computation_hash`` (e.g. smora-1's ``_13b`` rows at tiny scale, where one tiny backbone stands in for both)."""
    from rankmix.config import computation_hash

    keys = {r["run"]["key"] for r in runs}
    first: dict[tuple, str] = {}
    out = {}
    for r in sorted(runs, key=lambda r: (bool(r["run"].get("reused_from")), natural_key(r["run"]["key"]))):
        key = r["run"]["key"]
        source = Path(r["run"].get("reused_from") or "").stem
        if source in keys and source != key:
            out[key] = source
            continue
        try:
            h = (r["run"]["scale"], computation_hash(r["config"])) if "config" in r and len(r["config"]) > 1 else None
        except Exception:  # noqa: BLE001 -- a config that cannot be hashed is never the same as another
            h = None
        if h is not None and h in first:
            out[key] = first[h]
        elif h is not None:
            first[h] = key
    return out


def compare_items(rows: list[dict], reference: dict) -> None:
    """Each cell against the same cell of the row whose ``table.match`` is this one's updated by ``reference``: a
    paired test over the same test items (``rankmix.uncertainty.paired``); sets ``p`` and adds it to the entry."""
    by_match = {(repr(sorted(r.get("match", {}).items())), r["cell"], r["scale"]): r for r in rows}
    for row in rows:
        if row.get("p") is not None or not row.get("item_entry"):
            continue
        match = row.get("match", {})
        ref_match = {**match, **reference}
        ref = by_match.get((repr(sorted(ref_match.items())), row["cell"], row["scale"]))
        if ref_match == match or ref is None or not ref.get("item_entry"):
            continue
        found = uncertainty.paired(row["item_entry"], ref["item_entry"])
        if found:
            row["p"] = found[1]
            row["shown"] = (row.get("shown") or _fmt(row["ours"])) + f" (p={found[1]:.2g})"


def natural_key(text: str) -> list:
    """``r2`` before ``r16``: digit runs compare as numbers."""
    return [(0, float(t), "") if re.fullmatch(r"\d+(\.\d+)?", t) else (1, 0.0, t)
            for t in re.findall(r"\d+(?:\.\d+)?|[^\d]+", text)]


def _sort_value(v) -> tuple:
    try:
        return (0, float(v), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(v))


def swept_keys(runs: list[dict]) -> list[str]:
    """The overrides the run keys name (``method.r`` of ``method=smora,method.r=8``), in first-seen order; the row
    name (an experiment row) is the ``run`` column's, ``seed`` its own column."""
    keys = []
    for r in runs:
        for part in r["run"]["key"].split(",")[1:] if "=" not in r["run"]["key"].split(",")[0] else \
                r["run"]["key"].split(","):
            k = part.split("=", 1)[0]
            if "=" in part and k != "seed" and k not in keys:
                keys.append(k)
    return keys


def key_value(run: dict, key: str):
    """A swept key's value: from the run key, else the run's config at that dotted path."""
    for part in run["run"]["key"].split(","):
        k, _, v = part.partition("=")
        if k == key and _:
            return v
    node = run.get("config", {})
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return ""
        node = node[part]
    return node if isinstance(node, (str, int, float)) else json_text(node)


def json_text(v) -> str:
    import json

    return json.dumps(v, separators=(",", ":"), default=str)


SWEEP_FIELDS = {"method": "config.method.name", "r": "config.method.r", "trainable": "params.trainable",
                "activated": "params.activated_per_token", "wall time (s)": "train.wall_time_s"}


def sweep_table(table_id: str, runs: list[dict], failed: list[dict], spec: dict) -> tuple[str, str]:
    """A table of one's own sweep (no ``cells``): one row per configuration, the swept keys as columns (numeric
    order), method, rank, trainable and activated parameters, wall time, peak memory and every metric ± its standard
    error over the test items; with several seeds per configuration, mean ± std over the seeds."""
    keys = swept_keys(runs)
    metrics = sorted({k for r in runs for k in r["metrics"] if k.count("/") == 1})
    seeded = several_seeds(runs)
    groups: dict[str, list[dict]] = {}
    for r in runs:
        groups.setdefault(config_group(r) if seeded else r["run"]["key"], []).append(r)
    first = {name: g[0] for name, g in groups.items()}
    order = sorted(groups, key=lambda n: ([_sort_value(key_value(first[n], k)) for k in keys], natural_key(n)))
    layouts = any((r.get("train", {}).get("batch_layout") or {}).get("global_batch_size") for r in runs)
    shown_as = {"method": "method", "r": "method.r"}  # a field that is a swept key is its column
    fields = {label: path for label, path in SWEEP_FIELDS.items() if shown_as.get(label) not in keys}
    head = ["run", "scale", *keys, *(["seeds"] if seeded else []), *fields, "peak memory (MiB)",
            *(["batch: devices × batch × accumulation"] if layouts else [])]
    csv_cols = head + [c for m in metrics for c in (m, f"{m} {'std' if seeded else 'se'}")]
    md_rows, csv_rows, items_n = [], [], []
    for name in order:
        g = sorted(groups[name], key=lambda r: r["config"].get("seed") or 0)
        r0 = g[0]
        row = {"run": name, "scale": "+".join(sorted({r["run"]["scale"] for r in g})),
               **{k: key_value(r0, k) for k in keys}}
        if seeded:
            row["seeds"] = ",".join(str(s) for s in dict.fromkeys(r["config"].get("seed") for r in g))
        for label, path in fields.items():
            values = [v for r in g if (v := _path_value(r, path)) is not None]
            row[label] = values[0] if label in ("method", "r") and values else (
                statistics.mean(values) if values else "")
        mem = [peak_mb(r) for r in g if peak_mb(r) is not None]
        row["peak memory (MiB)"] = statistics.mean(mem) if mem else ""
        if layouts:
            row["batch: devices × batch × accumulation"] = batch_layout_text(r0)
        shown = dict(row)
        for m in metrics:
            by_seed = {r["config"].get("seed"): r["metrics"][m] for r in g if isinstance(r["metrics"].get(m), (int, float))}
            if not by_seed:
                row[m], row[f"{m} {'std' if seeded else 'se'}"], shown[m] = "", "", ""
                continue
            mean = statistics.mean(by_seed.values())
            if seeded:
                spread = statistics.stdev(by_seed.values()) if len(by_seed) > 1 else None
            else:
                e = uncertainty.entry(r0, m)
                spread = e.get("se") if e else None
                items_n.append(e["n"] if e else None)
            row[m], row[f"{m} {'std' if seeded else 'se'}"], shown[m] = mean, spread, _pm(mean, spread)
        csv_rows.append(row)
        md_rows.append(shown)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=csv_cols)
    writer.writeheader()
    for row in csv_rows:
        writer.writerow({k: _fmt(v) if isinstance(v, float) else v for k, v in row.items()})
    methods = list(dict.fromkeys(str(name) for r in runs if (name := _path_value(r, "config.method.name"))))
    title = spec.get("title") or (f"{table_id}: {', '.join(methods) or 'runs'}"
                                  + (f" over {', '.join(keys)}" if keys else ""))
    scales = sorted({r["run"]["scale"] for r in runs})
    md = [f"# {title}", "", f"Table `{table_id}`; scale: {', '.join(scales)}; {len(runs)} finished runs."]
    md += scale_note(scales, items_n)
    md += ["", ("Metrics: mean ± std over the seeds of each configuration." if seeded else
                f"Metrics: ours ± its standard error over the test items ({SE_TEXT}); no ± where the run kept no "
                "per-item scores (test/loss, runs recorded before they were kept).")
           + " Rows in the order of the swept keys (numbers as numbers). `trainable`/`activated`: parameters "
           "(activated: per token); wall time and peak memory (the accelerator's) of the whole run."
           + (" A table of one's own: name it with `table.id=<name>`; "
              f"`make compare TABLE={table_id} METRIC=<metric> X=<key>` plots a metric against a swept key." if keys
              else "")]
    cols = head + metrics
    md += ["", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(_fmt(row.get(c)) if not isinstance(row.get(c), str) else row[c] for c in cols) + " |"
           for row in md_rows]
    md += failed_lines(failed)
    return buf.getvalue(), "\n".join(md) + "\n"


def _path_value(run: dict, path: str):
    node = run
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node if isinstance(node, (int, float, str)) and not isinstance(node, bool) else None


def peak_mb(run: dict) -> float | None:
    mem = run.get("train", {}).get("peak_memory") or {}
    return mem.get("peak_mb") or mem.get("gpu_allocated_mb") or mem.get("cpu_rss_mb")


SEED_COLUMNS = ["std", "n", "p"]


def batch_layout_text(run: dict) -> str:
    """``devices × batch × accumulation = global`` (``× nodes`` when several) as the run trained; "—" if unrecorded."""
    b = run.get("train", {}).get("batch_layout")
    if not b:
        return "—"
    nodes = f" × {b['nodes']} nodes" if b.get("nodes", 1) > 1 else ""
    return f"{b['devices']}{nodes} × {b['per_device_batch']} × {b['accumulation']} = {b['global_batch']}"


def _baseline_run(runs: list[dict], items: dict | None, of: dict | None = None) -> dict | None:
    """The finished run whose ``table.match`` holds ``items``: of the same scale as the run ``of`` (and of its seed
    when the baseline ran with it), else the lowest seed."""
    if not items:
        return None
    found = [r for r in runs if all(r["config"].get("table", {}).get("match", {}).get(k) == v for k, v in items.items())
             and (of is None or r["run"]["scale"] == of["run"]["scale"])]
    if of is not None:
        same_seed = [r for r in found if r["config"].get("seed") == of["config"].get("seed")]
        found = same_seed or found
    return min(found, key=lambda r: r["config"].get("seed") or 0) if found else None


def over_seeds(rows: list[dict], ttest: dict | None = None) -> list[dict]:
    """One row per (configuration, cell): the mean, sample std and count of ours over the seeds, and the
    two-sided paired t-test p-value against the configuration whose match is this one's updated by ``ttest``."""
    from scipy import stats

    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row.get("group") or without_seed(row["run"]), row["cell"]), []).append(row)
    by_match = {(repr(sorted(g[0].get("match", {}).items())), cell): g for (_, cell), g in groups.items()}
    out = []
    for (config, cell), group in groups.items():
        values = {r.get("seed"): r["ours"] for r in group if isinstance(r["ours"], (int, float))}
        n = len(values)
        mean = sum(values.values()) / n if n else None
        std = statistics.stdev(values.values()) if n > 1 else None
        p = None
        if ttest:
            ref_match = {**group[0].get("match", {}), **ttest}
            ref = by_match.get((repr(sorted(ref_match.items())), cell))
            if ref is not None and ref_match != group[0].get("match", {}):
                ref_values = {r["seed"]: r["ours"] for r in ref if isinstance(r["ours"], (int, float))}
                seeds = sorted(set(values) & set(ref_values))
                if len(seeds) > 1 and any(values[s] != ref_values[s] for s in seeds):
                    p = float(stats.ttest_rel([values[s] for s in seeds], [ref_values[s] for s in seeds]).pvalue)
        first = group[0]
        paper_num = _number(first["paper"] or "", None)
        paper_std = first.get("paper_std")
        out.append({**first, "run": config, "ours": mean, "std": std, "n": n, "p": p,
                    "diff": mean - paper_num if mean is not None and paper_num is not None else None,
                    "shown": _pm(mean, std) + (f" (p={p:.2g})" if p is not None else ""),
                    "paper_shown": f"{first['paper']} ± {paper_std}" if paper_std else first["paper"]})
    return out


def _pm(mean, std) -> str:
    return _fmt(mean) + (f" ± {std:.2f}" if std is not None else "")


def _short(v) -> str:
    """``_fmt`` with "missing: <reason>" cut to "missing" (the reasons are listed once under the table)."""
    return "missing" if isinstance(v, str) and v.startswith("missing") else _fmt(v)


def _pivot(cells: list[dict], order: list[str] | None = None, with_paper: bool = True,
           same: dict[str, str] | None = None) -> list[str]:
    """Markdown: one row per cell label (in ``order``, the table's, then as met), one column per run, entries
    "ours / paper" (``with_paper``), else "ours"."""
    runs = list(dict.fromkeys(r["run"] for r in cells))
    labels = list(dict.fromkeys([label for label in order or [] if any(r["cell"] == label for r in cells)]
                                + [r["cell"] for r in cells]))
    value = {(r["cell"], r["run"]): f"{r.get('shown') or _short(r['ours'])}"
             + (f" / {r.get('paper_shown') or r['paper']}" if with_paper else "") for r in cells}
    same = same or {}
    shown_runs = [run for run in runs if run not in same]
    joined = {run: [run, *(k for k in runs if same.get(k) == run)] for run in shown_runs}
    if same:  # a repeated computation: ours once, each column's paper value beside it
        paper = {(r["cell"], r["run"]): r.get("paper_shown") or r["paper"] for r in cells}
        value = {(label, run): f"{r.get('shown') or _short(r['ours'])}" + (
            " / " + "; ".join(str(paper.get((label, k), "")) for k in joined[run]) if with_paper else "")
            for (label, run), r in {(r["cell"], r["run"]): r for r in cells}.items() if run in joined}
    lines = ["| cell | " + " | ".join(" = ".join(joined[run]) for run in shown_runs) + " |",
             "|" + "---|" * (len(shown_runs) + 1)]
    return lines + ["| " + " | ".join([label, *(value.get((label, run), "") for run in shown_runs)]) + " |"
                    for label in labels]


def table_status(table_id: str, results_dir: Path) -> str:
    ok = [r for p in sorted((Path(results_dir) / table_id / "runs").glob("*.json")) if (r := read_json(p))
          and r.get("status") == "ok"]
    failed = len(list((Path(results_dir) / table_id / "failed").glob("*.json")))
    if not ok:
        return "never run" + (f" ({failed} failed)" if failed else "")
    scales = "+".join(sorted({r["run"]["scale"] for r in ok}))
    return f"{scales} ({len(ok)} runs" + (f", {failed} failed)" if failed else ")")


def show_row(table_id: str, row: str, overrides: list[str]) -> str:
    """The fully resolved config of one row, as YAML: exactly what its run will use."""
    from omegaconf import OmegaConf

    from rankmix.batching import accumulation, device_count
    from rankmix.config import compose_run

    cfg = compose_run([*row_overrides(table_id, row_name(table_id, row)), *overrides])
    text = OmegaConf.to_yaml(cfg, resolve=True)
    if cfg.task.get("global_batch_size"):  # the accumulation is computed at start-up from the devices
        text += (f"# batch layout on trainer.devices={device_count(cfg.trainer)}: {device_count(cfg.trainer)} x "
                 f"{cfg.trainer.get('num_nodes', 1)} node(s) x {cfg.task.datamodule.batch_size} x "
                 f"{accumulation(cfg)} accumulation = task.global_batch_size {cfg.task.global_batch_size}\n")
    return text


def stale_runs(table_id: str, results_dir: Path) -> list[str]:
    """The finished runs of a table whose config hash is no longer what their row composes to now (an edited
    experiment file, a changed default): ``make reproduce-table-<id>`` would run them again. A run whose key
    cannot be read back into overrides (a long key cut to a hash) counts as stale."""
    from rankmix.config import compose_run, config_hash
    from rankmix.data.fingerprints import record_data_fingerprint

    stale = []
    for p in sorted((Path(results_dir) / table_id / "runs").glob("*.json")):
        run = read_json(p)
        if not run or run.get("status") != "ok":
            continue
        key = run["run"]["key"]
        if not current_format(run):  # made before per-item scores were kept: no standard errors to show
            stale.append(key)
            continue
        overrides = key_overrides(table_id, key)
        if overrides is None:
            stale.append(key)
            continue
        try:
            cfg = compose_run([*overrides, f"scale={run['run']['scale']}"])
            record_data_fingerprint(cfg)
        except Exception:  # noqa: BLE001 -- a row that no longer composes is as stale as can be
            stale.append(key)
            continue
        if config_hash(cfg) != run["run"].get("config_hash"):
            stale.append(key)
    return stale


def compare(table_id: str, metric: str, x: str, results_dir: Path) -> Path:
    """``results/<id>/compare-<metric>-vs-<x>.{png,csv}``: ``metric`` against the swept key ``x`` (a run-key override
    or a dotted config path, e.g. ``method.r``), one line per method (and per value of the other swept keys);
    error bars: the std over seeds where a configuration has several, else the standard error over the test items."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(results_dir) / table_id
    runs = [r for p in sorted((out_dir / "runs").glob("*.json")) if (r := read_json(p)) and r.get("status") == "ok"]
    if not runs:
        raise RankmixError(f"table {table_id}: no finished runs under {out_dir / 'runs'}")
    known = sorted({k for r in runs for k in r["metrics"]})
    if metric not in known:
        raise RankmixError(f"table {table_id}: no metric {metric!r}; metrics: {', '.join(known)}")
    others = [k for k in swept_keys(runs) if k not in (x, "method")]
    lines: dict[str, dict[float, dict]] = {}
    for r in runs:
        xv = _sort_value(key_value(r, x))
        if xv[0] != 0:
            raise RankmixError(f"table {table_id}: run {r['run']['key']} has {x}={key_value(r, x)!r}; --x must be a "
                               f"numeric swept key ({', '.join(swept_keys(runs)) or 'none swept'})")
        label = ", ".join([str(_path_value(r, "config.method.name") or "run"),
                           *(f"{k}={key_value(r, k)}" for k in others)])
        lines.setdefault(label, {}).setdefault(xv[1], {})[r["config"].get("seed")] = r
    rows = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in sorted(lines.items()):
        xs, ys, errs = [], [], []
        for xv in sorted(points):
            by_seed = points[xv]
            values = [r["metrics"][metric] for r in by_seed.values() if isinstance(r["metrics"].get(metric), (int, float))]
            if not values:
                continue
            if len(values) > 1:
                err, kind = statistics.stdev(values), "std over seeds"
            else:
                e = uncertainty.entry(next(iter(by_seed.values())), metric)
                err, kind = (e.get("se"), "standard error") if e else (None, "")
            xs.append(xv)
            ys.append(statistics.mean(values))
            errs.append(err or 0.0)
            rows.append({"line": label, x: xv, metric: statistics.mean(values), "error": err, "error_kind": kind,
                         "seeds": len(values)})
        ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=label)
    ax.set_xlabel(x)
    ax.set_ylabel(metric)
    if len({r[x] for r in rows}) > 2 and min(r[x] for r in rows) > 0:
        ax.set_xscale("log", base=2)
    ax.set_title(f"{table_id}: {metric} against {x}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    stem = re.sub(r"[^A-Za-z0-9_.-]", "-", f"compare-{metric}-vs-{x}")
    png = out_dir / f"{stem}.png"
    fig.savefig(png, dpi=120)
    plt.close(fig)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["line", x, metric, "error", "error_kind", "seeds"])
    writer.writeheader()
    writer.writerows(rows)
    with atomic_open(out_dir / f"{stem}.csv") as f:
        f.write(buf.getvalue())
    return png


def failed_runs(table_id: str, results_dir: Path) -> list[str]:
    return [r["run"]["key"] for p in sorted((Path(results_dir) / table_id / "failed").glob("*.json"))
            if (r := read_json(p))]


def reproduce(table_id: str, overrides: list[str], results_dir: Path) -> int:
    tables = all_tables()
    if table_id not in tables:
        print(f"rankmix: error: unknown table {table_id!r}; known: {', '.join(tables) or 'none'}", file=sys.stderr)
        return 2
    cmd = [sys.executable, *reproduce_command(table_id, overrides)]
    spec = table_spec(table_id)
    print("rankmix: " + " ".join(cmd))
    rc = subprocess.call(cmd)
    if spec.get("ratings") and rc == 0:  # the pairs the rating page shows (rankmix.rating)
        from rankmix.rating import write_pairs

        pairs = write_pairs(results_dir / table_id, spec["ratings"])
        print(f"rankmix: rating pairs: {pairs}; rate with python -m rankmix.rating serve {table_id} --rater NAME")
    md = build_table(table_id, results_dir, results_dir / "paper")
    print(f"rankmix: table: {md}")
    return rc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="rankmix-table", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="rebuild results/<id>/table.{md,csv} from its run JSONs")
    b.add_argument("table_id")
    lst = sub.add_parser("list", help="every reproducible table with its status")
    lst.add_argument("--check", action="store_true", help="exit non-zero, naming them, when a committed run predates "
                     "its row's config or a run failed (make check-results)")
    c = sub.add_parser("compare", help="plot a metric against a swept key, one line per method (PNG and CSV)")
    c.add_argument("table_id")
    c.add_argument("--metric", required=True, help="e.g. test/em")
    c.add_argument("--x", required=True, help="a numeric swept key, e.g. method.r")
    r = sub.add_parser("reproduce", help="run a table's multirun (skipping up-to-date runs), then build it")
    r.add_argument("table_id")
    r.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. scale=paper trainer=gpu")
    s = sub.add_parser("show", help="print one row's fully resolved config (what its run will use)")
    s.add_argument("table_id")
    s.add_argument("row", help="the row's name, e.g. lora_64")
    s.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. scale=paper")
    ap.add_argument("--results-dir", type=Path, default=None,
                    help="default: results/ under $RANKMIX_ROOT or the current folder")
    a = ap.parse_args(argv)
    a.results_dir = a.results_dir or results_root()
    try:
        if a.cmd == "build":
            print(build_table(a.table_id, a.results_dir, a.results_dir / "paper"))
        elif a.cmd == "show":
            print(show_row(a.table_id, a.row, a.overrides), end="")
        elif a.cmd == "compare":
            print(f"rankmix: compare: {compare(a.table_id, a.metric, a.x, a.results_dir)} (and .csv)")
        elif a.cmd == "list":
            problems = []
            for tid in all_tables():
                stale, failed = stale_runs(tid, a.results_dir), failed_runs(tid, a.results_dir)
                print(f"reproduce-table-{tid:<28} {table_status(tid, a.results_dir)}"
                      + (f"; {len(stale)} predate the current config: {', '.join(stale)}" if stale else ""))
                problems += [f"{tid}/runs/{k}.json predates its row's config" for k in stale]
                problems += [f"{tid}/failed/{k}.json: a failed run" for k in failed]
            if a.check and problems:
                for line in problems:
                    print(f"rankmix: error: {line}", file=sys.stderr)
                print(f"rankmix: error: {len(problems)} result(s) to rerun (make reproduce-table-<id>) or remove",
                      file=sys.stderr)
                return 1
        else:
            return reproduce(a.table_id, a.overrides, a.results_dir)
    except RankmixError as e:
        print(f"rankmix: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
