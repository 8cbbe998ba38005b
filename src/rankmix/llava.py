"""A LLaVA-1.5 model in transformers' classes, composed as XTuner's ``LLaVAModel`` composes it (MoSLoRA §4.2, Tab. 5).

``LlavaForConditionalGeneration`` holds the same three parts as XTuner's model, wired the same way: the CLIP vision
tower's second-to-last hidden states without the [CLS] (``vision_feature_layer: -2``, ``select_strategy:
default``; XTuner's ``visual_select_layer=-2`` and ``[:, 1:]``), a two-layer MLP projector (Linear, GELU, Linear,
with biases; XTuner's ``ProjectorModel`` of depth 2) and the language model, whose word embedding of the image token
is replaced by the projected patches. XTuner's own export to this class (``LLaVAModel.to_huggingface_llava``) maps
``projector.model.0`` / ``model.2`` to ``multi_modal_projector.linear_1`` / ``linear_2``, which is how the released
pretrained projector (``backbone.projector``) is read here.

A backbone config (``kind: llava``) names its three parts:

- ``llm``: the causal LM, ``source: config`` (random init from ``init_seed``) or ``pretrained`` (``name_or_path``;
  ``quantization``: a ``BitsAndBytesConfig`` mapping for QLoRA's 4-bit base, CUDA only). A Llama or any LLM
  transformers implements fits, and InternLM2 through ``rankmix.internlm2``; an LLM in its repository's code
  (``trust_remote_code``) is refused: transformers' LLaVA classes need its decoder and head apart;
- ``vision``: a ``CLIPVisionModel``, the same two sources;
- ``projector``: ``name_or_path`` + ``file`` (an XTuner checkpoint, ``.pth`` or ``.safetensors``, whose projector
  keys are ``[projector.]model.{0,2}.{weight,bias}``), or ``init_seed`` (random init: the tiny scale).

At paper scale each pretrained part declares ``path_key`` (its ``paths.models.<name>`` key) and the LLM and vision
tower their ``architecture``, checked before their weights load (``rankmix.backbones.check_architecture``); a
projector whose shapes do not join the two is refused before it is loaded into the model (``check_projector``).

The tokenizer gains the special token ``<image>``; the language model's embeddings grow by that row, which the image
features always replace (it never reaches the loss or the output: generation suppresses it). The frozen parts are in
``dtype``; the projector, trained whole, and the adapters are fp32 (mixed precision computes in half).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from rankmix.backbones import check_architecture, clip_vision_config, not_loadable, resolve_name
from rankmix.errors import ConfigError

IMAGE_TOKEN = "<image>"


def add_image_token(tokenizer) -> int:
    """The id of ``<image>`` in ``tokenizer``, added as a special token when it is not there yet."""
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    return tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)


def image_processor(spec: Mapping):
    """CLIP's image processor: the vision tower's own (``pretrained``), or CLIP's defaults at ``size`` (``config``)."""
    from transformers import CLIPImageProcessor

    if spec.get("source") == "pretrained":
        name = resolve_name("backbone.vision.name_or_path", spec["name_or_path"])
        try:
            return CLIPImageProcessor.from_pretrained(name)
        except (OSError, ValueError) as e:
            raise not_loadable("backbone.vision.name_or_path", name, e, spec.get("path_key")) from None
    size = int(spec["config"]["image_size"])
    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def _seeded(seed: int, make):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


def build_vision(spec: Mapping, dtype: torch.dtype) -> nn.Module:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    if spec.get("source") == "config":
        config = CLIPVisionConfig(**{k: v for k, v in spec["config"].items() if k != "model_type"})
        return _seeded(int(spec.get("init_seed", 0)), lambda: CLIPVisionModel(config)).to(dtype)
    if spec.get("source") == "pretrained":
        name = resolve_name("backbone.vision.name_or_path", spec["name_or_path"])
        check_architecture("backbone.vision.name_or_path", name, spec, read=clip_vision_config())
        try:
            return CLIPVisionModel.from_pretrained(name, dtype=dtype)
        except (OSError, ValueError) as e:
            raise not_loadable("backbone.vision.name_or_path", name, e, spec.get("path_key")) from None
    raise ConfigError("backbone.vision.source", spec.get("source"), "must be config or pretrained")


def quantization_config(spec: Mapping | None):
    """``BitsAndBytesConfig`` from the ``backbone.llm.quantization`` mapping (dtype names as strings); None without
    one. 4-bit loading needs bitsandbytes and a CUDA device: refused with the fix otherwise."""
    if not spec:
        return None
    if not torch.cuda.is_available():
        raise ConfigError("backbone.llm.quantization", dict(spec),
                          "4-bit loading (QLoRA) needs a CUDA GPU, and this machine has none: run this row on a GPU, "
                          "or drop the key (~backbone.llm.quantization) to train the unquantized base")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError("backbone.llm.quantization", dict(spec),
                          "4-bit loading needs bitsandbytes: pip install -e '.[qlora]'") from None
    from transformers import BitsAndBytesConfig

    kwargs = {k: (getattr(torch, v) if k.endswith("_dtype") else v) for k, v in spec.items()}
    return BitsAndBytesConfig(**kwargs)


