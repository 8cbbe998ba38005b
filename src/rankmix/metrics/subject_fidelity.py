"""DreamBooth's automatic scores of subject-driven generation (Ruiz et al., 2023, §4.1), beside MoSLoRA Tab. 6's
human ratings (the paper prints no automatic score):

- DINO: the mean cosine similarity between the [CLS] embeddings of a self-supervised ViT (``facebook/dino-vits16``)
  of every generated image and every reference image of the subject;
- CLIP-I: the same with CLIP's image embeddings;
- CLIP-T: the mean cosine similarity between each generated image's CLIP image embedding and its prompt's CLIP text
  embedding.

Each encoder is ``source: pretrained`` (``name_or_path``: a hub id or local directory) or ``source: config`` (random
init from ``init_seed``: the tiny scale, which exercises the computation, not the quality). An encoder that cannot be
loaded leaves its scores missing with the reason; nothing stands in for it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from rankmix.backbones import not_loadable


def _encoder(kind: str, spec: Mapping, tokenizer=None):
    """(model, processor) of ``kind`` (``clip`` or ``dino``) from ``spec``; a config-built CLIP reads text with
    ``tokenizer`` (the pipeline's), its vocabulary sized to it."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, ViTConfig, ViTModel

    if spec.get("source") == "config":
        size = int(spec["config"].get("image_size", 32))
        images = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(spec.get("init_seed", 0)))
            if kind == "dino":
                return ViTModel(ViTConfig(**spec["config"]), add_pooling_layer=False), images
            text = dict(spec["config"]["text"])
            if tokenizer is not None:
                text.update(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            max_position_embeddings=tokenizer.model_max_length)
            config = CLIPConfig(text_config=text, vision_config=spec["config"]["vision"])
            return CLIPModel(config), (images, tokenizer)
    name = spec["name_or_path"]
    if kind == "dino":
        from transformers import AutoImageProcessor

        return ViTModel.from_pretrained(name, add_pooling_layer=False), AutoImageProcessor.from_pretrained(name)
    processor = CLIPProcessor.from_pretrained(name)
    return CLIPModel.from_pretrained(name), (processor.image_processor, processor.tokenizer)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def _features(out) -> torch.Tensor:
    """The projected embedding: transformers 5's ``get_*_features`` return an output whose pooler is it."""
    return getattr(out, "pooler_output", out)


def _pairwise_mean(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((_unit(a) @ _unit(b).T).mean())


@torch.no_grad()
def subject_scores(generated: Sequence[Path], prompts: Sequence[str], references: Sequence[Path],
                   encoders: Mapping[str, Mapping], tokenizer=None) -> tuple[dict[str, float], dict[str, str]]:
    """({dino, clip_i, clip_t}, missing cells with their reasons) for the generated images, their prompts and the
    subject's reference images; ``encoders``: {clip: spec, dino: spec} (a kind without a spec is not scored);
    ``tokenizer``: the text side of a config-built CLIP."""
    from PIL import Image

    load = [Image.open(p).convert("RGB") for p in generated]
    refs = [Image.open(p).convert("RGB") for p in references]
    scores, missing = {}, {}
    for kind, spec in encoders.items():
        if not spec:
            continue
        names = ("dino",) if kind == "dino" else ("clip_i", "clip_t")
        try:
            model, processor = _encoder(kind, spec, tokenizer)
        except (OSError, ValueError) as e:
            reason = str(not_loadable(f"task.auto_scores.{kind}.name_or_path", spec.get("name_or_path"), e))
            missing.update(dict.fromkeys(names, reason))
            continue
        model.eval()
        if kind == "dino":
            def embed(images, m=model, p=processor):
                return m(pixel_values=p(images, return_tensors="pt")["pixel_values"]).last_hidden_state[:, 0]

            scores["dino"] = _pairwise_mean(embed(load), embed(refs))
            continue
        images, tokenizer = processor

        def embed(batch, m=model, p=images):
            return _features(m.get_image_features(pixel_values=p(batch, return_tensors="pt")["pixel_values"]))

        gen = embed(load)
        scores["clip_i"] = _pairwise_mean(gen, embed(refs))
        if tokenizer is None:
            missing["clip_t"] = "a config-built CLIP has no tokenizer here"
            continue
        text = tokenizer(list(prompts), padding=True, truncation=True, return_tensors="pt")
        words = _features(model.get_text_features(**{k: v for k, v in text.items() if k != "token_type_ids"}))
        scores["clip_t"] = float((_unit(gen) * _unit(words)).sum(-1).mean())
    return scores, missing
