"""Adapter weights: save/load, the peft export round trip, and the peft-backed baselines."""

import json

import pytest
import torch
from peft import PeftModel
from transformers import LlamaConfig, LlamaForCausalLM

from rankmix.adapters import (
    adapter_layers,
    adapter_state_dict,
    export_peft,
    inject,
    load_adapter,
    save_adapter,
)
from rankmix.errors import RankmixError


def tiny_llama(seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=32)
    return LlamaForCausalLM(cfg).eval()


def _randomise(model):
    torch.manual_seed(1)
    with torch.no_grad():
        for layer in adapter_layers(model).values():
            for name, p in layer.named_parameters():
                if not name.startswith("base_layer.") and p.requires_grad:
                    p.normal_(std=0.2)


IDS = torch.randint(0, 32, (2, 9), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(("cfg"), [
    {"name": "lora", "r": 4, "alpha": 8},
    {"name": "smora", "r": 8, "k": 2},
    {"name": "moslora", "r": 4, "mixer_init": "orthogonal"},
])
def test_save_and_load_round_trip(tmp_path, cfg):
    cfg = {**cfg, "target_modules": ["q_proj", "v_proj", "down_proj"]}
    model = tiny_llama()
    inject(model, cfg)
    _randomise(model)
    expected = model(IDS).logits
    save_adapter(model, tmp_path, cfg)
    fresh = tiny_llama()
    inject(fresh, cfg)
    load_adapter(fresh, tmp_path)
    torch.testing.assert_close(fresh(IDS).logits, expected)


def test_load_into_a_different_adapter_is_refused(tmp_path):
    model = tiny_llama()
    inject(model, {"name": "lora", "r": 4, "target_modules": ["q_proj"]})
    save_adapter(model, tmp_path, {"name": "lora"})
    other = tiny_llama()
    inject(other, {"name": "lora", "r": 4, "target_modules": ["v_proj"]})
    with pytest.raises(RankmixError, match="does not fit this model"):
        load_adapter(other, tmp_path)


@pytest.mark.parametrize("name", ["lora", "moslora", "ts_mixing"])
def test_peft_loads_the_export(tmp_path, name):
    model = tiny_llama()
    inject(model, {"name": name, "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj", "up_proj"]})
    _randomise(model)
    expected = model(IDS).logits
    export_peft(model, tmp_path)
    loaded = PeftModel.from_pretrained(tiny_llama(), tmp_path).eval()
    torch.testing.assert_close(loaded(IDS).logits, expected, atol=1e-5, rtol=1e-5)


def test_export_refuses_methods_that_read_a_per_call_context(tmp_path):
    model = tiny_llama()
    inject(model, {"name": "routing", "fn": "mul", "r": 4, "target_modules": ["q_proj"]})
    with pytest.raises(RankmixError, match="peft export supports flora, lora, moslora, ts_mixing, .*routed hydralora, lora_moe, smear, smora"):
        export_peft(model, tmp_path)


