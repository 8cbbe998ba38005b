"""Which tables exist, which rows each has, and the Hydra overrides that compose a row.

A table ``<id>`` is ``make reproduce-table-<id>``; its runs and ``table.md`` live in ``results/<id>/`` and its spec
(title, paper CSV, cells) in ``conf/table/<id>.yaml``: one name for the table, its make target, its yaml and its
experiment folder; ``conf/experiment/<paper>/`` holds a paper's setups shared by its tables' rows.
Its rows come in one of three forms:

- **Experiment rows**: one Hydra experiment file per row, ``conf/experiment/<id>/<row>.yaml``, for rows
  that really differ (another method, backbone or setting each). The row's name is the file's stem.
- **A sweep**, in the table's own yaml, so that a new table of this kind is that one file::

      rows:
        experiment: smora-1/lora_64       # optional: the row every row starts from
        set: [method=smora, method.r=16]  # optional: overrides of every row, not part of the run's name
        sweep: {method.k: [1, 2, 4, 8]}   # every combination is a row

  A row is named as its run is: the swept ``key=value`` pairs in Hydra's order (after the starting row's name).
- **Another table's rows, reused**, in the table's yaml, beside any experiment rows of its own (a row of its own
  replaces the reused row of the same name)::

      rows:
        reuse: smora-1                    # that table's rows, listed under this table
        only: [lora_64, hydralora]        # optional: those rows only
        set: [backbone=llama2_13b]        # optional: overrides of every row, not part of the run's name

  Without ``set`` a reused row is the same computation as the other table's run, whose numbers it reuses.

A table's ``rows:`` says how the table is made, not how a run computes: it is not part of a run's config
(``rankmix.config.drop_table_rows``), so adding a row leaves the others current.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

from omegaconf import OmegaConf

from rankmix.errors import ConfigError, RankmixError
from rankmix.locations import CONF_DIR

ROW_KEYS = ("experiment", "set", "sweep")
REUSE_KEYS = ("reuse", "only", "set")


def spec_path(table_id: str, conf_dir: Path = CONF_DIR) -> Path | None:
    """The table's yaml, ``conf/table/<id>.yaml``; None if it has none."""
    path = Path(conf_dir) / "table" / f"{table_id}.yaml"
    return path if path.is_file() else None


def table_spec(table_id: str, conf_dir: Path = CONF_DIR) -> dict:
    """The table's yaml, unresolved; {} if it has none."""
    path = spec_path(table_id, conf_dir)
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False) if path else {}


def _rows_block(table_id: str, conf_dir: Path) -> tuple[dict | None, str]:
    path = spec_path(table_id, conf_dir)
    rows = OmegaConf.to_container(OmegaConf.load(path), resolve=False).get("rows") if path else None
    if rows is not None and (not isinstance(rows, dict) or ("sweep" in rows) == ("reuse" in rows)):
        raise ConfigError(f"{path}: rows", rows, "must be a mapping with either a 'sweep' (rows made of a sweep) or "
                          "a 'reuse' (another table's rows), not both")
    return rows, f"{path}: rows"


def _check_set(rows: dict, where: str) -> None:
    if not isinstance(rows.get("set") or [], list):
        raise ConfigError(f"{where}.set", rows["set"], "must be a list of overrides, e.g. [method=smora, method.r=16]")


def sweep_spec(table_id: str, conf_dir: Path = CONF_DIR) -> dict | None:
    """The table's ``rows:`` sweep (checked), or None for a table of experiment or reused rows."""
    rows, where = _rows_block(table_id, conf_dir)
    if rows is None or "sweep" not in rows:
        return None
    if set(rows) - set(ROW_KEYS) or not rows.get("sweep"):
        raise ConfigError(where, rows, f"a sweep must have a non-empty 'sweep' and optionally {ROW_KEYS[:2]}")
    if not isinstance(rows["sweep"], dict) or not all(isinstance(v, list) and v for v in rows["sweep"].values()):
        raise ConfigError(f"{where}.sweep", rows["sweep"], "must map each key to a non-empty list of values")
    _check_set(rows, where)
    return rows


