"""InternLM2 without its repository code (rankmix.internlm2): a checkpoint in the repo's key layout loads through
transformers' Auto classes and computes what Llama computes on the InternLM team's own conversion of it
(``tools/convert2llama.py``: wqkv split per key-value group); its tokenizer encodes as sentencepiece with the chat
tokens at the ids tokenizer_config.json gives them."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

import rankmix.internlm2  # noqa: F401 - registers internlm2

H, FFN, LAYERS, HEADS, KV_HEADS, VOCAB = 64, 96, 2, 8, 2, 120
HEAD_DIM, GROUPS = H // HEADS, HEADS // KV_HEADS


def _internlm2_checkpoint(path) -> dict[str, torch.Tensor]:
    """A random InternLM2 checkpoint as the hub repo lays it out: config.json with the repo-code keys, safetensors
    with the repo's names."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({
        "architectures": ["InternLM2ForCausalLM"], "attn_implementation": "eager",
        "auto_map": {"AutoConfig": "configuration_internlm2.InternLM2Config",
                     "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM"},
        "bias": False, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2, "hidden_act": "silu",
        "hidden_size": H, "intermediate_size": FFN, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS, "max_position_embeddings": 32768, "rms_norm_eps": 1e-5,
        "rope_scaling": {"type": "dynamic", "factor": 2.0}, "rope_theta": 1000000, "tie_word_embeddings": False,
        "torch_dtype": "float32", "model_type": "internlm2", "vocab_size": VOCAB}))
    gen = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=gen) * 0.1
    state = {"model.tok_embeddings.weight": rand(VOCAB, H), "model.norm.weight": 1 + rand(H),
             "output.weight": rand(VOCAB, H)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        state |= {p + "attention.wqkv.weight": rand((HEADS + 2 * KV_HEADS) * HEAD_DIM, H),
                  p + "attention.wo.weight": rand(H, H), p + "feed_forward.w1.weight": rand(FFN, H),
                  p + "feed_forward.w3.weight": rand(FFN, H), p + "feed_forward.w2.weight": rand(H, FFN),
                  p + "attention_norm.weight": 1 + rand(H), p + "ffn_norm.weight": 1 + rand(H)}
    save_file(state, path / "model.safetensors", metadata={"format": "pt"})
    return state


def _as_llama(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """convert2llama.py's mapping: wqkv rows (kv group, g queries + k + v, head_dim) split into q, k, v."""
    names = {"attention.wo": "self_attn.o_proj", "feed_forward.w1": "mlp.gate_proj", "feed_forward.w2": "mlp.down_proj",
             "feed_forward.w3": "mlp.up_proj", "attention_norm": "input_layernorm",
             "ffn_norm": "post_attention_layernorm", "tok_embeddings": "embed_tokens", "output.weight": "lm_head.weight"}
    out = {}
    for k, v in state.items():
        if "wqkv" in k:
            grouped, prefix = v.view(KV_HEADS, GROUPS + 2, HEAD_DIM, H), k.split("attention")[0]
            out[prefix + "self_attn.q_proj.weight"] = grouped[:, :GROUPS].reshape(-1, H)
            out[prefix + "self_attn.k_proj.weight"] = grouped[:, GROUPS].reshape(-1, H)
            out[prefix + "self_attn.v_proj.weight"] = grouped[:, GROUPS + 1].reshape(-1, H)
            continue
        for old, new in names.items():
            k = k.replace(old, new)
        out[k] = v
    return out


def test_the_repo_checkpoint_loads_without_remote_code_and_computes_llamas_conversion(tmp_path):
    state = _internlm2_checkpoint(tmp_path / "internlm2")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "internlm2").eval()
    assert type(model).__name__ == "InternLM2ForCausalLM" and not model.is_remote_code()
    assert model.config._attn_implementation != "eager"   # the repo's eager setting is not taken
    leaves = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert leaves == {"wqkv", "wo", "w1", "w2", "w3", "lm_head"}
    llama = LlamaForCausalLM(LlamaConfig(
        hidden_size=H, intermediate_size=FFN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS, vocab_size=VOCAB, rms_norm_eps=1e-5, rope_theta=1000000,
        max_position_embeddings=32768, tie_word_embeddings=False)).eval()
    llama.load_state_dict(_as_llama(state), strict=True)
    ids = torch.randint(3, VOCAB, (2, 13), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        torch.testing.assert_close(model(ids, attention_mask=mask).logits, llama(ids, attention_mask=mask).logits)
        a = model.generate(ids[:, :5], attention_mask=mask[:, :5], max_new_tokens=6, do_sample=False, pad_token_id=2)
        b = llama.generate(ids[:, :5], attention_mask=mask[:, :5], max_new_tokens=6, do_sample=False, pad_token_id=2)
    assert a.tolist() == b.tolist()   # the cache path too
    model.save_pretrained(tmp_path / "saved")   # written back in the repo's names
    with safe_open(tmp_path / "saved" / "model.safetensors", "pt") as f:
        assert set(f.keys()) == set(state)


def _sentencepiece_model(path, n_placeholders=6) -> list[str]:
    """A small sentencepiece BPE ``tokenizer.model`` ending in placeholder pieces, and the repo's
    tokenizer_config.json naming the chat tokens at those ids; the chat tokens."""
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    piece_type = sp_pb2.ModelProto.SentencePiece
    proto = sp_pb2.ModelProto()
    proto.trainer_spec.model_type, proto.trainer_spec.byte_fallback = sp_pb2.TrainerSpec.BPE, True
    proto.normalizer_spec.name, proto.normalizer_spec.add_dummy_prefix = "identity", True
    proto.normalizer_spec.remove_extra_whitespaces = False

    def add(text, score=0.0, kind=piece_type.NORMAL):
        piece = proto.pieces.add()
        piece.piece, piece.score, piece.type = text, score, kind
    add("<unk>", kind=piece_type.UNKNOWN), add("<s>", kind=piece_type.CONTROL), add("</s>", kind=piece_type.CONTROL)
    for b in range(256):
        add(f"<0x{b:02X}>", kind=piece_type.BYTE)
    for i, text in enumerate(["▁", "e", "h", "l", "o", "r", "s", "u", "w", "d", "he", "ll", "er", "▁he", "▁hell",
                              "▁hello", "us", "▁us", "▁user", "or", "▁w", "▁wor", "▁world"]):
        add(text, -float(i))
    for k in range(n_placeholders):
        add(f"[UNUSED_TOKEN_{k}]", kind=piece_type.USER_DEFINED)
    path.mkdir(parents=True, exist_ok=True)
    (path / "tokenizer.model").write_bytes(proto.SerializeToString())
    chat = ["<|plugin|>", "<|interpreter|>", "<|action_end|>", "<|action_start|>", "<|im_end|>", "<|im_start|>"]
    first = len(proto.pieces) - n_placeholders
    entries = {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                        "special": True}
               for i, t in [(0, "<unk>"), (1, "<s>"), (2, "</s>"), *enumerate(chat, first)]}
    (path / "tokenizer_config.json").write_text(json.dumps({
        "added_tokens_decoder": entries, "additional_special_tokens": chat[::-1], "bos_token": "<s>",
        "eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>", "sp_model_kwargs": None,
        "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]},
        "tokenizer_class": "InternLM2Tokenizer", "clean_up_tokenization_spaces": False}))
    return chat


def test_the_tokenizer_is_sentencepiece_per_stretch_with_the_chat_tokens_at_their_ids(tmp_path):
    import sentencepiece as spm

    chat = _sentencepiece_model(tmp_path / "tok")
    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "tok" / "tokenizer.model"))
    first = sp.get_piece_size() - len(chat)
    assert type(tok).__name__ == "InternLM2Tokenizer"
    assert tok.convert_tokens_to_ids(chat) == list(range(first, first + len(chat)))   # not appended past the vocab
    assert len(tok) == sp.get_piece_size() and sp.id_to_piece(first) != chat[0]
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id) == (1, 2, 2, 0)
    text = "<|im_start|>user\nhello  world<|im_end|>\n"
    expected = [1, first + 5, *sp.encode("user\nhello  world"), first + 4, *sp.encode("\n")]
    assert tok(text)["input_ids"] == expected   # each stretch through sentencepiece as it is
    assert tok.decode(expected, skip_special_tokens=True) == sp.decode([i for i in expected if 2 < i < first])
    assert tok.decode(expected).startswith("<s><|im_start|>user\nhello")   # special tokens kept as written
    tok.save_pretrained(tmp_path / "again")
    assert AutoTokenizer.from_pretrained(tmp_path / "again")(text)["input_ids"] == expected


@pytest.mark.parametrize("dummy_prefix", [True, False])
def test_the_models_own_dummy_prefix_setting_is_kept(tmp_path, dummy_prefix):
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    _sentencepiece_model(tmp_path)
    proto = sp_pb2.ModelProto.FromString((tmp_path / "tokenizer.model").read_bytes())
    proto.normalizer_spec.add_dummy_prefix = dummy_prefix
    (tmp_path / "tokenizer.model").write_bytes(proto.SerializeToString())
    tokens = AutoTokenizer.from_pretrained(tmp_path).tokenize("hello")
    assert tokens == (["▁hello"] if dummy_prefix else ["he", "ll", "o"])