def build_llm(spec: Mapping, tokenizer, dtype: torch.dtype) -> nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    if spec.get("source") == "config":
        cfg = dict(spec["config"])
        config = AutoConfig.for_model(cfg.pop("model_type"), **cfg, vocab_size=len(tokenizer),
                                      pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                                      eos_token_id=tokenizer.eos_token_id)
        return _seeded(int(spec.get("init_seed", 0)), lambda: AutoModelForCausalLM.from_config(config)).to(dtype)
    if spec.get("source") == "pretrained":
        name = resolve_name("backbone.llm.name_or_path", spec["name_or_path"])
        check_architecture("backbone.llm.name_or_path", name, spec)
        quant = quantization_config(spec.get("quantization"))
        extra = {"quantization_config": quant} if quant is not None else {}
        try:
            llm = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, trust_remote_code=bool(
                spec.get("trust_remote_code", False)), **extra)
        except (OSError, ValueError) as e:
            raise not_loadable("backbone.llm.name_or_path", name, e, spec.get("path_key")) from None
        if quant is not None:  # QLoRA's step, as XTuner's _prepare_llm_for_lora: the unquantised weights in fp32
            from peft import prepare_model_for_kbit_training

            llm = prepare_model_for_kbit_training(llm, use_gradient_checkpointing=False)
        return llm
    raise ConfigError("backbone.llm.source", spec.get("source"), "must be config or pretrained")


def projector_state(spec: Mapping) -> dict[str, torch.Tensor] | None:
    """The pretrained projector's ``linear_{1,2}`` tensors from an XTuner checkpoint; None for a random init."""
    if not spec.get("name_or_path"):
        return None
    key = "backbone.projector.name_or_path"
    root, file = Path(resolve_name(key, spec["name_or_path"])), spec.get("file")
    if not root.exists():
        try:
            from huggingface_hub import hf_hub_download

            root = Path(hf_hub_download(spec["name_or_path"], file)).parent
        except Exception as e:  # noqa: BLE001 - offline, unknown repo, missing file: one message
            raise not_loadable(key, spec["name_or_path"], e, spec.get("path_key")) from None
    path = root / file if root.is_dir() else root
    if not path.is_file():
        raise ConfigError("backbone.projector.file", str(path), "not found: name the checkpoint file in the directory "
                          "(XTuner's pretrain stage writes iter_<n>.pth or epoch_<n>.pth)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=False)
        state = state.get("state_dict", state)
    mapping = {"model.0": "linear_1", "model.2": "linear_2"}  # XTuner's PROJECTOR_MAPPING
    out = {}
    for k, v in state.items():
        short = k.removeprefix("projector.")
        layer, _, param = short.rpartition(".")
        if layer in mapping:
            out[f"{mapping[layer]}.{param}"] = v
    needed = {f"linear_{i}.{p}" for i in (1, 2) for p in ("weight", "bias")}
    if set(out) != needed:
        raise ConfigError("backbone.projector.file", str(path),
                          f"holds no XTuner projector (keys projector.model.0/2.weight/bias); found {sorted(state)[:4]}")
    return out


def check_projector(state: dict[str, torch.Tensor], projector: nn.Module, spec: Mapping) -> None:
    """Refuse a pretrained projector whose shapes do not join this vision tower to this LLM (one pretrained for
    another backbone), with one line naming both shapes and ``spec.path_key``, the key of the projector's folder."""
    wrong = [k for k, v in projector.state_dict().items() if tuple(state[k].shape) != tuple(v.shape)]
    if not wrong:
        return
    has = ", ".join(f"{k} {list(state[k].shape)}" for k in wrong)
    needs = ", ".join(f"{k} {list(projector.state_dict()[k].shape)}" for k in wrong)
    fix = f"set {spec['path_key']} to" if spec.get("path_key") else "use"
    raise ConfigError("backbone.projector.name_or_path", spec.get("name_or_path"),
                      f"holds a projector of other widths ({has}) than this vision tower and LLM need ({needs}); "
                      f"{fix} the pretrain-stage folder of this backbone's LLM and vision tower")


def build_llava(spec: Mapping, tokenizer) -> nn.Module:
    """``LlavaForConditionalGeneration`` from ``spec``'s three parts (module docstring); ``tokenizer`` gains ``<image>``."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    dtype = getattr(torch, spec.get("dtype", "float32"))
    image_token_id = add_image_token(tokenizer)
    vision = build_vision(spec["vision"], dtype)
    llm = build_llm(spec["llm"], tokenizer, dtype)
    if llm.is_remote_code() or not hasattr(llm, "lm_head"):
        raise ConfigError("backbone.llm.name_or_path", spec["llm"].get("name_or_path"),
                          f"a {llm.config.model_type} model in its repository's code does not fit transformers' LLaVA "
                          "classes: use an LLM transformers implements (Llama, ...) or rankmix does (InternLM2), "
                          "without trust_remote_code")
    if llm.get_input_embeddings().num_embeddings < len(tokenizer):
        llm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    patches = (vision.config.image_size // vision.config.patch_size) ** 2
    config = LlavaConfig(vision_config=vision.config, text_config=llm.config, image_token_id=image_token_id,
                         image_seq_length=patches, vision_feature_layer=-2, vision_feature_select_strategy="default",
                         projector_hidden_act="gelu", multimodal_projector_bias=True)
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    model.model.vision_tower = vision
    model.model.language_model = llm.model
    model.lm_head = llm.lm_head
    projector = model.model.multi_modal_projector.to_empty(device="cpu")
    state = projector_state(spec.get("projector") or {})
    if state is None:
        def init():
            for layer in (projector.linear_1, projector.linear_2):
                layer.reset_parameters()
        _seeded(int((spec.get("projector") or {}).get("init_seed", 0)), init)
    else:
        check_projector(state, projector, spec.get("projector") or {})
        projector.load_state_dict(state)
    projector.float()  # trained whole: fp32 weights under mixed precision (XTuner's DeepSpeed keeps fp32 masters)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model