def reuse_spec(table_id: str, conf_dir: Path = CONF_DIR) -> dict | None:
    """The table's ``rows:`` reuse of another table (checked), or None."""
    rows, where = _rows_block(table_id, conf_dir)
    if rows is None or "reuse" not in rows:
        return None
    if set(rows) - set(REUSE_KEYS) or not isinstance(rows["reuse"], str) or rows["reuse"] == table_id:
        raise ConfigError(where, rows, f"a reuse names another table ('reuse: smora-1') and optionally {REUSE_KEYS[1:]}")
    if not isinstance(rows.get("only") or [], list):
        raise ConfigError(f"{where}.only", rows["only"], "must be a list of the reused table's row names")
    _check_set(rows, where)
    return rows


def _reused_rows(table_id: str, conf_dir: Path, seen: tuple = ()) -> dict[str, list[str]]:
    """``{row: the overrides that move it into this table}`` for every row of a table, by name: ``[]`` for each
    experiment row of a table that reuses none; for one that reuses another's, ``table=<id>`` and its ``set`` for its
    own experiment rows, and for the other table's rows what moved them there with this table's after it."""
    own = {r: [] for r in experiment_rows(table_id, conf_dir)}
    rows = reuse_spec(table_id, conf_dir)
    if rows is None:
        return own
    source, where = rows["reuse"], f"{spec_path(table_id, conf_dir)}: rows.reuse"
    if source in seen:
        raise ConfigError(where, source, f"tables reuse each other in a circle: {' -> '.join([*seen, source])}")
    if spec_path(source, conf_dir) is None and not experiment_rows(source, conf_dir):
        raise ConfigError(where, source, "no such table")
    if sweep_spec(source, conf_dir) is not None:
        raise ConfigError(where, source, "is a sweep table; list its runs with a sweep of your own")
    theirs = _reused_rows(source, conf_dir, (*seen, table_id))
    names = {r.rsplit("/", 1)[-1]: r for r in theirs}
    only = [str(n) for n in rows.get("only") or names]
    missing = [n for n in only if n not in names]
    if missing:
        raise ConfigError(f"{spec_path(table_id, conf_dir)}: rows.only", missing,
                          f"not rows of {source}; its rows: {', '.join(names)}")
    mine = {r.rsplit("/", 1)[-1] for r in own}
    fixed = [f"table={table_id}", *(str(o) for o in rows.get("set") or [])]
    reused = {names[n]: _merged([*theirs[names[n]], *fixed]) for n in only if n not in mine}
    return dict(sorted({**reused, **{r: fixed for r in own}}.items(), key=lambda kv: kv[0].rsplit("/", 1)[-1]))


def _value(v) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def sweep_rows(rows: dict) -> list[str]:
    """The rows of a sweep, named as their runs are (``rankmix.config.run_key`` of Hydra's ``override_dirname``)."""
    from rankmix.config import run_key

    keys = sorted(rows["sweep"])   # Hydra sorts a run's overrides when it names its folder
    head = [f"experiment={rows['experiment']}"] if rows.get("experiment") else []
    return [run_key(",".join(sorted(head + [f"{k}={_value(v)}" for k, v in zip(keys, values, strict=True)])))
            for values in itertools.product(*(rows["sweep"][k] for k in keys))]


def base_overrides(table_id: str, rows: dict, conf_dir: Path = CONF_DIR) -> list[str]:
    """What every row of a sweep table composes from: the table, its starting row and its fixed overrides."""
    path = spec_path(table_id, conf_dir)
    out = [f"table={path.stem}"] + ([f"experiment={rows['experiment']}"] if rows.get("experiment") else [])
    return out + [str(o) for o in rows.get("set") or []]


def experiment_rows(table_id: str, conf_dir: Path = CONF_DIR) -> list[str]:
    """The experiment rows of a table: ``conf/experiment/<id>/*.yaml``, by experiment name (``smora-1/lora_64``)."""
    return sorted(f"{table_id}/{y.stem}" for y in (Path(conf_dir) / "experiment" / table_id).glob("*.yaml"))


