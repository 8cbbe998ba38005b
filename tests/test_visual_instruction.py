"""MoSLoRA Tab. 5: the LLaVA data encoding (XTuner's), the model composition (XTuner's LLaVAModel in transformers'
classes), QLoRA's refusal on a CPU, the paper rows' per-part hyperparameters (Tab. 8) and a tiny run scored by
lmms-eval's tasks."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from omegaconf import OmegaConf

from conftest import REPO, compose, run_train
from rankmix.backbones import word_level_tokenizer
from rankmix.batching import accumulation
from rankmix.data.llava_instruct import (
    CHAT_TEMPLATES,
    IGNORE_INDEX,
    encode,
    read_records,
    template_markers,
    turns,
)
from rankmix.errors import ConfigError, DataError
from rankmix.llava import build_llava, quantization_config

TINY = {"dtype": "float32",
        "llm": {"source": "config", "init_seed": 0, "config": {
            "model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2}},
        "vision": {"source": "config", "init_seed": 1, "config": {
            "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2,
            "image_size": 16, "patch_size": 8}},
        "projector": {"init_seed": 2}}


def _tokenizer(tmp_path, template="llama3_chat"):
    tok = word_level_tokenizer(["What is it ? <image> A red circle . Yes No"], tmp_path / "tok")
    tok.add_special_tokens({"additional_special_tokens": template_markers(CHAT_TEMPLATES[template])})
    return tok


def test_turns_move_the_image_to_the_front_and_drop_a_leading_answer():
    record = {"conversations": [{"from": "gpt", "value": "ignored"},
                                {"from": "human", "value": "What is it?\n<image>"}, {"from": "gpt", "value": "A circle."},
                                {"from": "human", "value": "Red?"}, {"from": "gpt", "value": "Yes"}]}
    assert turns(record) == [("<image>\nWhat is it?", "A circle."), ("Red?", "Yes")]


@pytest.mark.parametrize("template", ["llama3_chat", "internlm2_chat"])
def test_encoding_is_xtuners_loss_on_answers_and_suffix_image_expanded(tmp_path, template):
    tok = _tokenizer(tmp_path, template)
    image_id = tok.convert_tokens_to_ids("<image>")
    t = CHAT_TEMPLATES[template]
    conv = [("<image>\nWhat is it ?", "A red circle ."), ("Red ?", "Yes")]
    ids, labels = encode(conv, tok, t, max_length=200, image_token_id=image_id, image_tokens=4)
    assert ids[0] == tok.bos_token_id and labels[0] == IGNORE_INDEX
    assert ids.count(image_id) == 4 and all(lab == IGNORE_INDEX for i, lab in zip(ids, labels, strict=True)
                                            if i == image_id)
    learned = tok.decode([i for i, lab in zip(ids, labels, strict=True) if lab != IGNORE_INDEX])
    suffix = t["suffix"]
    assert learned.replace(" ", "") == f"Ared circle.{suffix}Yes{suffix}".replace(" ", "")   # answers + end of turn only
    n_sep = len(tok.encode(t["sep"], add_special_tokens=False)) if t["sep"] else 0
    unexpanded = len(ids) - 3
    cut, cut_labels = encode(conv, tok, t, max_length=unexpanded - 2 - n_sep, image_token_id=image_id, image_tokens=4)
    assert len(cut) == len(ids) - 2 - n_sep and cut_labels == labels[:len(cut)]   # the image counts as one token


def test_bad_records_name_the_file_the_record_and_the_fix(tmp_path):
    (tmp_path / "img").mkdir()
    path = tmp_path / "mix.json"
    path.write_text(json.dumps([{"id": "a", "conversations": [{"from": "human", "value": "hi"},
                                                              {"from": "gpt", "value": "yo"}]},
                                {"id": "b", "image": "coco/1.jpg", "conversations": [
                                    {"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]}]))
    with pytest.raises(DataError, match=r"mix.json: record 1 \(id 'b'\): image 'coco/1.jpg' not found under images_dir"):
        read_records(path, tmp_path / "img")
    path.write_text(json.dumps([{"id": "c", "conversations": [{"from": "user", "value": "q"}]}]))
    with pytest.raises(DataError, match=r"record 0 \(id 'c'\): conversations\[0\] must be \{from: human\|gpt"):
        read_records(path, tmp_path / "img")
    path.write_text(json.dumps([{"id": "e", "conversations": [{"from": "human", "value": "<image>\nq"},
                                                              {"from": "gpt", "value": "a"}]}]))
    with pytest.raises(DataError, match=r"record 0 \(id 'e'\): 1 <image> placeholders.*text-only record none"):
        read_records(path, tmp_path / "img")
    path.write_text('[{"id": "d",}')
    with pytest.raises(DataError, match="line 1: not JSON"):
        read_records(path, tmp_path / "img")


def test_the_model_is_xtuners_llava_with_the_released_projector(tmp_path):
    tok = _tokenizer(tmp_path)
    xtuner = {"projector.model.0.weight": torch.randn(32, 16), "projector.model.0.bias": torch.randn(32),
              "projector.model.2.weight": torch.randn(32, 32), "projector.model.2.bias": torch.randn(32),
              "llm.model.embed_tokens.weight": torch.zeros(1)}   # XTuner's checkpoints hold more than the projector
    torch.save({"state_dict": xtuner}, tmp_path / "iter_2181.pth")
    model = build_llava({**TINY, "projector": {"name_or_path": str(tmp_path), "file": "iter_2181.pth"}}, tok).eval()
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<image>") and model.config.image_seq_length == 4
    pixels = torch.randn(2, 3, 16, 16)
    with torch.no_grad():  # XTuner: projector(visual_encoder(...).hidden_states[-2][:, 1:]), Linear-GELU-Linear
        hidden = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
        expected = torch.nn.functional.linear(torch.nn.functional.gelu(torch.nn.functional.linear(
            hidden, xtuner["projector.model.0.weight"], xtuner["projector.model.0.bias"])),
            xtuner["projector.model.2.weight"], xtuner["projector.model.2.bias"])
        got = torch.stack(model.model.get_image_features(pixel_values=pixels).pooler_output)
    torch.testing.assert_close(got, expected)
    torch.save({"other.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ConfigError, match="holds no XTuner projector"):
        build_llava({**TINY, "projector": {"name_or_path": str(tmp_path), "file": "bad.pth"}}, _tokenizer(tmp_path))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU refusal; on a GPU 4-bit loading runs")
def test_qlora_on_a_cpu_is_refused_with_the_fix():
    spec = OmegaConf.to_container(compose("experiment=moslora-5/qlora", "scale=paper").backbone.llm, resolve=True)
    with pytest.raises(ConfigError, match=r"backbone.llm.quantization.*needs a CUDA GPU.*~backbone.llm.quantization"):
        quantization_config(spec["quantization"])


ROWS = {"lora": ("LLaMA-3+ViT", "lora", "lora", None), "moslora_orthogonal": ("LLaMA-3+ViT", "moslora", "moslora", "orthogonal"),
        "moslora_kaiming": ("LLaMA-3+ViT", "moslora", "moslora", "kaiming"), "qlora": ("InternLM2+ViT", "lora", "lora", None),
        "qmoslora_orthogonal": ("InternLM2+ViT", "moslora", "lora", "orthogonal"),
        "qmoslora_kaiming": ("InternLM2+ViT", "moslora", "lora", "kaiming")}


def test_the_paper_rows_carry_table_8_per_part():
    with open(REPO / "results" / "paper" / "moslora_table8.csv") as f:
        tab8 = {(r["method"], r["hyperparameter"]): r for r in csv.DictReader(f)}
    for row, (model, llm_method, vision_method, init) in ROWS.items():
        c = OmegaConf.to_container(compose(f"experiment=moslora-5/{row}", "scale=paper"), resolve=True)
        assert c["backbone"]["paper_label"] == model
        rank, alpha = tab8[(model, "rank r")], tab8[(model, "alpha")]
        assert (c["method"]["name"], c["method"]["r"], c["method"]["alpha"]) == (
            llm_method, int(rank["value_llm"]), int(alpha["value_llm"]))
        assert (c["vision_method"]["name"], c["vision_method"]["r"], c["vision_method"]["alpha"]) == (
            vision_method, int(rank["value_visual_encoder"]), int(alpha["value_visual_encoder"]))
        assert c["method"].get("mixer_init") == init and c["method"]["dropout"] == c["vision_method"]["dropout"] == 0.05
        assert c["optimizer"]["lr"] == float(tab8[(model, "learning rate")]["value"])
        assert c["task"]["max_epochs"] == int(tab8[(model, "epoch")]["value"])
        assert c["task"]["datamodule"]["batch_size"] == int(tab8[(model, "batch size")]["value"])
        accum = int(tab8[(model, "accumulative (gradient accumulation steps)")]["value"])
        assert c["task"]["global_batch_size"] == 4 * c["task"]["datamodule"]["batch_size"] * accum  # 4 GPUs (§4.2)
        assert accumulation(compose(f"experiment=moslora-5/{row}", "scale=paper", "trainer.devices=4")) == accum
        assert accumulation(compose(f"experiment=moslora-5/{row}", "scale=paper")) == 4 * accum  # one device
        assert (c["optimizer"]["schedule"], c["optimizer"]["warmup_ratio"], c["trainer"]["gradient_clip_val"]) == (
            "cosine", 0.03, 1.0)
        assert c["task"]["datamodule"]["max_length"] == 2048 - 576
        assert bool(c["backbone"]["llm"].get("quantization")) == (model == "InternLM2+ViT")


@pytest.mark.parametrize("llm", ["llama", "internlm2"])
def test_the_default_targets_are_every_linear_layer_of_both_parts(tmp_path, llm):
    from rankmix.adapters import inject

    spec = {**TINY, "llm": {**TINY["llm"], "config": {**TINY["llm"]["config"], "model_type": llm}}}
    tok = _tokenizer(tmp_path)
    model = build_llava(spec, tok)
    model.requires_grad_(False)
    llm_report = inject(model.model.language_model, {"name": "lora", "r": 2, "target_modules": []})
    vision = inject(model.model.vision_tower, {"name": "moslora", "r": 2, "target_modules": []})
    # Tab. 8: q, k, v, o, up, down, gate; InternLM2's q, k, v are its one fused wqkv (XTuner's all-linear targets)
    expected = {"llama": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
                "internlm2": {"wqkv", "wo", "w1", "w2", "w3"}}[llm]
    assert {n.rsplit(".", 1)[-1] for n in llm_report.wrapped} == expected
    assert {n.rsplit(".", 1)[-1] for n in vision.wrapped} == {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"}
    ids = torch.tensor([[tok.bos_token_id, *[model.config.image_token_id] * 4,
                         *tok.encode("What is it ?", add_special_tokens=False)]])
    out = model(input_ids=ids, pixel_values=torch.randn(1, 3, 16, 16), labels=ids)
    out.loss.backward()   # the image features reach the fused projections' adapters
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad and "language_model" in n)


def test_records_without_an_answer_token_within_the_cut_are_left_out_as_xtuner_does(tmp_path):
    from rankmix.data.llava_instruct import answered

    tok, t = _tokenizer(tmp_path), CHAT_TEMPLATES["llama3_chat"]
    image_id = tok.convert_tokens_to_ids("<image>")
    short = {"conversations": [{"from": "human", "value": "What is it ?"}, {"from": "gpt", "value": "Yes"}]}
    long = {"conversations": [{"from": "human", "value": " ".join(["What is it ?"] * 40)},
                              {"from": "gpt", "value": "Yes"}]}
    unanswered = {"conversations": [{"from": "human", "value": "What is it ?"}]}
    prompt_tokens = len(tok.encode(t["instruction"].format(input=turns(long)[0][0]), add_special_tokens=False))
    assert answered(short, tok, t, 200, image_id) and not answered(unanswered, tok, t, 200, image_id)
    assert answered(long, tok, t, prompt_tokens + 2, image_id)   # BOS + prompt: the first answer token fits
    assert not answered(long, tok, t, prompt_tokens + 1, image_id)
    assert encode(turns(long), tok, t, prompt_tokens + 1, image_id, 4)[1] == [IGNORE_INDEX] * (prompt_tokens + 1)


@pytest.mark.slow
def test_a_tiny_run_is_scored_by_lmms_eval_and_the_judged_cells_say_why_not(tmp_path):
    run = run_train(tmp_path, "experiment=moslora-5/moslora_orthogonal", "trainer.max_epochs=1",
                    "task.datamodule.generate.n_train=24", "task.datamodule.generate.n_test=4",
                    "task.datamodule.val_size=4", "task.max_new_tokens=3")
    assert run.returncode == 0, run.stderr[-3000:]
    result = run.result("moslora-5")
    for name in ("mmbench_en", "mmbench_cn", "seedbench", "ai2d", "scienceqa_img", "textvqa", "mme"):
        assert 0.0 <= result["metrics"][f"test/{name}"] <= 100.0, name
        answers = (next((tmp_path / "runs").rglob("benchmarks")) / f"{name}.jsonl").read_text().splitlines()
        assert len(answers) == (8 if name == "mme" else 4)   # MME: a yes and a no question per image
    missing = result["evaluation"]["missing"]
    assert "OPENAI_API_KEY" in missing["mathvista"] and "OPENAI_API_KEY" in missing["mmvet"]
    assert "test/mathvista" not in result["metrics"] and missing["average"] == "needs mathvista, mmvet"
    table = (tmp_path / "results" / "moslora-5" / "table.md").read_text()
    assert "| MM-Vet | missing / 33.4 |" in table
    assert result["params"]["wrapped_layers"] == 2 * 7 + 3 * 6   # LLM: 2 blocks x 7; vision tower: 3 layers x 6


def _oracle(folders: dict[str, str]):
    """An answerer that knows every tiny benchmark's answers: by the image's bytes and the question in the prompt."""
    import hashlib

    import datasets

    from rankmix.data.hub_files import local_dataset_kwargs

    def key(image):
        return hashlib.sha256(image.convert("RGB").tobytes()).hexdigest()

    known: dict[str, list[tuple[str, str, bool]]] = {}   # image -> (question, answer text, multiple choice)
    layouts = {"mmbench_en": ("en", "dev", "image", lambda r: r[r["answer"]]),
               "seedbench": (None, "test", "image", lambda r: r[f"choice_{r['answer'].lower()}"]),
               "ai2d": (None, "test", "image", lambda r: r["options"][int(r["answer"])]),
               "scienceqa_img": ("ScienceQA-IMG", "test", "image", lambda r: r["choices"][r["answer"]]),
               "textvqa": (None, "validation", "image", lambda r: r["answers"][0]),
               "mathvista": (None, "testmini", "decoded_image", lambda r: r["answer"]),
               "mmvet": (None, "test", "image", lambda r: r["answer"]),
               "mme": (None, "test", "image", lambda r: r["answer"])}
    for name, (config, split, column, answer) in layouts.items():
        for r in datasets.load_dataset(folders[name], config, **local_dataset_kwargs(folders[name]))[split]:
            image = r[column][0] if isinstance(r[column], list) else r[column]
            question = r["question"].split(" Please answer")[0]
            mc = name in ("mmbench_en", "seedbench", "ai2d", "scienceqa_img")
            known.setdefault(key(image), []).append((question.lower(), answer(r), mc))

    def answer(prompts, images, max_new_tokens):
        out = []
        for prompt, image in zip(prompts, images, strict=True):
            lines = prompt.splitlines()
            hits = []
            for q, a, mc in known[key(image)]:
                if q not in prompt.lower():
                    continue
                letters = [line[0] for line in lines if line[1:3] == ". " and line[3:] == a]
                if mc == bool(letters):   # a choice question is answered by the letter of its answer's option
                    hits.append(letters[0] if mc else a)
            assert hits, prompt
            out.append(hits[0])
        return out

    return answer


def _tiny_benchmarks(tmp_path) -> dict[str, str]:
    from rankmix.data.llava_like import write_llava_like

    return write_llava_like(tmp_path / "data", n_train=2, n_test=4, size=32, seed=3)["benchmarks"]


def _settings(folders):
    names = {"mmbench_en": "en", "mmbench_cn": "cn", "scienceqa_img": "ScienceQA-IMG"}
    return {b: {"dataset_path": p, **({"dataset_name": names[b]} if b in names else {})} for b, p in folders.items()}


def test_an_oracle_scores_full_marks_through_lmms_eval_and_mme_is_scaled_to_100(tmp_path, monkeypatch):
    from rankmix.benchmarks import multimodal

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    folders = _tiny_benchmarks(tmp_path)
    metrics, missing, notes = multimodal.evaluate(_oracle(folders), _settings(folders), tmp_path / "out",
                                                  judge={"model": "gpt-4-turbo"})
    for name in ("mmbench_en", "seedbench", "ai2d", "scienceqa_img", "textvqa"):
        assert metrics[name] == pytest.approx(100.0), name
    # MME: per category the sum over images of acc + acc+ (at most 200 each), summed, over 2800; 4 test images
    # cover 2 perception and 1 cognition categories here -> 3 x 200 / 2800
    assert metrics["mme"] == pytest.approx(3 * 200 / 2800 * 100)
    assert set(missing) == {"mathvista", "mmvet"} and "offline extraction" in notes["mmbench"]


def test_with_a_judge_the_judged_benchmarks_are_graded_by_it(tmp_path, monkeypatch):
    import http.server
    import sys
    import threading

    from rankmix.benchmarks import multimodal

    asked = []

    class Judge(http.server.BaseHTTPRequestHandler):   # an OpenAI-compatible chat endpoint that grades 1.0
        def do_POST(self):
            asked.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            body = json.dumps({"id": "x", "object": "chat.completion", "model": asked[-1].get("model"),
                               "choices": [{"index": 0, "finish_reason": "stop",
                                            "message": {"role": "assistant", "content": "1.0"}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Judge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("API_TYPE", "local")
    monkeypatch.setenv("LLM_JUDGE_URL", f"http://127.0.0.1:{server.server_port}/v1/chat/completions")
    for name in [m for m in sys.modules if m.startswith("lmms_eval.tasks.")]:  # their judges read the environment
        monkeypatch.delitem(sys.modules, name)                                  # when they are imported
    folders = _tiny_benchmarks(tmp_path)
    wanted = {b: s for b, s in _settings(folders).items() if b in ("mathvista", "mmvet")}
    try:
        metrics, missing, _ = multimodal.evaluate(_oracle(folders), wanted, tmp_path / "out",
                                                  judge={"model": "gpt-4-turbo"})
    finally:
        server.shutdown()
    assert missing == {} and metrics["mmvet"] == pytest.approx(100.0) and metrics["mathvista"] == pytest.approx(100.0)
    assert len(asked) == 4 and {a["model"] for a in asked} == {"gpt-4-turbo"}   # MM-Vet's 4 answers, the paper's judge
