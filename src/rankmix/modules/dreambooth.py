"""DreamBooth fine-tuning of an SDXL UNet with an adapter method (MoSLoRA Tab. 6), after diffusers'
``train_dreambooth_lora_sdxl.py`` (which MoSLoRA's ``subject_driven_generation/`` forks).

Training (epsilon prediction): the instance images are encoded by the frozen VAE (``latent_dist.sample()`` times
its scaling factor), noised at a uniform timestep of the DDPM schedule built from the pipeline scheduler's config,
and the adapted UNet predicts the noise from the instance prompt's embeddings (both frozen text encoders,
``encode_prompt``) and SDXL's time ids (original size, crop corner, target size); the loss is the MSE. Validation
computes the same loss on the instance images. Test generates ``images_per_prompt`` images for every evaluation
prompt, by ``task.inference``: ``adapted`` (the adapted UNet in memory, mixer included, with the training pipeline's
VAE; the pipeline's sampler, ``num_inference_steps``, ``guidance_scale``, a generator seeded ``seed + i`` per image)
or ``official`` (MoSLoRA's infer.py: ``rankmix.diffusion.official_pipeline``, fp16 with the model's own VAE, the
adapters saved as the official script saves them under ``<run>/official_lora/`` and loaded by diffusers, which drops
the mixer; no generator: torch's global RNG seeded once with ``seed`` before the first prompt; the pipeline's
defaults for everything but ``num_inference_steps``), written as
``<run>/images/<prompt index>_<i>.png`` with ``<run>/images/index.json`` (prompt and file of each image, and the
subject's images): what the rating page (``rankmix.rating``) shows. A LoRA or MoSLoRA UNet adapter is also written
as a diffusers LoRA file (``<run>/diffusers_lora/``, ``rankmix.adapters.export_diffusers``). With
``task.auto_scores`` the test also gives DreamBooth's DINO, CLIP-I and CLIP-T (``rankmix.metrics.subject_fidelity``),
each a mean over the generated images. Their per-item scores (``rankmix.uncertainty``) are per prompt: the mean over
its images (the images of one prompt are not independent of each other; every prompt has as many), whose mean is the
score, with the closed-form standard error over the prompts, given the subject's reference images.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

from rankmix import uncertainty
from rankmix.adapters import adapter_layers
from rankmix.modules.base import AdapterModule
from rankmix.modules.builder import builds

INFERENCE = ("adapted", "official")


class DreamBoothModule(AdapterModule):
    def __init__(self, pipe, optimizer: Mapping, resolution: int, out_dir: str, references: list[str],
                 images_per_prompt: int = 1, num_inference_steps: int = 50, guidance_scale: float = 5.0, seed: int = 0,
                 auto_scores: Mapping | None = None, inference: str = "adapted", official=None):
        super().__init__(pipe.unet, optimizer)
        from diffusers import DDPMScheduler

        self.vae, self.text_encoder, self.text_encoder_2 = pipe.vae, pipe.text_encoder, pipe.text_encoder_2
        self.pipe = pipe
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.resolution = resolution
        self.out_dir = Path(out_dir)
        self.images_per_prompt, self.num_inference_steps = images_per_prompt, num_inference_steps
        self.guidance_scale, self.seed = guidance_scale, seed
        self.references = list(references)
        self.auto_scores = dict(auto_scores or {})
        if inference not in INFERENCE:
            from rankmix.errors import ConfigError

            raise ConfigError("task.inference", inference, f"must be one of {', '.join(INFERENCE)}")
        self.inference, self._official, self._generating = inference, official, None

    def on_test_epoch_start(self):
        """``official``: the LoRA file the official script would write, a fresh fp16 pipeline that loads it, and the
        global RNG seeded once (infer.py passes no generator)."""
        if self.inference != "official":
            return
        from rankmix.diffusion import save_official_lora

        lora_dir = self.out_dir / "official_lora"
        if self.global_rank == 0:
            save_official_lora(self.model, lora_dir)
        self.trainer.strategy.barrier("official_lora")
        self._generating, notes = self._official(lora_dir, self.device)
        self.evaluation_notes["inference"] = {"mode": "official", **notes}
        torch.manual_seed(self.seed)

    def on_test_epoch_end(self):
        super().on_test_epoch_end()
        self._generating = None  # the official pipeline's memory back before anything else runs

    def _loss(self, batch) -> torch.Tensor:
        pixels = batch["pixel_values"].to(self.vae.dtype)
        with torch.no_grad():
            latents = self.vae.encode(pixels).latent_dist.sample() * self.vae.config.scaling_factor
            embeds, _, pooled, _ = self.pipe.encode_prompt(batch["prompt"], device=self.device, num_images_per_prompt=1,
                                                           do_classifier_free_guidance=False)
        noise = torch.randn_like(latents)
        steps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (latents.shape[0],),
                              device=latents.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, steps)
        target = torch.tensor([self.resolution, self.resolution], device=latents.device)
        time_ids = torch.cat([batch["original_size"], batch["crop_top_left"], target.expand(latents.shape[0], 2)], 1)
        pred = self.model(noisy, steps, embeds, added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids.to(
            embeds.dtype)}).sample
        return F.mse_loss(pred.float(), noise.float())

    def training_step(self, batch, batch_idx):
        loss = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(batch["prompt"]))
        return loss

    def _eval_step(self, batch, stage: str):
        if stage == "val":
            self.log("val/loss", self._loss(batch), on_epoch=True, batch_size=len(batch["prompt"]), sync_dist=True)
            return
        folder = self.out_dir / "images"
        folder.mkdir(parents=True, exist_ok=True)
        for prompt, idx in zip(batch["prompt"], batch["idx"].tolist(), strict=True):
            for i in range(self.images_per_prompt):
                with self.timed_inference():
                    if self.inference == "official":  # infer.py: pipe(prompt, num_inference_steps=50)
                        image = self._generating(prompt, num_inference_steps=self.num_inference_steps).images[0]
                    else:
                        generator = torch.Generator(device="cpu").manual_seed(self.seed + i)
                        image = self.pipe(prompt, num_inference_steps=self.num_inference_steps,
                                          height=self.resolution, width=self.resolution,
                                          guidance_scale=self.guidance_scale, generator=generator).images[0]
                name = f"{idx:03d}_{i}.png"
                image.save(folder / name)
                self._records.append({"idx": idx * self.images_per_prompt + i, "prompt": prompt, "file": name,
                                      "prompt_index": idx,
                                      "seed": self.seed + i if self.inference == "adapted" else None})

    def score(self, records: list[dict], stage: str) -> dict[str, float]:
        if stage == "test" and self.global_rank == 0:
            from rankmix.adapters import export_diffusers

            if {layer.peft_export for layer in adapter_layers(self.model).values()} <= {"lora"}:
                export_diffusers(self.model, self.out_dir / "diffusers_lora")  # pipe.load_lora_weights(<dir>)
            index = {"references": self.references, "inference": self.inference, "images": records}
            (self.out_dir / "images" / "index.json").write_text(json.dumps(index, indent=1) + "\n")
            metrics = {"images": float(len(records))}
            if self.auto_scores:
                from rankmix.metrics.subject_fidelity import subject_scores

                scores, missing = subject_scores([self.out_dir / "images" / r["file"] for r in records],
                                                 [r["prompt"] for r in records], self.references, self.auto_scores,
                                                 tokenizer=self.pipe.tokenizer)
                metrics |= scores
                if missing:
                    self.evaluation_notes.setdefault("missing", {}).update(missing)
                if scores:
                    record_prompt_scores(records, self.out_dir / "images", self.references, self.auto_scores,
                                         self.pipe.tokenizer, set(scores))
            return metrics
        return {}


def record_prompt_scores(records: list[dict], folder: Path, references: list[str], encoders: Mapping, tokenizer,
                         names: set[str]) -> None:
    """Per-item scores of the automatic scores ``names``: per prompt (``prompt_index``), the score of its images
    alone, i.e. their mean over those images (``subject_scores`` on them, the encoders loaded once)."""
    from rankmix.metrics.subject_fidelity import subject_scores

    scored = {"dino": {"dino"}, "clip": {"clip_i", "clip_t"}}
    encoders = {k: v for k, v in encoders.items() if v and scored.get(k, set()) & names}  # the ones that loaded
    by_prompt: dict[int, list[dict]] = {}
    for r in records:
        by_prompt.setdefault(int(r["prompt_index"]), []).append(r)
    per_prompt = {}
    with _encoders_loaded_once():
        for index, rows in by_prompt.items():
            per_prompt[index], _ = subject_scores([folder / r["file"] for r in rows], [r["prompt"] for r in rows],
                                                  references, encoders, tokenizer=tokenizer)
    ids = sorted(per_prompt)
    for name in names:
        if all(name in per_prompt[i] for i in ids):
            uncertainty.record(name, [f"prompt/{i}" for i in ids], [per_prompt[i][name] for i in ids])


@contextmanager
def _encoders_loaded_once():
    """``subject_fidelity``'s encoders loaded once per kind and spec while inside (deterministic: pretrained
    weights, or a seeded random init), not once per call."""
    from rankmix.metrics import subject_fidelity

    real, cache = subject_fidelity._encoder, {}

    def cached(kind, spec, tokenizer=None):
        key = (kind, json.dumps(spec, sort_keys=True, default=str), id(tokenizer))
        if key not in cache:
            cache[key] = real(kind, spec, tokenizer)
        return cache[key]

    subject_fidelity._encoder = cached
    try:
        yield
    finally:
        subject_fidelity._encoder = real


@builds(decoder=False)
def build_dreambooth(cfg, run_dir: Path):
    """(LightningModule, data module, injection report, the adapted UNet) for a DreamBooth config."""
    from omegaconf import OmegaConf

    from rankmix.adapters import inject
    from rankmix.data.loading import prepared_datamodule
    from rankmix.diffusion import build_sdxl

    dm = prepared_datamodule(cfg)
    pipe = build_sdxl(OmegaConf.to_container(cfg.backbone, resolve=True), [dm.instance_prompt, *dm.prompts()],
                      run_dir)
    pipe.set_progress_bar_config(disable=True)
    for part in (pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
        part.requires_grad_(False)
    report = inject(pipe.unet, OmegaConf.to_container(cfg.method, resolve=True))
    task = cfg.task
    spec, prompts = OmegaConf.to_container(cfg.backbone, resolve=True), [dm.instance_prompt, *dm.prompts()]

    def official(lora_dir, device):  # task.inference=official: infer.py's pipeline on the same base weights
        from rankmix.diffusion import official_pipeline

        return official_pipeline(spec, prompts, run_dir / "official_pipeline", lora_dir, device)

    module = DreamBoothModule(pipe, OmegaConf.to_container(cfg.optimizer, resolve=True),
                              resolution=task.datamodule.resolution, out_dir=str(run_dir),
                              references=[str(p) for p in dm.reference_images()],
                              images_per_prompt=task.images_per_prompt, num_inference_steps=task.num_inference_steps,
                              guidance_scale=task.guidance_scale, seed=int(cfg.seed),
                              auto_scores=OmegaConf.to_container(task.auto_scores, resolve=True)
                              if task.get("auto_scores") else None,
                              inference=task.inference, official=official)
    return module, dm, report, pipe.unet
