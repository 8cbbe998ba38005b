"""Omni-SMoLA (Wu et al., 2023, arXiv 2312.00968): a soft mixture of low-rank experts, y = W0 x + Σ_blocks Δ(x).

One SMoLA block (the paper's Fig. 5 pseudo-code, App. C), for x of shape (B, L, d_in)::

    Φ        = normalize(routing_mat, over d_in) · routing_scale        # (d_in, E), unit columns · s
    logits   = normalize(x, over d_in) Φ                                # (B, L, E)
    D        = softmax(logits, over tokens L)                           # dispatch
    C        = softmax(logits, over experts E)                          # combine
    slots    = einsum('BLd,BLE->BEd', x, D)                             # raw x, one slot per expert
    slots    = einsum('BEr,Erd->BEd', einsum('BEd,dEr->BEr', slots, smola_left), smola_right)
    Δ(x)     = einsum('BEd,BLE->BLd', slots, C)

with normalize(v) = v · rsqrt(Σ v² + 1e-6) as in vmoe's Soft-MoE router. Tokens outside a block's mask
(padding, given by ``context["attention_mask"]``, and for modality blocks the other modality) are left out of
both softmaxes: they feed no slot and get exactly zero output from the block.

Variants (``variant``): ``mm`` is one block over all tokens (SMoLA_MM); ``o`` sums three blocks (SMoLA_O):
text (text tokens only), vision (vision tokens only) and multimodal (all tokens). The modality masks come from
``context["modality_masks"] = {"text": (B, L), "vision": (B, L)}``, set with ``adapter_context``.

Parameter names (a public API): the multimodal/``mm`` block is ``routing_mat`` (d_in×E), ``routing_scale`` (1,),
``smola_left`` (d_in×E×r), ``smola_right`` (E×r×d_out); the ``o`` variant's other blocks are the submodules
``text`` and ``vision`` with the same names (``text.routing_mat``, ``vision.smola_right``, ...). Init:
routing_mat and smola_left are lecun-normal-like, N(0, 1/d_in) (not truncated); routing_scale = 1;
smola_right = 0, so the wrapped layer starts equal to the base layer. The update depends on the input, so
there is no ΔW to merge.

After each forward, ``last_routing[block]`` (block ``mm``, and ``text``/``vision`` for ``o``) holds detached
per-expert statistics: ``combine_mass`` (E,), the mean combine weight over the block's tokens (sums to 1), and
``dispatch_entropy`` (E,), the entropy (nats) of each expert's dispatch over tokens, averaged over sequences.
``phi_gram(block)`` gives ΦΦᵀ of the normalised routing matrix (App. B, Fig. 4).

Soft-MoE dispatch mixes tokens across the sequence, so in a causal decoder a token's output would depend on
later tokens; ``check_target`` refuses such layers unless ``allow_causal`` is set.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rankmix.adapters.base import AdapterLayer
from rankmix.adapters.registry import register
from rankmix.checked import positive_int
from rankmix.errors import ConfigError

VARIANTS = ("mm", "o")
CAUSAL_MODEL_TYPES = {
    "gpt2", "gpt_neo", "gpt_neox", "gptj", "llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2",
    "gemma3_text", "phi", "phi3", "falcon", "opt", "bloom", "mpt", "codegen", "olmo", "stablelm",
}


def _normalize(v: torch.Tensor, dim: int) -> torch.Tensor:
    return v * torch.rsqrt(v.pow(2).sum(dim, keepdim=True) + 1e-6)


def _add_block(module: nn.Module, d_in: int, d_out: int, num_experts: int, r: int) -> nn.Module:
    """Give ``module`` the four parameters of one SMoLA block."""
    module.routing_mat = nn.Parameter(torch.randn(d_in, num_experts) / math.sqrt(d_in))
    module.routing_scale = nn.Parameter(torch.ones(1))
    module.smola_left = nn.Parameter(torch.randn(d_in, num_experts, r) / math.sqrt(d_in))
    module.smola_right = nn.Parameter(torch.zeros(num_experts, r, d_out))
    return module


def soft_mixture(block: nn.Module, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """One SMoLA block on x (B, L, d_in) over the tokens where ``mask`` (B, L, bool) is true.

    Returns Δ (B, L, d_out) and detached routing statistics per expert.
    """
    phi = _normalize(block.routing_mat, dim=0) * block.routing_scale
    logits = torch.einsum("BLd,dE->BLE", _normalize(x, dim=-1), phi)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # softmaxes in at least fp32
    keep = mask.unsqueeze(-1)
    # Masked softmaxes: excluded tokens get the lowest logit, then weight 0 (a fully masked row gives 0, not NaN).
    logits = logits.masked_fill(~keep, torch.finfo(logits.dtype).min)
    dispatch = (logits.softmax(dim=1) * keep).to(x.dtype)
    combine = (logits.softmax(dim=2) * keep).to(x.dtype)
    routed_input = torch.einsum("BLd,BLE->BEd", x, dispatch)
    lowrank = torch.einsum("BEd,dEr->BEr", routed_input, block.smola_left)
    routed_output = torch.einsum("BEr,Erd->BEd", lowrank, block.smola_right)
    out = torch.einsum("BEd,BLE->BLd", routed_output, combine)
    with torch.no_grad():  # a few reductions, no host sync
        used = mask.any(dim=1, keepdim=True)  # (B, 1): sequences with a token in this block
        entropy = -torch.special.xlogy(dispatch.float(), dispatch.float()).sum(dim=1)  # (B, E)
        stats = {
            "combine_mass": combine.float().sum(dim=(0, 1)) / mask.sum().clamp_min(1),
            "dispatch_entropy": (entropy * used).sum(dim=0) / used.sum().clamp_min(1),
        }
    return out, stats


@register("smola")
class SMoLALayer(AdapterLayer):
    """Omni-SMoLA on one linear layer: y = W0 x + Σ_blocks Δ(x), each block a soft mixture of E low-rank experts over
    the tokens of its modality mask (Soft-MoE dispatch D and combine C, App. C); routed, no fixed ΔW."""
    def __init__(self, base_layer: nn.Module, num_experts: int = 4, r: int = 4, variant: str = "mm",
                 allow_causal: bool = False):
        super().__init__(base_layer)
        self.num_experts = positive_int("num_experts", num_experts)
        self.r = positive_int("r", r)
        if variant not in VARIANTS:
            raise ConfigError("variant", variant, f"must be one of {', '.join(VARIANTS)}")
        if not isinstance(allow_causal, bool):
            raise ConfigError("allow_causal", allow_causal, "must be true or false")
        self.variant = variant
        shape = (self.in_features, self.out_features, self.num_experts, self.r)
        _add_block(self, *shape)
        self.blocks: dict[str, nn.Module] = {"mm": self}
        if variant == "o":
            self.text = _add_block(nn.Module(), *shape)
            self.vision = _add_block(nn.Module(), *shape)
            self.blocks = {"text": self.text, "vision": self.vision, "mm": self}
        self.last_routing: dict[str, dict[str, torch.Tensor]] = {}

    @classmethod
    def check_target(cls, model: nn.Module, name: str, options: dict) -> None:
        if options.get("allow_causal"):
            return
        config = getattr(model, "config", None)
        decoder_only = not getattr(config, "is_encoder_decoder", False) and (
            getattr(config, "is_decoder", False) or type(model).__name__.endswith("ForCausalLM")
            or getattr(config, "model_type", None) in CAUSAL_MODEL_TYPES)
        if decoder_only or ".decoder." in f".{name}":
            raise ConfigError(
                "method.allow_causal", options.get("allow_causal", False),
                f"{name} is in a causal decoder: SMoLA's soft dispatch mixes all tokens of a sequence, so each "
                "token's output would depend on future tokens (a leak); target encoder layers, or set "
                "method.allow_causal=true to accept the leak",
            )

    def _masks(self, shape: torch.Size, device: torch.device) -> dict[str, torch.Tensor]:
        """The token mask of each block, all (B, L) bool."""
        context = self.call_context()
        real = context.get("attention_mask")
        real = torch.ones(shape, dtype=torch.bool, device=device) if real is None else real.to(device).bool()
        if real.numel() != shape.numel():
            raise ValueError(f"smola: attention_mask of shape {tuple(real.shape)} does not match tokens {tuple(shape)}")
        masks = {"mm": real.reshape(shape)}
        if self.variant == "o":
            modality = context.get("modality_masks")
            if modality is None:
                raise RuntimeError(
                    "smola variant 'o' needs per-token modality masks: wrap the call in "
                    "adapter_context(model, modality_masks={'text': (B, L) mask, 'vision': (B, L) mask})"
                )
            for key in ("text", "vision"):
                masks[key] = masks["mm"] & modality[key].to(device).bool().reshape(shape)
        return masks

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() not in (2, 3):
            raise ValueError(f"smola expects input of shape (B, L, d_in) or (L, d_in), got {tuple(x.shape)}")
        tokens = x.to(self.smola_left.dtype).reshape(-1, *x.shape[-2:])  # (L, d) is one sequence
        masks = self._masks(tokens.shape[:2], x.device)
        results = {key: soft_mixture(block, tokens, masks[key]) for key, block in self.blocks.items()}
        if self.updates_state():
            self.last_routing = {key: stats for key, (_, stats) in results.items()}
        out = sum(block_out for block_out, _ in results.values())
        return out.reshape(*x.shape[:-1], self.out_features)

    def required_context(self) -> set[str]:
        return {"modality_masks"} if self.variant == "o" else set()

    @torch.no_grad()
    def phi_gram(self, block: str = "mm") -> torch.Tensor:
        """ΦΦᵀ (E×E) of a block's normalised routing matrix (Omni-SMoLA App. B, Fig. 4); identity = distinct experts."""
        phi = _normalize(self.blocks[block].routing_mat.float(), dim=0)
        return phi.T @ phi

    def routing_stats(self) -> dict:
        """The last forward's per-block expert statistics and each block's ΦΦᵀ, as plain lists."""
        return {block: {**{k: v.tolist() for k, v in self.last_routing.get(block, {}).items()},
                        "phi_gram": self.phi_gram(block).tolist()} for block in self.blocks}

    def reset_routing_stats(self) -> None:
        self.last_routing = {}

    def activated_parameters(self) -> int:
        """Soft routing: a token uses every expert of its blocks (all of ``mm``; for ``o``, its modality's and mm)."""
        return self.trainable_parameters() // len(self.blocks) * min(len(self.blocks), 2)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, variant={self.variant}, num_experts={self.num_experts}, r={self.r}"
