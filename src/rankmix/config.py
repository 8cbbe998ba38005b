"""Config handling shared by every entry point: scale selection, validation, run identity.

Scale is a Hydra config group (``conf/scale/{tiny,paper}.yaml``). What a scale changes in a backbone, task or
table comes through the defaults list (``conf/scaled/<group>/<scale>/<option>.yaml``, merged over
``conf/<group>/<option>.yaml``); a paper row's scale-specific values read ``${by_scale:<tiny value>,<paper value>}``
(Hydra cannot interpolate the scale into the nested defaults of an experiment). A key has one spelling at either
scale, and ``python -m rankmix.train --cfg job --resolve`` shows what a run will use.
"""

from __future__ import annotations

import hashlib
import json
import re

from omegaconf import DictConfig, OmegaConf, open_dict

from rankmix.errors import ConfigError
from rankmix.locations import CONF_DIR

SCALES = ("tiny", "paper")
# What does not change a run's numbers, in one place (conf/train.yaml's run-key exclusions are tested against it):
# EXECUTION: where and how a run executes; in neither hash, and not in the run key when given on the command line.
EXECUTION = ("paths", "logger", "callbacks", "hydra", "rerun", "trainer.accelerator", "trainer.devices",
             "trainer.num_nodes", "trainer.strategy", "trainer.enable_progress_bar", "trainer.log_every_n_steps",
             "backbone.activation_checkpointing", "backbone.fsdp_blocks",   # memory and sharding, not the numbers
             "trainer.preflight")   # the memory check before loading (rankmix.rehearsal.preflight)
# LABELS: how a run is named and filed; in config_hash (its result file), not in computation_hash, so a run listed
# in two tables (SMoRA Tab. 1 and its full Tab. 5) is trained once.
LABELS = ("table", "optimized_metric", "backbone.name", "backbone.paper_label")
# keys of ``trainer`` that are rankmix's, not arguments of Lightning's Trainer: the memory check before loading
# (``++trainer.preflight=false``, ``rankmix.rehearsal.preflight``)
OWN_TRAINER_KEYS = ("preflight",)
MAX_KEY_LEN = 120
TABLE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def by_scale(tiny, paper, *, _root_):
    """``${by_scale:<tiny>,<paper>}``: the value for the run's ``scale``."""
    scale = _root_.get("scale")
    if scale not in SCALES:
        raise ConfigError("scale", scale, f"must be one of {', '.join(SCALES)}")
    return tiny if scale == "tiny" else paper


def check_no_scale_blocks(cfg: DictConfig) -> None:
    """Refuse a ``tiny:``/``paper:`` block left in a config node (the suite before scales were a config group
    merged them; now nothing reads them, so the run would silently ignore the values)."""
    for group in ("backbone", "task", "optimizer", "trainer", "method", "table"):
        node = cfg.get(group)
        for scale in SCALES:
            if isinstance(node, DictConfig) and scale in node:
                raise ConfigError(f"{group}.{scale}", "{...}", f"scale blocks are not read: set {group}.<key> "
                                  f"(one spelling at either scale), or put the values in "
                                  f"conf/scaled/{group}/{scale}/<option>.yaml, or use ${{by_scale:<tiny>,<paper>}}")


