"""Routed methods inside real peft (rankmix.peft): export, load as a ``peft.PeftModel`` with identical outputs,
peft's own adapter controls, a refused merge, and plain peft refusing the files."""

import json

import peft
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from rankmix import peft as rankmix_peft
from rankmix.adapters import adapter_layers, export_peft, inject
from rankmix.errors import NotMergeableError, RankmixError

ROUTED = [{"name": "smora", "r": 8, "k": 2}, {"name": "lora_moe", "r": 2, "num_experts": 4, "routing": "topk", "k": 2},
          {"name": "hydralora", "r": 4, "num_experts": 3}, {"name": "smear", "r": 2, "num_experts": 4}]
IDS = torch.randint(0, 32, (2, 9), generator=torch.Generator().manual_seed(0))


def llama(seed=0):
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=32)).eval()


def trained(model, cfg):
    """``model`` injected with ``cfg``, every adapter tensor (router, factors, balancing bias) away from its init."""
    inject(model, cfg)
    torch.manual_seed(1)
    with torch.no_grad():
        for layer in adapter_layers(model).values():
            for name, t in [*layer.named_parameters(), *layer.named_buffers()]:
                if not name.startswith("base_layer.") and t.is_floating_point():
                    t.normal_(std=0.2)
    return model.eval()


@pytest.mark.parametrize("cfg", ROUTED, ids=[c["name"] for c in ROUTED])
def test_a_routed_export_loads_in_peft_with_identical_logits(tmp_path, cfg):
    model = trained(llama(), cfg)
    export_peft(model, tmp_path)
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    assert meta["peft_type"] == "RANKMIX" and meta["task_type"] == "CAUSAL_LM"
    assert meta["rankmix"]["method"] == cfg["name"] and meta["rankmix"]["options"]["r"] == cfg["r"]
    loaded = rankmix_peft.from_pretrained(llama(), tmp_path)
    assert isinstance(loaded, peft.PeftModel)
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, model(IDS).logits)
        with loaded.disable_adapter():  # peft's own switch turns the routed path off
            assert torch.equal(loaded(IDS).logits, llama()(IDS).logits)


def test_smoras_balancing_bias_travels_with_the_export(tmp_path):
    model = trained(llama(), ROUTED[0])
    export_peft(model, tmp_path)
    loaded = rankmix_peft.from_pretrained(llama(), tmp_path)
    biases = {n: b for n, b in loaded.named_buffers() if n.endswith("router_bias")}
    assert len(biases) == len(adapter_layers(model)) and all(b.abs().sum() > 0 for b in biases.values())
    assert torch.equal(next(iter(biases.values())),
                       next(b for n, b in model.named_buffers() if n.endswith("router_bias")))


def test_a_routed_peft_model_trains_its_router_when_asked(tmp_path):
    export_peft(trained(llama(), ROUTED[0]), tmp_path)
    frozen = rankmix_peft.from_pretrained(llama(), tmp_path)
    assert not any(p.requires_grad for p in frozen.parameters())
    live = rankmix_peft.from_pretrained(llama(), tmp_path, is_trainable=True)
    names = {n for n, p in live.named_parameters() if p.requires_grad}
    assert names and all(".lora_rankmix.default." in n for n in names) and any(".router." in n for n in names)
    live(IDS, labels=IDS).loss.backward()
    assert all(p.grad is not None for n, p in live.named_parameters() if ".router." in n)


def test_merge_and_unload_of_a_routed_method_refuses(tmp_path):
    export_peft(trained(llama(), ROUTED[0]), tmp_path)
    with pytest.raises(NotMergeableError, match="smora: a routed update depends on the input"):
        rankmix_peft.from_pretrained(llama(), tmp_path).merge_and_unload()


def test_plain_peft_refuses_a_routed_adapter(tmp_path):
    export_peft(trained(llama(), ROUTED[0]), tmp_path)
    with pytest.raises(KeyError, match="RANKMIX"):
        peft.PeftModel.from_pretrained(llama(), str(tmp_path))


def test_a_gpt2_conv1d_routed_export_round_trips(tmp_path):
    def gpt2():
        torch.manual_seed(0)
        return GPT2LMHeadModel(GPT2Config(vocab_size=32, n_embd=32, n_layer=2, n_head=4, n_positions=32)).eval()

    model = trained(gpt2(), {"name": "smora", "r": 4, "k": 2, "target_modules": ["c_attn", "c_proj"]})
    export_peft(model, tmp_path)
    with torch.no_grad():
        assert torch.equal(rankmix_peft.from_pretrained(gpt2(), tmp_path)(IDS).logits, model(IDS).logits)


def test_a_plain_lora_export_goes_through_peft_and_a_misfit_is_refused(tmp_path):
    model = trained(llama(), {"name": "lora", "r": 4, "alpha": 8})
    export_peft(model, tmp_path / "lora")
    with torch.no_grad():
        assert torch.allclose(rankmix_peft.from_pretrained(llama(), tmp_path / "lora")(IDS).logits,
                              model(IDS).logits, atol=1e-5)
    export_peft(trained(llama(), {**ROUTED[0], "target_modules": ["q_proj"]}), tmp_path / "q")
    meta = json.loads((tmp_path / "q" / "adapter_config.json").read_text())
    meta["rankmix"]["options"]["r"] = 4  # tensors of r 8 into layers of r 4
    (tmp_path / "q" / "adapter_config.json").write_text(json.dumps(meta))
    with pytest.raises(RuntimeError, match="size mismatch"):
        rankmix_peft.from_pretrained(llama(), tmp_path / "q")
    with pytest.raises(RankmixError, match="adapter_config.json: not found"):
        rankmix_peft.from_pretrained(llama(), tmp_path / "nothing")
