"""Paper-backbone stand-ins: real configs and tokenizer layouts, 2 layers, loaded like the real repos."""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import (
    AutoImageProcessor,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    GenerationConfig,
)

from rankmix.errors import RankmixError
from rankmix.rehearsal.standin_basics import LAYERS, WIDTH_DIVISOR
from rankmix.rehearsal.standins import STANDINS, build_standin, real_config, standin_config

LLAMA2, LLAMA3 = "meta-llama/Llama-2-7b-hf", "meta-llama/Meta-Llama-3-8B-Instruct"
AUTO = {"AutoModelForCausalLM": AutoModelForCausalLM, "AutoModel": AutoModel,
        "AutoModelForSeq2SeqLM": AutoModelForSeq2SeqLM}
# the real tokenizers' special ids: bos, eos, pad, unk
SPECIAL_IDS = {"llama2": (1, 2, None, 0), "llama3": (128000, 128009, None, None),
               "gpt2": (50256, 50256, None, 50256), "roberta": (0, 2, 1, 3), "internlm2": (1, 2, 2, 0)}
TEXT = "The small dog is standing near the station. What color is the kite? It costs $12.50, isn't it?"


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("rehearse")


@pytest.fixture(scope="module")
def dirs(cache) -> dict[str, Path]:
    return {hub_id: build_standin(hub_id, cache) for hub_id in STANDINS}


@pytest.mark.parametrize("hub_id", list(STANDINS))
def test_standin_loads_with_the_suites_auto_class_at_two_layers_and_real_vocab(dirs, hub_id):
    spec, real = STANDINS[hub_id], real_config(hub_id)
    model = AUTO[spec.auto_class].from_pretrained(dirs[hub_id])
    stacks = [len(m) for m in model.modules() if isinstance(m, torch.nn.ModuleList)
              and type(m[0]).__name__.endswith(("Layer", "Block"))]
    assert stacks == [LAYERS] * len(spec.layers)
    if hasattr(real, "vocab_size"):
        assert model.get_input_embeddings().num_embeddings == real.vocab_size
    assert model.config.hidden_size == real.hidden_size // WIDTH_DIVISOR
    assert model.config.num_attention_heads == real.num_attention_heads
    with safe_open(dirs[hub_id] / "model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {
            {"float16": "F16", "bfloat16": "BF16", "float32": "F32"}[spec.config["torch_dtype"]]}


