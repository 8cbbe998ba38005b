"""Stand-ins of the paper's backbones: local directories that ``from_pretrained`` loads like the real ones.

A stand-in keeps its architecture's real config.json values (vocabulary, positions, norms, rope,
special-token ids, checkpoint dtype) but has ``LAYERS`` layers and every width divided by ``WIDTH_DIVISOR``
(head counts kept, so head_dim shrinks), so a training step takes seconds on a CPU. Its weights are random
(seed ``SEED``), saved as safetensors in the real checkpoint dtype; the checkpoint holds the real repo's model
class (``architecture``), which the suite loads through ``auto_class``. Its tokenizer has the real class, the
special tokens at their real ids, the real bos/eos, padding and chat-template behaviour, and BPE merges
trained on a small built-in English corpus; ids below a special token that the corpus does not fill are
unreachable filler entries. The ViT stand-ins get the real ``preprocessor_config.json``, not a tokenizer.

A stand-in declares what it stands in for: its subfolder ``rankmix.backbones.STANDIN_DIR`` holds the real model's
config.json (the real values, as transformers writes them). The architecture check before a backbone's weights load
(``rankmix.backbones.check_architecture``) reads that one, so a row run on a stand-in is checked against the model
it stands in for: a 7b stand-in given to a 13b row is refused as the 7b weights would be.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import AutoConfig, PretrainedConfig

from rankmix import internlm2
from rankmix.backbones import STANDIN_DIR
from rankmix.config import digest
from rankmix.errors import RankmixError
from rankmix.rehearsal import pipelines
from rankmix.rehearsal.standin_basics import (
    LAYERS,
    SEED,
    WIDTH_DIVISOR,
    WIDTHS,
    build_once,
    corpus,
    layout_vocab,
    train_bpe,
)

NO_LENGTH_LIMIT = int(1e30)  # the Llama repos' model_max_length: 1000000000000000019884624838656


@dataclass(frozen=True)
class Standin:
    """One backbone. ``config``: its real config.json values; ``hidden``/``ffn``: the model and feed-forward
    width keys (divided by ``WIDTH_DIVISOR``); ``heads``: head-count keys (each must divide every ``hidden``
    width); ``layers``: depth keys; ``generation``: its generation_config.json; ``image_processor``: its
    preprocessor_config.json; ``tokenizer``: the tokenizer kind (a key of ``TOKENIZERS``); ``repo_code``: config.json
    keys of a repository-code model, written as they are (its config.json is then the real values, not
    transformers' serialisation of them)."""

    architecture: str
    auto_class: str
    config: dict
    hidden: tuple[str, ...]
    ffn: tuple[str, ...]
    heads: tuple[str, ...]
    layers: tuple[str, ...]
    tokenizer: str | None = None
    generation: dict = field(default_factory=dict)
    image_processor: dict = field(default_factory=dict)
    repo_code: dict = field(default_factory=dict)


def _llama2(hidden: int, intermediate: int, layers: int, heads: int) -> Standin:
    return Standin(
        "LlamaForCausalLM", "AutoModelForCausalLM",
        {"model_type": "llama", "hidden_size": hidden, "intermediate_size": intermediate,
         "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": heads,
         "vocab_size": 32000, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
         "rope_theta": 10000.0,  # absent from the Llama-2 config.json, where the LlamaConfig default applies
         "hidden_act": "silu", "initializer_range": 0.02, "pretraining_tp": 1, "rope_scaling": None,
         "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False, "use_cache": True,
         "torch_dtype": "float16"},
        hidden=("hidden_size",), ffn=("intermediate_size",), heads=("num_attention_heads",),
        layers=("num_hidden_layers",), tokenizer="llama2",
        # generation_config.json (pad 0 there although the tokenizer has no pad token)
        generation={"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "do_sample": True,
                    "temperature": 0.6, "top_p": 0.9, "max_length": 4096},
    )


def _llama3_instruct() -> Standin:
    return Standin(
        "LlamaForCausalLM", "AutoModelForCausalLM",
        {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
         "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
         "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "rope_scaling": None,
         "hidden_act": "silu", "initializer_range": 0.02, "pretraining_tp": 1, "attention_bias": False,
         "attention_dropout": 0.0, "bos_token_id": 128000, "eos_token_id": 128009,
         "tie_word_embeddings": False, "use_cache": True, "torch_dtype": "bfloat16"},
        hidden=("hidden_size",), ffn=("intermediate_size",),
        heads=("num_attention_heads", "num_key_value_heads"), layers=("num_hidden_layers",),
        tokenizer="llama3",
        generation={"bos_token_id": 128000, "eos_token_id": [128001, 128009], "do_sample": True,
                    "temperature": 0.6, "top_p": 0.9, "max_length": 4096},
    )


def _internlm2_chat_7b() -> Standin:
    """InternLM2-chat-7B: its config.json values (``rope_scaling`` dynamic NTK, factor 2); the checkpoint in the repo's
    key layout (``attention.wqkv``, ``feed_forward.w1``, ``output``), read by ``rankmix.internlm2``."""
    return Standin(
        "InternLM2ForCausalLM", "AutoModelForCausalLM",
        {"model_type": "internlm2", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
         "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 92544, "max_position_embeddings": 32768,
         "rms_norm_eps": 1e-5, "rope_theta": 1000000, "rope_scaling": {"type": "dynamic", "factor": 2.0},
         "hidden_act": "silu", "initializer_range": 0.02, "bias": False, "bos_token_id": 1, "eos_token_id": 2,
         "pad_token_id": 2, "tie_word_embeddings": False, "use_cache": True, "torch_dtype": "bfloat16"},
        hidden=("hidden_size",), ffn=("intermediate_size",),
        heads=("num_attention_heads", "num_key_value_heads"), layers=("num_hidden_layers",),
        tokenizer="internlm2",
        # config.json's keys for the repository's code, which the suite does not run (rankmix.internlm2)
        repo_code={"attn_implementation": "eager", "auto_map": {
            "AutoConfig": "configuration_internlm2.InternLM2Config",
            "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM",
            "AutoModel": "modeling_internlm2.InternLM2ForCausalLM"}},
    )


def _vit(hidden: int, layers: int, heads: int, intermediate: int) -> Standin:
    return Standin(
        "ViTModel", "AutoModel",
        {"model_type": "vit", "hidden_size": hidden, "num_hidden_layers": layers,
         "num_attention_heads": heads, "intermediate_size": intermediate, "hidden_act": "gelu",
         "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "initializer_range": 0.02,
         "layer_norm_eps": 1e-12, "image_size": 224, "patch_size": 16, "num_channels": 3, "qkv_bias": True,
         "torch_dtype": "float32"},  # the config.json names no dtype: the checkpoint is float32
        hidden=("hidden_size",), ffn=("intermediate_size",), heads=("num_attention_heads",),
        layers=("num_hidden_layers",),
        image_processor={"do_resize": True, "size": {"height": 224, "width": 224}, "resample": 2,
                         "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
                         "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]},
    )


def _clip_vision_large_336() -> Standin:
    """CLIP ViT-L/14 at 336 px: the vision tower of ``openai/clip-vit-large-patch14-336`` (whose checkpoint is a
    whole ``CLIPModel``; rankmix reads only its vision tower, ``CLIPVisionModel``), with its preprocessor_config.json."""
    return Standin(
        "CLIPVisionModel", "AutoModel",
        {"model_type": "clip_vision_model", "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
         "num_attention_heads": 16, "image_size": 336, "patch_size": 14, "num_channels": 3, "projection_dim": 768,
         "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "attention_dropout": 0.0, "dropout": 0.0,
         "initializer_range": 0.02, "initializer_factor": 1.0, "torch_dtype": "float32"},
        hidden=("hidden_size",), ffn=("intermediate_size",), heads=("num_attention_heads",),
        layers=("num_hidden_layers",),
        image_processor={"image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": 336,
                         "resample": 3, "do_center_crop": True, "crop_size": 336, "do_rescale": True,
                         "rescale_factor": 1 / 255, "do_normalize": True,
                         "image_mean": [0.48145466, 0.4578275, 0.40821073],
                         "image_std": [0.26862954, 0.26130258, 0.27577711]},
    )


def _roberta(hidden: int, layers: int, heads: int, intermediate: int) -> Standin:
    return Standin(
        "RobertaForMaskedLM", "AutoModel",  # AutoModel reads the RobertaModel inside (the pooler is new)
        {"model_type": "roberta", "hidden_size": hidden, "num_hidden_layers": layers,
         "num_attention_heads": heads, "intermediate_size": intermediate, "vocab_size": 50265,
         "max_position_embeddings": 514, "type_vocab_size": 1, "layer_norm_eps": 1e-5, "hidden_act": "gelu",
         "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "initializer_range": 0.02,
         "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2, "torch_dtype": "float32"},
        hidden=("hidden_size",), ffn=("intermediate_size",), heads=("num_attention_heads",),
        layers=("num_hidden_layers",), tokenizer="roberta",
    )


def _gpt2(n_embd: int, n_layer: int, n_head: int) -> Standin:
    # The config.json's summary_* and task_specific_params (classification head, pipeline defaults) are left
    # out; n_inner is unset there, so the MLP is 4 * n_embd.
    return Standin(
        "GPT2LMHeadModel", "AutoModelForCausalLM",
        {"model_type": "gpt2", "n_embd": n_embd, "n_layer": n_layer, "n_head": n_head, "n_positions": 1024,
         "vocab_size": 50257, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
         "initializer_range": 0.02, "attn_pdrop": 0.1, "embd_pdrop": 0.1, "resid_pdrop": 0.1,
         "bos_token_id": 50256, "eos_token_id": 50256, "tie_word_embeddings": True, "torch_dtype": "float32"},
        hidden=("n_embd",), ffn=(), heads=("n_head",), layers=("n_layer",), tokenizer="gpt2",
        generation={"bos_token_id": 50256, "eos_token_id": 50256},
    )


def _bart_base() -> Standin:
    return Standin(
        "BartModel", "AutoModelForSeq2SeqLM",  # the repo's checkpoint is a BartModel (the LM head is tied)
        {"model_type": "bart", "d_model": 768, "encoder_layers": 6, "decoder_layers": 6,
         "encoder_attention_heads": 12, "decoder_attention_heads": 12, "encoder_ffn_dim": 3072,
         "decoder_ffn_dim": 3072, "vocab_size": 50265, "max_position_embeddings": 1024,
         "activation_function": "gelu", "dropout": 0.1, "attention_dropout": 0.1, "activation_dropout": 0.1,
         "classifier_dropout": 0.0, "encoder_layerdrop": 0.0, "decoder_layerdrop": 0.0, "init_std": 0.02,
         "scale_embedding": False, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2,
         "decoder_start_token_id": 2, "forced_eos_token_id": 2, "is_encoder_decoder": True,
         "tie_word_embeddings": True, "use_cache": True, "torch_dtype": "float32"},
        hidden=("d_model",), ffn=("encoder_ffn_dim", "decoder_ffn_dim"),
        heads=("encoder_attention_heads", "decoder_attention_heads"),
        layers=("encoder_layers", "decoder_layers"), tokenizer="roberta",
        # the config.json's generation values (transformers reads them as the generation config)
        generation={"bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1, "decoder_start_token_id": 2,
                    "forced_bos_token_id": 0, "forced_eos_token_id": 2, "early_stopping": True,
                    "no_repeat_ngram_size": 3, "num_beams": 4},
    )


STANDINS: dict[str, Standin] = {
    "meta-llama/Llama-2-7b-hf": _llama2(4096, 11008, 32, 32),
    "meta-llama/Llama-2-13b-hf": _llama2(5120, 13824, 40, 40),
    "meta-llama/Meta-Llama-3-8B-Instruct": _llama3_instruct(),
    "internlm/internlm2-chat-7b": _internlm2_chat_7b(),
    "google/vit-base-patch16-224-in21k": _vit(768, 12, 12, 3072),
    "google/vit-large-patch16-224-in21k": _vit(1024, 24, 16, 4096),
    "FacebookAI/roberta-base": _roberta(768, 12, 12, 3072),
    "FacebookAI/roberta-large": _roberta(1024, 24, 16, 4096),
    "openai-community/gpt2": _gpt2(768, 12, 12),
    "openai-community/gpt2-medium": _gpt2(1024, 24, 16),
    "facebook/bart-base": _bart_base(),
    "openai/clip-vit-large-patch14-336": _clip_vision_large_336(),
}


# -- configs --------------------------------------------------------------------------------------------
def _spec(hub_id: str) -> Standin:
    if hub_id not in STANDINS:
        raise RankmixError(f"no stand-in for {hub_id!r}; known backbones: {', '.join([*STANDINS, *pipelines.PIPELINES])}")
    return STANDINS[hub_id]


def _config(spec: Standin, values: dict) -> PretrainedConfig:
    values = copy.deepcopy(values)  # a config may fill in its nested values (rope_scaling)
    return AutoConfig.for_model(values.pop("model_type"), architectures=[spec.architecture], **values)


def real_config(hub_id: str) -> PretrainedConfig:
    """The full-size config of ``hub_id`` (its real config.json values)."""
    spec = _spec(hub_id)
    return _config(spec, spec.config)


def standin_config(hub_id: str, width: str = "reduced") -> PretrainedConfig:
    """``hub_id``'s config at ``LAYERS`` layers; ``width``: ``reduced`` (÷ ``WIDTH_DIVISOR``) or ``full``."""
    return _config(_spec(hub_id), standin_values(hub_id, width))


def standin_values(hub_id: str, width: str = "reduced") -> dict:
    """The config.json values of ``hub_id``'s stand-in (``standin_config``)."""
    spec = _spec(hub_id)
    if width not in WIDTHS:
        raise RankmixError(f"stand-in width {width!r}: must be one of {', '.join(WIDTHS)}")
    values = {**spec.config, **dict.fromkeys(spec.layers, LAYERS)}
    if width == "reduced":
        values.update({k: values[k] // WIDTH_DIVISOR for k in spec.hidden + spec.ffn})
    uneven = [f"{w}={values[w]} by {h}={values[h]}"
              for w in spec.hidden for h in spec.heads if values[w] % values[h]]
    if uneven:
        raise RankmixError(f"{hub_id}: WIDTH_DIVISOR={WIDTH_DIVISOR} leaves widths the heads do not divide "
                           f"({'; '.join(uneven)})")
    return values


# -- tokenizers -----------------------------------------------------------------------------------------
_LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                   r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
_LLAMA3_SPECIALS = {
    128000: "<|begin_of_text|>", 128001: "<|end_of_text|>",
    **{128002 + k: f"<|reserved_special_token_{k}|>" for k in range(4)},
    128006: "<|start_header_id|>", 128007: "<|end_header_id|>", 128008: "<|reserved_special_token_4|>",
    128009: "<|eot_id|>", **{128010 + k: f"<|reserved_special_token_{5 + k}|>" for k in range(246)},
}


def _llama2_tokenizer(out: Path) -> None:
    """Llama-2's: sentencepiece-style BPE with byte fallback, ``<unk> <s> </s>``, ``<0x00>``…``<0xFF>``."""
    from tokenizers import pre_tokenizers
    from transformers import LlamaTokenizer

    fixed = dict(enumerate(["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256))]))
    words = pre_tokenizers.Sequence([  # merges within words, as sentencepiece's
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True),
        pre_tokenizers.Punctuation()])
    tokens, merges = train_bpe(words, [])
    # tokenizer_config.json of the Llama-2 repos: add_bos_token, no eos, legacy false, padding right, no pad
    LlamaTokenizer(vocab=layout_vocab(fixed, tokens, 0), merges=merges, add_bos_token=True, add_eos_token=False,
                   legacy=False, padding_side="right", clean_up_tokenization_spaces=False,
                   model_max_length=NO_LENGTH_LIMIT).save_pretrained(out)


def _llama3_tokenizer(out: Path) -> None:
    """Meta-Llama-3-Instruct's: byte-level BPE, 128000 base ids, then the 256 special tokens; bos added by the
    post-processor; the chat template inside tokenizer_config.json, whose tokenizer_class is
    PreTrainedTokenizerFast, as in the repo."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tokens, merges = train_bpe(pre, pre_tokenizers.ByteLevel.alphabet())
    vocab = layout_vocab({}, tokens, min(_LLAMA3_SPECIALS))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True))
    tok.pre_tokenizer = pre
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in _LLAMA3_SPECIALS.values()])
    bos = _LLAMA3_SPECIALS[128000]
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
        processors.TemplateProcessing(single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                                      special_tokens=[(bos, 128000)])])
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token="<|eot_id|>",
                            chat_template=_LLAMA3_CHAT_TEMPLATE, clean_up_tokenization_spaces=True,
                            model_input_names=["input_ids", "attention_mask"],
                            model_max_length=NO_LENGTH_LIMIT).save_pretrained(out, save_jinja_files=False)
    config_file = out / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "tokenizer_class": "PreTrainedTokenizerFast"}, indent=2))


def _byte_level_bpe() -> tuple[list[str], list[tuple[str, str]]]:
    from tokenizers import pre_tokenizers

    return train_bpe(pre_tokenizers.ByteLevel(add_prefix_space=False), pre_tokenizers.ByteLevel.alphabet())


def _gpt2_tokenizer(out: Path) -> None:
    """GPT-2's: byte-level BPE, ``<|endoftext|>`` (50256) as bos, eos and unk; adds no special tokens."""
    from transformers import GPT2Tokenizer

    tokens, merges = _byte_level_bpe()
    GPT2Tokenizer(vocab=layout_vocab({50256: "<|endoftext|>"}, tokens, 50257), merges=merges,
                  model_max_length=1024).save_pretrained(out)


def _roberta_tokenizer(out: Path) -> None:
    """RoBERTa's (and BART's): byte-level BPE, ``<s> <pad> </s> <unk>`` at 0–3, ``<mask>`` at 50264;
    ``<s> $A </s>``.

    The real repos ship no tokenizer_config.json, so the length limit is transformers' default."""
    from tokenizers import AddedToken
    from transformers import RobertaTokenizer

    tokens, merges = _byte_level_bpe()
    fixed = {0: "<s>", 1: "<pad>", 2: "</s>", 3: "<unk>", 50264: "<mask>"}
    mask = AddedToken("<mask>", lstrip=True, rstrip=False, normalized=False)
    RobertaTokenizer(vocab=layout_vocab(fixed, tokens, 50265), merges=merges, mask_token=mask).save_pretrained(out)


_INTERNLM2_SPECIALS = {92538: "<|plugin|>", 92539: "<|interpreter|>", 92540: "<|action_end|>",
                       92541: "<|action_start|>", 92542: "<|im_end|>", 92543: "<|im_start|>"}
_INTERNLM2_CHAT_TEMPLATE = ("{{ bos_token }}{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
                            "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
                            "{{ '<|im_start|>assistant\\n' }}{% endif %}")


def _internlm2_tokenizer(out: Path) -> None:
    """InternLM2-chat's: a sentencepiece BPE ``tokenizer.model`` with byte fallback, ``<unk> <s> </s>`` at 0–2 and 92544
    pieces, whose last six are placeholders that tokenizer_config.json's ``added_tokens_decoder`` names as the chat
    tokens (``<|im_start|>`` 92543, ``<|im_end|>`` 92542, ...), as in the repo; that file as the repo's (its
    ``tokenizer_class`` InternLM2Tokenizer, ``auto_map``, chat template). The pieces are trained on ``corpus()``
    (sentencepiece's defaults but the identity normaliser); ids past them are unused filler."""
    import io

    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus()), model_writer=buffer, model_type="bpe",
                                   vocab_size=2000, hard_vocab_limit=False, byte_fallback=True, num_threads=1,
                                   normalization_rule_name="identity", character_coverage=1.0, minloglevel=2)
    proto = sp_pb2.ModelProto.FromString(buffer.getvalue())
    size = real_config("internlm/internlm2-chat-7b").vocab_size
    for i in range(len(proto.pieces), size):
        piece = proto.pieces.add()
        piece.piece, piece.score, piece.type = f"[UNUSED_{i}]", 0.0, sp_pb2.ModelProto.SentencePiece.UNUSED
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.model").write_bytes(proto.SerializeToString())

    def entry(content):
        return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                "special": True}
    config = {"add_bos_token": True, "add_eos_token": False,
              "added_tokens_decoder": {str(i): entry(t) for i, t in
                                       {0: "<unk>", 1: "<s>", 2: "</s>", **_INTERNLM2_SPECIALS}.items()},
              "additional_special_tokens": list(_INTERNLM2_SPECIALS.values())[::-1],
              "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer",
                                             "tokenization_internlm2_fast.InternLM2TokenizerFast"]},
              "bos_token": "<s>", "chat_template": _INTERNLM2_CHAT_TEMPLATE, "clean_up_tokenization_spaces": False,
              "decode_with_prefix_space": False, "eos_token": "</s>", "model_max_length": NO_LENGTH_LIMIT,
              "pad_token": "</s>", "sp_model_kwargs": None, "tokenizer_class": "InternLM2Tokenizer",
              "unk_token": "<unk>"}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


# tokenizer kind -> a function that saves that tokenizer in a directory
TOKENIZERS = {"llama2": _llama2_tokenizer, "llama3": _llama3_tokenizer, "gpt2": _gpt2_tokenizer,
              "roberta": _roberta_tokenizer, "internlm2": _internlm2_tokenizer}


# -- building -------------------------------------------------------------------------------------------
def _standin_dir(hub_id: str, cache_dir: Path = Path(".cache/rehearse"), width: str = "reduced") -> Path:
    """Where ``build_standin`` puts ``hub_id``'s stand-in: named by hub id, width and a hash of the spec."""
    spec = _spec(hub_id)
    key = digest({"spec": asdict(spec), "width": width, "divisor": WIDTH_DIVISOR, "layers": LAYERS, "seed": SEED,
                  "corpus": corpus(), "declares": STANDIN_DIR}, 10)
    return Path(cache_dir) / "models" / f"{hub_id.replace('/', '--')}-{width}-{key}"


def build_standin(hub_id: str, cache_dir: Path = Path(".cache/rehearse"), width: str = "reduced") -> Path:
    """The directory of ``hub_id``'s stand-in (see module docstring; a diffusers checkpoint's:
    ``rankmix.rehearsal.pipelines``), built once and reused when present."""
    if hub_id in pipelines.PIPELINES:
        return pipelines.build_pipeline_standin(hub_id, cache_dir, width)
    values = standin_values(hub_id, width)
    config = _config(STANDINS[hub_id], values)
    return build_once(_standin_dir(hub_id, cache_dir, width),
                      lambda tmp: _write(STANDINS[hub_id], config, tmp, values))


def _write(spec: Standin, config: PretrainedConfig, out: Path, values: dict) -> None:
    import transformers

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = (getattr(transformers, spec.architecture, None) or getattr(internlm2, spec.architecture))(config)
    model.to(config.dtype).save_pretrained(out)
    if spec.repo_code:
        _write_repo_config(spec, values, out)
    real = out / STANDIN_DIR   # what it stands in for: the real config.json (module docstring)
    _config(spec, spec.config).save_pretrained(real)
    if spec.repo_code:
        _write_repo_config(spec, spec.config, real)
    if spec.generation:  # written also beside a checkpoint class that cannot generate (BartModel)
        transformers.GenerationConfig(**spec.generation).save_pretrained(out)
    if spec.tokenizer:
        TOKENIZERS[spec.tokenizer](out)
    if spec.image_processor:
        values = dict(spec.image_processor)
        getattr(transformers, values.pop("image_processor_type", "ViTImageProcessor"))(**values).save_pretrained(out)


def _write_repo_config(spec: Standin, values: dict, out: Path) -> None:
    """A repository-code model's config.json as its repo has it: ``values`` with the repo's own keys."""
    raw = {"architectures": [spec.architecture], **spec.repo_code, **values}
    (out / "config.json").write_text(json.dumps(dict(sorted(raw.items())), indent=2) + "\n")


def build_projector_standin(hub_id: str, file: str, vision: Path, llm: Path,
                            cache_dir: Path = Path(".cache/rehearse")) -> Path:
    """A stand-in of an XTuner pretrain-stage checkpoint (``xtuner/llava-llama-3-8b-pretrain``): a folder with
    ``file`` holding ``{"state_dict": {projector.model.{0,2}.{weight,bias}}}`` from the ``vision`` stand-in's width to
    the ``llm`` stand-in's, random (seed ``SEED``); the real file holds the rest of the training state too."""
    d_v = AutoConfig.from_pretrained(vision).hidden_size
    d_t = AutoConfig.from_pretrained(llm).hidden_size
    path = Path(cache_dir) / "models" / f"{hub_id.replace('/', '--')}-{digest([file, d_v, d_t, SEED], 10)}"
    if (path / file).is_file():
        return path
    gen = torch.Generator().manual_seed(SEED)
    state = {"projector.model.0.weight": torch.randn(d_t, d_v, generator=gen) * 0.02,
             "projector.model.0.bias": torch.zeros(d_t),
             "projector.model.2.weight": torch.randn(d_t, d_t, generator=gen) * 0.02,
             "projector.model.2.bias": torch.zeros(d_t)}
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / f".{file}.{os.getpid()}.tmp"
    torch.save({"meta": {"stand-in": hub_id}, "state_dict": state}, tmp)
    tmp.rename(path / file)
    return path


def part_models(parts: dict[str, str], width: str = "reduced") -> dict[str, torch.nn.Module]:
    """``{key: model}`` for a composed backbone's hub parts (``rankmix.rehearsal.run.pretrained_parts``), each its
    stand-in's architecture built on the ``meta`` device (no memory, no weights): what a row trains, part by part.
    An SDXL pipeline gives its UNet and both text encoders; the separate VAE gives its autoencoder."""
    from transformers import (
        AutoModel,
        AutoModelForCausalLM,
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
    )

    out = {}
    with torch.device("meta"):
        for key, hub in parts.items():
            if pipelines.PIPELINES.get(hub) == "sdxl":
                from diffusers import UNet2DConditionModel

                text, text_2 = pipelines.text_configs(width)
                out[f"{key}.unet"] = UNet2DConditionModel.from_config(pipelines.unet_config(width))
                out[f"{key}.text_encoder"] = CLIPTextModel(CLIPTextConfig(**text))
                out[f"{key}.text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig(**text_2))
            elif pipelines.PIPELINES.get(hub) == "vae":
                from diffusers import AutoencoderKL

                out[key] = AutoencoderKL.from_config(pipelines.vae_config(width))
            else:
                spec = _spec(hub)
                auto = AutoModelForCausalLM if spec.auto_class == "AutoModelForCausalLM" else AutoModel
                out[key] = auto.from_config(standin_config(hub, width))
    return out