def all_tables(conf_dir: Path = CONF_DIR) -> dict[str, list[str]]:
    """``{table id: [row, ...]}``: experiment rows, the reused rows included, by their experiment name
    (``smora-1/lora_64``), sweep rows by their run's name (``method.k=2``)."""
    out = {}
    for d in sorted((Path(conf_dir) / "experiment").glob("*-*/")):   # <paper>/ holds a paper's shared setups
        rows = experiment_rows(d.name, conf_dir)
        if rows:
            out[d.name] = rows
    for path in sorted((Path(conf_dir) / "table").glob("*.yaml")):
        spec = OmegaConf.load(path)
        if "rows" in spec:
            table_id = str(spec.get("id") or path.stem)
            if spec_path(table_id, conf_dir) != path:
                raise RankmixError(f"{path}: a table's yaml is named after its id: rename it to {table_id}.yaml")
            if sweep_spec(table_id, conf_dir) is None:
                out[table_id] = list(_reused_rows(table_id, conf_dir))
            elif table_id in out:
                raise RankmixError(f"{path}: table {table_id} has experiment rows under conf/experiment/ and a "
                                   "'rows:' sweep; keep one of them")
            else:
                out[table_id] = sweep_rows(sweep_spec(table_id, conf_dir))
    return dict(sorted(out.items()))


def row_name(table_id: str, row: str) -> str:
    """A row given by its short name (``lora_64``) or its full name, as ``all_tables`` names it."""
    rows = all_tables().get(table_id)
    if rows is None:
        raise RankmixError(f"unknown table {table_id!r}; known: {', '.join(all_tables())}")
    found = [r for r in rows if r == row or r.rsplit("/", 1)[-1] == row]
    if not found:
        raise RankmixError(f"table {table_id} has no row {row!r}; rows: {', '.join(r.rsplit('/', 1)[-1] for r in rows)}")
    return found[0]


def row_overrides(table_id: str, row: str, conf_dir: Path = CONF_DIR) -> list[str]:
    """The overrides that compose one row (``row`` as ``all_tables`` names it)."""
    if sweep_spec(table_id, conf_dir) is not None:
        return key_overrides(table_id, row, conf_dir) or []
    return _experiment_overrides(row, _reused_rows(table_id, conf_dir).get(row, []), conf_dir)


def _experiment_overrides(row: str, moved: list[str], conf_dir: Path) -> list[str]:
    """An experiment row with what moves it into its table, as the table's multirun runs it (the same run name and
    folder: the moving overrides are kept out of the name)."""
    return [f"experiment={row}", *moved, *([_excluded(moved, conf_dir)] if moved else [])]


def key_overrides(table_id: str, key: str, conf_dir: Path = CONF_DIR) -> list[str] | None:
    """The overrides that compose the run filed as ``results/<id>/runs/<key>.json`` (a row, then any overrides
    its key adds, e.g. ``seed=1``); None when the key cannot be read back (a long key cut to a hash, a row that is
    gone)."""
    if "--" in key:
        return None
    head, *rest = key.split(",")
    rows = sweep_spec(table_id, conf_dir)
    if rows is None:
        reused = _reused_rows(table_id, conf_dir)   # this table's folder, and the rows it reuses
        full = {r.rsplit("/", 1)[-1]: r for r in reused}
        if head not in full:
            return None
        return [*_experiment_overrides(full[head], reused[full[head]], conf_dir), *rest]
    items = key.split(",")
    if rows.get("experiment"):
        if head != rows["experiment"].rsplit("/", 1)[-1]:
            return None
        items = rest
    return base_overrides(table_id, rows, conf_dir) + items


def multirun_overrides(overrides: list[str]) -> list[str]:
    """The user's overrides as a table's multirun must pass them: ``key=value`` as ``++key=value``.

    Hydra composes a multirun's default config (``task=generated``) before any row, and that config lacks the
    keys only a row's task has (``task.datamodule.source.test_file``); ``++`` sets a key whether or not
    the config has it. Group choices (``trainer=gpu``), ``hydra.*`` and already prefixed overrides pass as
    they are; the run key drops the prefix, so the runs are the same as one-by-one runs.
    """
    out = []
    for o in overrides:
        key = o.split("=", 1)[0]
        plain = "=" in o and "." in key and not key.startswith(("+", "~", "hydra."))
        out.append(f"++{o}" if plain else o)
    return out