@pytest.mark.parametrize("hub_id", [h for h, s in STANDINS.items() if s.tokenizer])
def test_tokenizer_has_the_real_special_ids_and_round_trips_english(dirs, hub_id):
    tok = AutoTokenizer.from_pretrained(dirs[hub_id])
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id) == \
        SPECIAL_IDS[STANDINS[hub_id].tokenizer]
    ids = tok(TEXT)["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == TEXT
    assert len(ids) <= 2 * len(TEXT.split()) + 2
    assert len(tok) <= real_config(hub_id).vocab_size


def test_bos_and_eos_behaviour_of_each_tokenizer(dirs):
    llama2, gpt2, roberta = (AutoTokenizer.from_pretrained(dirs[h]) for h in
                             (LLAMA2, "openai-community/gpt2", "FacebookAI/roberta-base"))
    ids = llama2("Hello there")["input_ids"]
    assert ids[0] == 1 and 2 not in ids and llama2.padding_side == "right"
    assert llama2.convert_ids_to_tokens([3, 13, 258]) == ["<0x00>", "<0x0A>", "<0xFF>"]
    assert llama2("ü")["input_ids"][-2:] == [3 + 0xC3, 3 + 0xBC]  # not in the corpus: byte fallback
    assert gpt2("Hello there")["input_ids"] == gpt2("Hello there", add_special_tokens=False)["input_ids"]
    ids = roberta("Hello there")["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2 and roberta.mask_token_id == 50264
    bart = AutoTokenizer.from_pretrained(dirs["facebook/bart-base"])
    assert bart("Hello there")["input_ids"] == ids


def test_llama3_specials_sit_at_their_real_ids_and_the_chat_template_is_the_real_one(dirs):
    tok = AutoTokenizer.from_pretrained(dirs[LLAMA3])
    ids = [128000, 128001, 128005, 128006, 128007, 128008, 128009, 128010, 128255]
    assert tok.convert_ids_to_tokens(ids) == [
        "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_3|>", "<|start_header_id|>",
        "<|end_header_id|>", "<|reserved_special_token_4|>", "<|eot_id|>", "<|reserved_special_token_5|>",
        "<|reserved_special_token_250|>"]
    assert len(tok) == 128256 and tok("Hi")["input_ids"][0] == 128000
    text = tok.apply_chat_template([{"role": "user", "content": "What is shown? "}], tokenize=False,
                                   add_generation_prompt=True)
    assert text == ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is shown?<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids[:2] == [128000, 128006] and 128009 in ids
    assert GenerationConfig.from_pretrained(dirs[LLAMA3]).eos_token_id == [128001, 128009]


def test_vit_gets_the_real_image_processor_and_bart_the_real_generation_settings(dirs):
    vit = "google/vit-base-patch16-224-in21k"
    processor = AutoImageProcessor.from_pretrained(dirs[vit])
    image = torch.randint(0, 256, (3, 300, 200), dtype=torch.uint8)
    pixels = processor(image, return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 224, 224) and list(processor.image_mean) == [0.5] * 3
    assert processor.rescale_factor == pytest.approx(1 / 255)
    out = AutoModel.from_pretrained(dirs[vit])(pixel_values=pixels).last_hidden_state
    assert out.shape == (1, 197, 768 // WIDTH_DIVISOR)
    bart = AutoModelForSeq2SeqLM.from_pretrained(dirs["facebook/bart-base"])
    gen = bart.generation_config
    assert (gen.decoder_start_token_id, gen.forced_bos_token_id, gen.forced_eos_token_id) == (2, 0, 2)
    assert (gen.num_beams, gen.no_repeat_ngram_size) == (4, 3)
    logits = bart(input_ids=torch.tensor([[0, 100, 2]]), decoder_input_ids=torch.tensor([[2, 0]])).logits
    assert logits.shape == (1, 2, 50265) and torch.isfinite(logits).all()


def test_real_configs_and_reduced_widths():
    assert real_config("meta-llama/Llama-2-13b-hf").hidden_size == 5120
    assert real_config(LLAMA3).num_key_value_heads == 8
    assert real_config(LLAMA3).rope_parameters["rope_theta"] == 500000.0
    assert real_config("facebook/bart-base").encoder_layers == 6
    for hub_id, spec in STANDINS.items():
        for width in ("reduced", "full"):
            cfg = standin_config(hub_id, width).to_dict()
            real = real_config(hub_id).to_dict()
            assert all(cfg[k] == LAYERS for k in spec.layers)
            divisor = WIDTH_DIVISOR if width == "reduced" else 1
            assert all(cfg[k] == real[k] // divisor for k in spec.hidden + spec.ffn)
            assert all(cfg[k] == real[k] for k in spec.heads)
    with pytest.raises(RankmixError, match="must be one of reduced, full"):
        standin_config(LLAMA2, "half")


def test_second_build_reuses_the_directory_and_unknown_ids_are_refused(dirs, cache):
    weights = dirs[LLAMA2] / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert build_standin(LLAMA2, cache) == dirs[LLAMA2] and weights.stat().st_mtime_ns == before
    assert [p.name for p in (cache / "models").iterdir() if p.name.startswith(".")] == []
    with pytest.raises(RankmixError, match="no stand-in for 'org/unknown'; known backbones: meta-llama/"):
        build_standin("org/unknown", cache)


def test_llama_standin_through_the_suites_own_loaders(dirs, tmp_path):
    from rankmix.backbones import build_backbone, load_tokenizer

    path = str(dirs[LLAMA2])
    tok = load_tokenizer({"source": "pretrained", "name_or_path": path}, [], tmp_path, model_name=path)
    model = build_backbone({"source": "pretrained", "name_or_path": path, "dtype": "bfloat16"}, tok)
    assert next(model.parameters()).dtype == torch.bfloat16 and tok.pad_token_id == tok.eos_token_id == 2
    batch = tok(["Answer the question: is the dog small?", "yes"], padding=True, return_tensors="pt")
    out = model(**batch, labels=batch["input_ids"])
    assert out.logits.shape[-1] == 32000 and torch.isfinite(out.loss)


def test_internlm2_standin_is_the_repos_layout_read_without_its_code(dirs):
    path = dirs["internlm/internlm2-chat-7b"]
    raw = json.loads((path / "config.json").read_text())
    assert raw["auto_map"]["AutoModelForCausalLM"] == "modeling_internlm2.InternLM2ForCausalLM"
    assert raw["rope_scaling"] == {"type": "dynamic", "factor": 2.0} and raw["bias"] is False
    with safe_open(path / "model.safetensors", "pt") as f:
        assert "model.layers.0.attention.wqkv.weight" in f.keys() and "output.weight" in f.keys()
    tok = AutoTokenizer.from_pretrained(path)
    assert tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>", "<|plugin|>"]) == [92543, 92542, 92538]
    ids = tok("<|im_start|>user\nWhat is shown?<|im_end|>\n")["input_ids"]
    assert ids[:2] == [1, 92543] and 92542 in ids


def test_sdxl_standins_load_as_the_pipeline_and_vae_with_clips_token_layout(cache):
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline

    from rankmix.rehearsal.pipelines import PIPELINES, unet_config

    dirs = {hub_id: build_standin(hub_id, cache) for hub_id in PIPELINES}
    vae = AutoencoderKL.from_pretrained(dirs["madebyollin/sdxl-vae-fp16-fix"])
    pipe = StableDiffusionXLPipeline.from_pretrained(dirs["stabilityai/stable-diffusion-xl-base-1.0"], vae=vae)
    assert vae.config.scaling_factor == 0.13025 and vae.config.block_out_channels == [8, 16, 32, 32]
    assert pipe.unet.config.cross_attention_dim == (pipe.text_encoder.config.hidden_size
                                                   + pipe.text_encoder_2.config.hidden_size) == 2048 // WIDTH_DIVISOR
    assert pipe.unet.config.transformer_layers_per_block == [1, 2, 2] == unet_config()["transformer_layers_per_block"]
    for tok in (pipe.tokenizer, pipe.tokenizer_2):
        ids = tok("A picture of a ikat cat!")["input_ids"]
        assert ids[0] == 49406 and ids[-1] == 49407 and len(tok) == 49408 and tok.model_max_length == 77
        assert tok.unk_token_id not in ids[1:-1]
    assert (pipe.tokenizer.pad_token_id, pipe.tokenizer_2.pad_token_id) == (49407, 0)   # "!" pads the second
    image = pipe("a photo of ikat cat", num_inference_steps=1, height=64, width=64, output_type="pt").images
    assert image.shape == (1, 3, 64, 64) and torch.isfinite(image).all()
