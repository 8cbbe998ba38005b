"""InternLM2 (MoSLoRA Tab. 5's ``internlm/internlm2-chat-7b``) in transformers' own Llama classes.

The repository's ``modeling_internlm2.py`` and ``tokenization_internlm2.py`` (``trust_remote_code``) use transformers
APIs that version 5 removed, so rankmix registers its own ``internlm2`` config, model and tokenizer with the Auto
classes: the hub checkpoint then loads as it is, without its repository code, by ``AutoModelForCausalLM`` /
``AutoTokenizer`` (and 4-bit through bitsandbytes, as any transformers model).

InternLM2 is Llama with other names and one fused projection. Its ``wqkv`` holds q, k and v in one ``Linear`` whose
output rows are grouped by key-value head: for each of the ``num_key_value_heads`` groups, ``g =
num_attention_heads / num_key_value_heads`` query heads, then that group's key head, then its value head, each
``head_dim`` rows (the layout InternLM's ``tools/convert2llama.py`` splits). ``wqkv`` stays one layer here, so an
adapter on it is the one XTuner trains on InternLM2: one low-rank path over the fused output. The feed-forward is
``w2(silu(w1 x) * w3 x)``. Checkpoint names are renamed on load (and back on save): ``tok_embeddings`` ->
``embed_tokens``, ``attention`` -> ``self_attn``, ``feed_forward`` -> ``mlp``, ``attention_norm`` ->
``input_layernorm``, ``ffn_norm`` -> ``post_attention_layernorm``, ``output`` -> ``lm_head``; the leaf names
``wqkv wo w1 w2 w3`` are kept, so the adapters' targets are InternLM2's own. The head keeps transformers' attribute
``lm_head`` (Llama's forward and generation, LLaVA's composition and bitsandbytes' unquantised head read it there); its
InternLM2 name is ``HEAD_NAME`` (``output``, the checkpoint's and XTuner's), under which adapters target it
(``rankmix.modules.visual_instruction``): XTuner's ``find_all_linear_names`` leaves out only ``lm_head`` and
``output_layer``, so it adapts InternLM2's ``output``. The config's ``rope_scaling`` (dynamic
NTK, factor 2) is transformers' ``dynamic`` rope, which equals plain rope within ``max_position_embeddings``.

The tokenizer is InternLM2Tokenizer's encoding: each stretch of text between special tokens goes through the
sentencepiece model as it is (``sp.encode(text, out_type=str)``); the special tokens of ``tokenizer_config.json``'s
``added_tokens_decoder`` keep their ids there (the pieces at those ids in ``tokenizer.model`` are other strings).
"""

from __future__ import annotations

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaModel,
)
from transformers.activations import ACT2FN
from transformers.models.llama.modeling_llama import (
    ALL_ATTENTION_FUNCTIONS,
    LlamaAttention,
    apply_rotary_pos_emb,
    eager_attention_forward,
)
from transformers.tokenization_utils_sentencepiece import SentencePieceBackend

MODEL_TYPE = "internlm2"
HEAD_NAME = "output"   # the LM head's name in the checkpoint and the repository's code (``self.output``)


@strict
class InternLM2Config(LlamaConfig):
    """LlamaConfig read from InternLM2's config.json: ``bias`` (on ``wqkv`` and ``wo``) is Llama's
    ``attention_bias``; its ``attn_implementation: eager`` is not taken (transformers chooses, sdpa on torch 2)."""

    model_type = MODEL_TYPE
    bias: bool = False

    def __post_init__(self, **kwargs):
        self.attention_bias = self.bias
        kwargs.pop("attn_implementation", None)
        super().__post_init__(**kwargs)