def reproduce_command(table_id: str, overrides: list[str], conf_dir: Path = CONF_DIR) -> list[str]:
    """The multirun of a table's rows: ``python -m rankmix.train -m <rows> <overrides>`` (without the
    interpreter)."""
    spec, rows = table_spec(table_id, conf_dir), sweep_spec(table_id, conf_dir)
    if rows is None:   # experiment rows, and reused ones: one multirun, every row moved by the same overrides
        groups = {}
        for row, moved in _reused_rows(table_id, conf_dir).items():
            groups.setdefault(tuple(moved), []).append(row)
        if len(groups) > 1:
            raise ConfigError(f"{spec_path(table_id, conf_dir)}: rows", table_id, "its rows need different "
                              "overrides to join this table, so one multirun cannot run them; reuse one table")
        ((moved, rows_), ) = groups.items()
        cmd = ["-m", "rankmix.train", "-m", *_experiment_overrides(",".join(rows_), list(moved), conf_dir)]
    else:
        cmd = ["-m", "rankmix.train", "-m", *base_overrides(table_id, rows, conf_dir),
               *(f"{k}={','.join(_value(v) for v in rows['sweep'][k])}" for k in sorted(rows["sweep"])),
               _excluded(["table", *(rows.get("set") or [])], conf_dir)]
    cmd += multirun_overrides(overrides)
    if spec.get("seeds") and not any(o.startswith("seed=") for o in overrides):
        cmd.append("seed=" + ",".join(str(s) for s in spec["seeds"]))
    if spec.get("launcher") and not any(o.startswith("hydra/launcher=") for o in overrides):
        cmd.append(f"hydra/launcher={spec['launcher']}")
    return cmd


def _excluded(fixed, conf_dir: Path) -> str:
    """The override keeping a table's fixed overrides (the same for every row) out of its runs' names."""
    excluded = OmegaConf.load(Path(conf_dir) / "train.yaml").hydra.job.config.override_dirname.exclude_keys
    keys = [str(o).split("=", 1)[0].lstrip("+~") for o in fixed]
    return "hydra.job.config.override_dirname.exclude_keys=[" + ",".join([*excluded, *keys]) + "]"


def _merged(overrides: list[str]) -> list[str]:
    """Overrides with a later one of the same key replacing an earlier one (as Hydra applies them)."""
    out = {}
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        out.pop(key, None)
        out[key] = o
    return list(out.values())


def renamed_override(arguments: list[str], conf_dir: Path = CONF_DIR) -> str | None:
    """One line naming the current form of a command-line override whose old form is gone, else None. A table has
    one name: its yaml is ``conf/table/<id>.yaml`` (``table=smora_1`` is now ``table=smora-1``) and its rows
    ``conf/experiment/<id>/`` (``experiment=smora/1/lora_64`` is now ``experiment=smora-1/lora_64``); a row that
    reuses another table's run is named with its table (``experiment=smora/5/hydralora`` is now row ``hydralora``
    of ``conf/table/smora-5.yaml``)."""
    for argument in arguments:
        key, equals, value = argument.partition("=")
        if not equals:
            continue
        if key.lstrip("+~") == "table":
            new = value.replace("_", "-")
            if new != value and spec_path(new, conf_dir):
                return f"{argument} is now {key}={new}: a table's yaml is named by its id (conf/table/<id>.yaml)"
        old = re.fullmatch(r"([a-z]+)/([a-z0-9]+)/(\w+)", value) if key.lstrip("+~") == "experiment" else None
        if old:
            table_id, row = f"{old[1]}-{old[2]}", old[3]
            rows = {r.rsplit("/", 1)[-1]: r for r in all_tables(conf_dir).get(table_id, [])}
            if rows.get(row) == f"{table_id}/{row}":
                return (f"{argument} is now {key}={table_id}/{row}: a table's rows are named by its id "
                        "(conf/experiment/<id>/<row>.yaml)")
            if row in rows:
                return (f"{argument} is now row {row} of table {table_id}, reusing {rows[row]} "
                        f"(conf/table/{table_id}.yaml): make reproduce-table-{table_id} runs it, "
                        f"make show-row TABLE={table_id} ROW={row} shows it")
    return None