@pytest.mark.parametrize("name", ["dora", "loha", "lokr", "adalora"])
def test_peft_backed_baselines(name):
    model = tiny_llama()
    before = model(IDS).logits
    report = inject(model, {"name": name, "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]})
    assert len(report.wrapped) == 4
    torch.testing.assert_close(model(IDS).logits, before, atol=1e-5, rtol=1e-5)  # starts as the base model
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and report.trainable_parameters == sum(p.numel() for p in model.parameters() if p.requires_grad)
    state = adapter_state_dict(model)
    assert set(trainable) <= set(state) and all(".base_layer." not in k for k in state)
    model(IDS).logits.pow(2).mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)


def test_adalora_prunes_to_its_budget():
    from rankmix.adapters.peft_methods import peft_tuner

    model = tiny_llama().train()
    inject(model, {"name": "adalora", "r": 2, "init_r": 6, "total_step": 30, "tinit": 2, "tfinal": 5, "deltaT": 1,
                   "target_modules": ["q_proj", "v_proj"]})
    tuner = peft_tuner(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    labels = IDS.clone()
    for step in range(30):
        loss = tuner(input_ids=IDS, labels=labels).loss  # includes the orthogonal regulariser
        loss.backward()
        opt.step()
        tuner.update_and_allocate(step)
        opt.zero_grad()
    active = sum(int(torch.count_nonzero(p)) for n, p in model.named_parameters() if "lora_E" in n)
    assert active <= 4 * 2  # 4 layers, an average of r = 2 ranks each (started at 6)


def test_adalora_with_init_r_equal_to_r_trains_through_its_schedule():
    """MoSLoRA's AdaLoRA (init_r = r): the budget never falls, so nothing is masked; peft alone raises on it."""
    from rankmix.adapters.peft_methods import allocate_rank_budget, peft_tuner

    def train(allocate):
        model = tiny_llama().train()
        inject(model, {"name": "adalora", "r": 2, "init_r": 2, "total_step": 12, "tinit": 2, "tfinal": 3,
                       "deltaT": 1, "target_modules": ["q_proj", "v_proj"]})
        tuner = peft_tuner(model)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        for step in range(12):
            tuner(input_ids=IDS, labels=IDS.clone()).loss.backward()
            opt.step()
            allocate(tuner, step)
            opt.zero_grad()
        return model

    with pytest.raises(RuntimeError, match="kthvalue"):
        train(lambda tuner, step: tuner.update_and_allocate(step))
    model = train(allocate_rank_budget)
    e = [p for n, p in model.named_parameters() if "lora_E" in n]
    assert len(e) == 4 and all(int(torch.count_nonzero(p)) == 2 for p in e)  # every rank kept and trained


@pytest.mark.slow
def test_adalora_row_trains_at_tiny_scale(tmp_path):
    """moslora-4's AdaLoRA row through the Lightning path (its schedule shortened to the few steps run here),
    with gradient accumulation so that allocations follow optimizer steps, not batches."""
    from conftest import run_train

    run = run_train(tmp_path, "experiment=moslora-4/adalora", "task.max_epochs=1", "+task.datamodule.source.train_fraction=0.25",
                    "++task.datamodule.max_eval_samples={validation:4,test:4}",
                    "method.tinit=1", "method.tfinal=1", "method.deltaT=1", "trainer.accumulate_grad_batches=2",
                    timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.result("moslora-4")["status"] == "ok"


def test_adalora_auto_total_step_takes_the_runs_steps():
    from rankmix.adapters.peft_methods import peft_tuner, resolve_total_step
    from rankmix.errors import ConfigError

    def tuner():
        model = tiny_llama()
        inject(model, {"name": "adalora", "r": 2, "init_r": 4, "total_step": "auto", "tinit": 5, "tfinal": 10,
                       "target_modules": ["q_proj"]})
        return peft_tuner(model)

    t = tuner()
    resolve_total_step(t, 120)
    assert t.peft_config["default"].total_step == 120
    with pytest.raises(ConfigError, match="has 12 optimizer steps, too few"):
        resolve_total_step(tuner(), 12)
    with pytest.raises(ConfigError, match="method.init_r"):
        inject(tiny_llama(), {"name": "adalora", "r": 16, "init_r": 12, "target_modules": ["q_proj"]})
    with pytest.raises(ConfigError, match="method.total_step"):
        inject(tiny_llama(), {"name": "adalora", "r": 2, "total_step": 0, "target_modules": ["q_proj"]})
    with pytest.raises(ConfigError, match="method.total_step=10: too few steps for tinit=50 \\+ tfinal=100"):
        inject(tiny_llama(), {"name": "adalora", "r": 2, "total_step": 10, "target_modules": ["q_proj"]})


def test_peft_export_writes_complete_metadata_and_per_layer_ranks(tmp_path):
    """task_type, base model, dropout and rank/alpha patterns: AutoPeftModelForCausalLM rebuilds it alone."""
    from peft import AutoPeftModelForCausalLM

    base = tiny_llama()
    base.save_pretrained(tmp_path / "base")
    model = tiny_llama()
    inject(model, {"name": "lora", "r": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["q_proj"]})
    inject(model, {"name": "lora", "r": 2, "alpha": 2, "dropout": 0.1, "target_modules": ["v_proj"]})
    _randomise(model)
    model.eval()
    expected = model(IDS).logits
    export_peft(model, tmp_path / "adapter", base_model_name_or_path=str(tmp_path / "base"))
    meta = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert (meta["task_type"], meta["base_model_name_or_path"], meta["lora_dropout"]) == (
        "CAUSAL_LM", str(tmp_path / "base"), 0.1)
    assert set(meta["rank_pattern"].values()) == {2} and set(meta["alpha_pattern"].values()) == {2}
    loaded = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "adapter").eval()
    torch.testing.assert_close(loaded(IDS).logits, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["dora", "loha", "lokr", "adalora"])
def test_peft_backed_baselines_export_through_peft_and_load_back_exactly(tmp_path, name):
    model = tiny_llama()
    inject(model, {"name": name, "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]})
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(std=0.2)
    expected = model(IDS).logits
    export_peft(model, tmp_path, base_model_name_or_path="made-up/tiny-llama")
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM" and config["base_model_name_or_path"] == "made-up/tiny-llama"
    loaded = PeftModel.from_pretrained(tiny_llama(), tmp_path).eval()
    torch.testing.assert_close(loaded(IDS).logits, expected, atol=1e-5, rtol=1e-5)


def test_a_named_head_trains_and_saves_with_the_adapter(tmp_path):
    from transformers import RobertaConfig, RobertaForSequenceClassification

    def classifier(seed):
        torch.manual_seed(seed)   # the same backbone for a seed
        return RobertaForSequenceClassification(RobertaConfig(
            vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=40, num_labels=3)).eval()

    cfg = {"name": "lora", "r": 4, "target_modules": ["query", "value"], "modules_to_save": ["classifier"]}
    model = classifier(0)
    inject(model, cfg)
    assert all(p.requires_grad for p in model.classifier.parameters())
    assert not model.roberta.embeddings.word_embeddings.weight.requires_grad
    _randomise(model)
    ids = torch.randint(3, 40, (2, 6), generator=torch.Generator().manual_seed(0))
    expected = model(ids).logits
    save_adapter(model, tmp_path, cfg)
    fresh = classifier(0)
    torch.manual_seed(1)
    for p in fresh.classifier.parameters():   # another head: only the saved head gives the same logits
        torch.nn.init.normal_(p, std=0.5)
    inject(fresh, cfg)
    load_adapter(fresh, tmp_path)
    torch.testing.assert_close(fresh(ids).logits, expected)
    with pytest.raises(RankmixError, match="modules_to_save"):
        inject(classifier(0), {**cfg, "modules_to_save": ["score"]})
