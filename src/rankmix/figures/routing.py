"""Routing functions's figures."""

from __future__ import annotations

from rankmix.figures.artefacts import method_run, restore_captioner, trained_adapters
from rankmix.figures.core import Drawn, Sources, figure, plt_module

PAIR_LABEL = {"none": "LoRA (no routing)", "proj": "LoRA + x_t(x_v)^T x_v"}


def _routing_pair(src: Sources, table: str = "routing-4") -> tuple[dict[str, dict], dict[str, str]]:
    """Tab. 4's COCO runs with LoRA r 64 without and with x_t(x_v)^T x_v, found by their method: (runs, fn → key)."""
    runs = src.runs(table)
    return runs, {fn: method_run(src, table, runs, "routing", base="lora", r=64, fn=fn) for fn in PAIR_LABEL}


FUNCTION_WORDS = {"a", "an", "the", "at", "is", "are", "and", "of", "on", "in", "with", "to", "its", "it", "by"}


@figure("routing-figb8",
        "Routing Fig. B8: ‖ΔW_down‖ / ‖ΔW_up‖ per GPT-2 layer, with and without routing",
        "With the routing function the down-projection changes more than the up-projection during training (App. B, COCO, LoRA r 64).")
def routing_figb8(src: Sources) -> Drawn:
    import torch

    table = "routing-4"
    _, keys = _routing_pair(src, table)
    plt = plt_module()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained", sharey=True)
    rows, means = [], {}
    for fn, key in keys.items():
        init = torch.load(src.run_file(table, key, "adapter_init.pt"), map_location="cpu")
        final = trained_adapters(src, table, key)
        layers = sorted({k.rsplit(".lora_", 1)[0] for k in final if ".lora_A." in k},
                        key=lambda n: int(n.split(".h.")[1].split(".")[0]))
        for part, ax in zip(("Q", "V"), axes, strict=True):
            ratios = []
            for layer in layers:
                da = (final[f"{layer}.lora_A.weight"] - init[f"{layer}.lora_A.weight"]).float().chunk(2)
                db = (final[f"{layer}.lora_B.weight"] - init[f"{layer}.lora_B.weight"]).float().chunk(2)
                i = 0 if part == "Q" else 1
                ratios.append(float(da[i].norm() / db[i].norm().clamp_min(1e-12)))
            ax.plot(range(len(ratios)), ratios, marker="o", label=PAIR_LABEL[fn])
            ax.set(title=f"LoRA on the {'query' if part == 'Q' else 'value'} mapping", xlabel="GPT-2 layer",
                   xticks=range(len(ratios)))
            rows += [{"panel": part, "series": fn, "x": i, "y": y} for i, y in enumerate(ratios)]
            means[(fn, part)] = sum(ratios) / len(ratios)
    axes[0].set_ylabel("‖ΔW_down‖_F / ‖ΔW_up‖_F")
    axes[1].legend()
    finding = "; ".join(f"{part}: mean ratio {means[('proj', part)]:.2f} with routing vs "
                        f"{means[('none', part)]:.2f} without" for part in ("Q", "V"))
    return Drawn(fig, rows, [f"{table}/{k}" for k in keys.values()], finding + ".")


@figure("routing-fig4",
        "Routing Fig. 4: last-layer attention over a caption, with and without routing",
        "With x_t(x_v)^T x_v the model attends more to the content words and less to uninformative ones (§4.4).")
def routing_fig4(src: Sources) -> Drawn:
    import torch

    from rankmix.adapters import adapter_context
    from rankmix.modules.vision_prefix import visual_features

    table = "routing-4"
    runs, keys = _routing_pair(src, table)
    plt = plt_module()
    fig, axes = plt.subplots(2, 1, figsize=(10, 5.2), layout="constrained", sharex=True, sharey=True)
    rows, words, focus = [], None, {}
    for ax, (fn, key) in zip(axes, keys.items(), strict=True):
        model, tokenizer, dm = restore_captioner(src, table, key, runs[key])
        example = dm.examples["test"][0]
        caption = example["references"][0]
        ids = torch.tensor([dm.encode(caption)])
        pixels = dm.pixels[example["image"]][None]
        model.lm.set_attn_implementation("eager")
        with torch.no_grad():
            cls, x_r = visual_features(model.vision, pixels, model.x_r)
            embeds = torch.cat([cls[:, None], model.lm.get_input_embeddings()(ids)], dim=1)
            with adapter_context(model.lm, x_r=x_r):
                att = model.lm(inputs_embeds=embeds, output_attentions=True).attentions[-1][0]  # (heads, L, L)
        n = att.shape[-1]
        # attention each token receives, averaged over heads and over the later positions that can see it
        received = [float(att[:, j:, j].mean()) for j in range(n)]
        words = ["IMAGE", *tokenizer.convert_ids_to_tokens(ids[0].tolist())]
        ax.bar(range(n), received, color="tab:orange" if key.endswith("proj") else "tab:blue")
        ax.set(title=PAIR_LABEL[fn], ylabel="mean attention")
        rows += [{"panel": fn, "series": w, "x": j, "y": y} for j, (w, y) in enumerate(zip(words, received, strict=True))]
        content = [y for w, y in zip(words[1:], received[1:], strict=True) if w.isalpha() and w not in FUNCTION_WORDS]
        focus[fn] = (received[0], sum(content) / sum(received[1:]))
    axes[-1].set_xticks(range(len(words)), words, rotation=60, ha="right")
    (img_r, content_r), (img_n, content_n) = focus["proj"], focus["none"]
    finding = (f"on the first test image's first reference caption, the content words (all but articles, "
               f"prepositions, 'is', 'and' and end-of-text) get {100 * content_r:.0f}% of the attention on the caption "
               f"with routing vs {100 * content_n:.0f}% without; the image prefix gets {img_r:.3f} vs {img_n:.3f}")
    return Drawn(fig, rows, [f"{table}/{k}" for k in keys.values()], finding + ".")