def digest(obj, length: int = 16) -> str:
    """The suite's one content hash: SHA-256 of ``obj`` as canonical JSON (sorted keys, ``str()`` for values JSON
    lacks), cut to ``length`` hex digits. Config hashes, prepared-data and cache keys, stand-in names use it."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:length]


def _without(data: dict, keys: tuple[str, ...]) -> dict:
    """``data`` (a plain config) without the dotted ``keys``."""
    for key in keys:
        *parents, leaf = key.split(".")
        node = data
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return data


def computation_hash(config: dict) -> str:
    """Hash of a resolved config (a run JSON's ``config``) without how it executes or how it is filed."""
    return digest(_without(json.loads(json.dumps(config, default=str)), EXECUTION + LABELS))


def config_hash(cfg: DictConfig) -> str:
    """Hash of everything that determines a run's numbers and where its result is filed (not paths, loggers or
    device layout)."""
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.pop("hydra", None)
    return digest(_without(OmegaConf.to_container(cfg, resolve=True), EXECUTION))


def run_key(override_dirname: str) -> str:
    """A file-name-safe run name from Hydra's ``override_dirname`` (``default`` when empty).

    ``experiment=<table>/<row>`` becomes ``<row>``: the table already names the folder.
    The row's name comes first, so a key cut to its head still says which row it is; ``+``/``++`` are dropped
    (``++k=v`` and ``k=v`` configure the same run). Every ``paths.*`` key is left out (where the weights and data
    folders are does not make another run: ``paths.models.<backbone>=DIR``), beside Hydra's ``exclude_keys``.
    """
    rows, parts = [], []
    for item in filter(None, override_dirname.split(",")):
        key, _, value = item.partition("=")
        if key.lstrip("+~") == "experiment":
            rows.append(value.rsplit("/", 1)[-1])
        elif key.lstrip("+~").startswith("paths."):
            continue
        else:
            parts.append(f"{key.lstrip('+')}={_canonical(value)}" if "=" in item else item.lstrip("+"))
    key = re.sub(r"[^A-Za-z0-9_.,=+-]", "-", ",".join(rows + parts) or "default")
    if len(key) > MAX_KEY_LEN:  # file names are limited to 255 bytes: keep a readable head and a hash
        key = f"{key[:MAX_KEY_LEN - 17]}--{hashlib.sha256(key.encode()).hexdigest()[:15]}"
    return key


def _canonical(value: str) -> str:
    """A float written as a sweep writes it (``3e-3`` and ``0.003`` are the same run); other values as given."""
    if re.fullmatch(r"[+-]?(\d+\.\d*|\.\d+|\d+(\.\d*)?[eE][+-]?\d+)", value):
        return repr(float(value))
    return value


def safe_name(name) -> str:
    """A folder name from ``table.id`` that cannot leave its parent (``../x`` becomes ``..-x``; validate refuses it)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", str(name)).lstrip(".") or "-"


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("run_key"):
        OmegaConf.register_new_resolver("run_key", run_key)
    if not OmegaConf.has_resolver("safe_name"):
        OmegaConf.register_new_resolver("safe_name", safe_name)
    if not OmegaConf.has_resolver("by_scale"):
        OmegaConf.register_new_resolver("by_scale", by_scale)


def check_table_id(cfg: DictConfig) -> None:
    """``table.id`` names folders under results/ and runs/: a plain name, checked before anything is written."""
    tid = cfg.table.get("id")
    _check(isinstance(tid, str) and TABLE_ID.fullmatch(tid) is not None and ".." not in tid,
           "table.id", tid, "must be a plain name (letters, digits, '_', '-', '.'): it names folders under "
           "results/ and runs/")


def _check(cond: bool, key: str, value, problem: str) -> None:
    if not cond:
        raise ConfigError(key, value, problem)


def validate(cfg: DictConfig) -> None:
    """Checks that need no model: fail before any work with one line naming the key."""
    from rankmix.adapters import METHODS, method_names, method_options
    from rankmix.adapters.inject import INJECTION_KEYS

    _check(cfg.get("scale") in SCALES, "scale", cfg.get("scale"), f"must be one of {', '.join(SCALES)}")
    check_no_scale_blocks(cfg)
    m = cfg.method
    _check(m.get("name") in method_names(), "method.name", m.get("name"),
           f"unknown method; registered: {', '.join(method_names())}")
    allowed = set(method_options(m.name)) | set(INJECTION_KEYS)
    for key in m:
        _check(key in allowed, f"method.{key}", m[key], f"not an option of {m.name}; options: {', '.join(sorted(allowed))}")
    for key in ("r", "k", "num_experts"):
        if key in m:
            v = m[key]
            _check(isinstance(v, int) and not isinstance(v, bool) and v > 0, f"method.{key}", v, "must be a positive integer")
    if m.name in METHODS:  # the method's own rules (e.g. SMoRA's k <= r)
        try:
            METHODS[m.name].check_options(OmegaConf.to_container(m, resolve=True))
        except ConfigError as e:
            raise e.prefixed("method") from None
    check_table_id(cfg)
    opt = cfg.optimizer
    _check(isinstance(opt.lr, (int, float)) and opt.lr > 0, "optimizer.lr", opt.lr, "must be a positive number")
    _check(cfg.trainer.max_epochs is not None and cfg.trainer.max_epochs >= 0, "trainer.max_epochs",
           cfg.trainer.max_epochs, "must be a non-negative integer")


def drop_table_rows(cfg: DictConfig) -> None:
    """Remove ``table.rows``: it says how a table is made (``rankmix.table_rows``), not how a run computes, so it is
    not part of a run's config or hash, and adding a row to a table leaves its other runs current."""
    if "rows" in cfg.get("table", {}):
        with open_dict(cfg):
            cfg.table.pop("rows")


def check_trainer_keys(cfg: DictConfig) -> None:
    """Every ``trainer.*`` key is an argument of Lightning's ``Trainer`` (a typo such as ``++trainer.max_stepz``
    is refused in one line, with the nearest argument, instead of failing inside Lightning)."""
    import difflib
    import inspect

    from lightning.pytorch import Trainer

    known = set(inspect.signature(Trainer.__init__).parameters) - {"self"}
    for key in cfg.trainer:
        if key != "_target_" and key not in known and key not in OWN_TRAINER_KEYS:
            near = difflib.get_close_matches(key, sorted(known), n=1)
            raise ConfigError(f"trainer.{key}", cfg.trainer[key], "not an argument of Lightning's Trainer"
                              + (f"; did you mean trainer.{near[0]}?" if near else ""))


def compose_config(overrides: list[str], conf_dir: str | None = None, *, validated: bool = True,
                   keep_hydra: bool = False) -> DictConfig:
    """The one way rankmix composes a config outside the entry: ``conf/train.yaml`` with ``overrides`` as
    ``python -m rankmix.train <overrides>`` would, Hydra's runtime set (the run's folder, named from it, resolves);
    checked by ``validate`` unless ``validated`` is false, and without the ``hydra`` node unless ``keep_hydra``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    register_resolvers()
    conf_dir = conf_dir or str(CONF_DIR)
    with initialize_config_dir(config_dir=conf_dir, version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg.copy())  # the run's folder is named from the Hydra config
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = OmegaConf.select(cfg, "hydra.run.dir")
    HydraConfig.instance().set_config(cfg.copy())   # a copy: Hydra makes what it holds read-only
    drop_table_rows(cfg)
    if validated:
        validate(cfg)
    if not keep_hydra:
        with open_dict(cfg):
            cfg.pop("hydra")
    return cfg


def compose_run(overrides: list[str], conf_dir: str | None = None) -> DictConfig:
    """The config ``python -m rankmix.train <overrides>`` would run, validated, without its ``hydra`` node (what a
    run's result JSON records as its ``config``)."""
    return compose_config(overrides, conf_dir)