class InternLM2Attention(LlamaAttention):
    """Llama's attention with q, k, v from the fused ``wqkv`` (module docstring) and ``wo`` as the output."""

    def __init__(self, config: InternLM2Config, layer_idx: int):
        super().__init__(config, layer_idx)
        del self.q_proj, self.k_proj, self.v_proj, self.o_proj
        heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.wqkv = nn.Linear(config.hidden_size, (heads + 2 * kv_heads) * self.head_dim, bias=config.bias)
        self.wo = nn.Linear(heads * self.head_dim, config.hidden_size, bias=config.bias)

    def split_qkv(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(batch, length, rows of ``wqkv``) -> q, k, v as (batch, heads, length, head_dim)."""
        b, t = qkv.shape[:2]
        g = self.num_key_value_groups
        grouped = qkv.view(b, t, -1, g + 2, self.head_dim)
        q = grouped[..., :g, :].reshape(b, t, -1, self.head_dim)
        return q.transpose(1, 2), grouped[..., g, :].transpose(1, 2), grouped[..., g + 1, :].transpose(1, 2)

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, cache=None, **kwargs):
        query, key, value = self.split_qkv(self.wqkv(hidden_states))
        cos, sin = position_embeddings
        query, key = apply_rotary_pos_emb(query, key, cos, sin)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx, kwargs=kwargs)
        attend = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        out, weights = attend(self, query, key, value, attention_mask,
                              dropout=0.0 if not self.training else self.attention_dropout, scaling=self.scaling,
                              **kwargs)
        return self.wo(out.reshape(*hidden_states.shape[:-1], -1).contiguous()), weights


class InternLM2MLP(nn.Module):
    """``w2(act(w1 x) * w3 x)``."""

    def __init__(self, config: InternLM2Config):
        super().__init__()
        self.w1 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.w3 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.w2 = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x):
        return self.w2(self.act_fn(self.w1(x)) * self.w3(x))


class InternLM2Model(LlamaModel):
    """Llama's decoder stack with InternLM2's attention and feed-forward in every layer."""

    config_class = InternLM2Config

    def __init__(self, config: InternLM2Config):
        super().__init__(config)
        for i, layer in enumerate(self.layers):
            layer.self_attn = InternLM2Attention(config, i)
            layer.mlp = InternLM2MLP(config)
        self.post_init()


class InternLM2ForCausalLM(LlamaForCausalLM):
    config_class = InternLM2Config
    _tied_weights_keys = {}  # InternLM2 never ties its output head to the embeddings

    def __init__(self, config: InternLM2Config):
        super().__init__(config)
        self.model = InternLM2Model(config)
        self.post_init()


class InternLM2Tokenizer(SentencePieceBackend):
    """InternLM2Tokenizer's encoding (module docstring): sentencepiece as it is (``legacy``), ``<s>`` added first,
    ``</s>`` the end and the padding."""

    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, vocab_file, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>",
                 add_bos_token=True, add_eos_token=False, **kwargs):
        kwargs.pop("legacy", None)
        kwargs["sp_model_kwargs"] = kwargs.get("sp_model_kwargs") or {}  # the repo's file says null
        self.add_bos_token, self.add_eos_token = add_bos_token, add_eos_token
        super().__init__(vocab_file=vocab_file, unk_token=unk_token, bos_token=bos_token, eos_token=eos_token,
                         pad_token=pad_token, legacy=True, add_bos_token=add_bos_token, add_eos_token=add_eos_token,
                         **kwargs)

    def build_inputs_with_special_tokens(self, token_ids_0, token_ids_1=None):
        ids = [self.bos_token_id] * self.add_bos_token + token_ids_0 + (token_ids_1 or [])
        return ids + [self.eos_token_id] * self.add_eos_token

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        """Sentencepiece's decoding of each stretch between special tokens, which are kept as written (``<s>`` is a
        control piece that sentencepiece would drop)."""
        out, stretch = [], []
        for token in tokens:
            if token in self.all_special_tokens:
                out += [self.sp_model.decode(stretch), token]
                stretch = []
            else:
                stretch.append(token)
        return "".join([*out, self.sp_model.decode(stretch)])


def _conversions():
    from transformers.core_model_loading import WeightRenaming

    renames = {r"^model\.tok_embeddings\.": "model.embed_tokens.", r"\.attention\.": ".self_attn.",
               r"\.feed_forward\.": ".mlp.", r"\.attention_norm\.": ".input_layernorm.",
               r"\.ffn_norm\.": ".post_attention_layernorm.", r"^output\.": "lm_head."}
    return [WeightRenaming(k, v) for k, v in renames.items()]


def register() -> None:
    """Make ``internlm2`` known to transformers' Auto classes and checkpoint loading (once per process)."""
    from transformers.conversion_mapping import register_checkpoint_conversion_mapping
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if MODEL_TYPE in CONFIG_MAPPING:
        return
    AutoConfig.register(MODEL_TYPE, InternLM2Config)
    AutoModel.register(InternLM2Config, InternLM2Model)
    AutoModelForCausalLM.register(InternLM2Config, InternLM2ForCausalLM)
    AutoTokenizer.register(InternLM2Config, slow_tokenizer_class=InternLM2Tokenizer)
    register_checkpoint_conversion_mapping(MODEL_TYPE, _conversions(), overwrite=True)


register()
