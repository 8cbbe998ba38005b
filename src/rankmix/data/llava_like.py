"""A made-up visual-instruction set: LLaVA-format conversations about the generated shapes images
(``rankmix.data.shapes``), in XTuner's layout of LLaVA-1.5's mix (``llava_data/LLaVA-Instruct-150K/
llava_v1_5_mix665k.json``, its images as COCO-named JPEGs under ``llava_data/llava_images/coco/train2017/``), and
the nine benchmarks as local copies of their hub repos. ``scale=tiny`` writes it into the cache, ``make rehearse``
for the paper-scale rows (``rankmix.rehearsal.data``); both are read by ``rankmix.data.llava_instruct``.

Each training image gets one record of two or three turns: open questions ("What color is the circle?" → "Red."),
multiple-choice questions in LLaVA-1.5's format (options "A. red" ..., then "Answer with the option's letter from
the given choices directly." → "B"), and short answers ("Is there a red circle in the image?" + "Answer the
question using a single word or phrase." → "Yes").
A few records are text only (no ``image`` key), as in the mix. Deterministic from ``seed``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from rankmix.atomic import atomic_open, one_writer
from rankmix.config import digest
from rankmix.data.fingerprints import code_fingerprint
from rankmix.data.shapes import CELLS, COLOURS, SHAPES, generate_shapes

MC_SUFFIX = "Answer with the option's letter from the given choices directly."
SHORT_SUFFIX = "Answer the question using a single word or phrase."
LETTERS = "ABCD"


def facts(objects: list[dict], rng: random.Random) -> list[tuple[str, str, list[str]]]:
    """(question, answer, distractor pool) about one image's ``objects`` (answers depend on the image only)."""
    out = [("How many shapes are there?", str(len(objects)), ["1", "2", "3", "4"])]
    counts = {s: sum(o["shape"] == s for o in objects) for s in SHAPES}
    for o in objects:
        if counts[o["shape"]] == 1:
            out.append((f"What color is the {o['shape']}?", o["colour"], list(COLOURS)))
            out.append((f"Where is the {o['shape']}?", CELLS[tuple(o["cell"])], list(CELLS.values())))
    cell = rng.choice(list(CELLS))
    at = next((o["shape"] for o in objects if tuple(o["cell"]) == cell), "nothing")
    out.append((f"What shape is at the {CELLS[cell]}?", at, [*SHAPES, "nothing"]))
    shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
    present = any(o["shape"] == shape and o["colour"] == colour for o in objects)
    out.append((f"Is there a {colour} {shape} in the image?", "Yes" if present else "No", ["Yes", "No"]))
    return out


def multiple_choice(question: str, answer: str, pool: list[str], rng: random.Random, n: int = 4
                    ) -> tuple[list[str], str]:
    """(options, the answer's letter): the answer and up to ``n`` − 1 distractors from ``pool``, shuffled."""
    options = [answer, *rng.sample([p for p in pool if p != answer], min(n - 1, len(pool) - 1))]
    rng.shuffle(options)
    return options, LETTERS[options.index(answer)]


def mc_prompt(question: str, options: list[str]) -> str:
    return "\n".join([question, *(f"{LETTERS[i]}. {o}" for i, o in enumerate(options)), MC_SUFFIX])


def write_llava_like(root: Path, n_train: int, n_test: int, size: int = 32, seed: int = 0, text_only: int = 4
                     ) -> dict[str, str]:
    """Write the set under ``root/llava-<digest>/`` (once): {``train_file``, ``images_dir``, ``benchmarks``: {name:
    folder} (``write_vl_benchmarks``, about the test images)}."""
    settings = {"n_train": n_train, "n_test": n_test, "size": size, "seed": seed, "text_only": text_only,
                "code": code_fingerprint(__name__, "rankmix.data.shapes", "rankmix.data.hub_files")}   # an edited writer writes it again
    base = Path(root) / f"llava-{digest(settings, 10)}"
    with one_writer(base):   # runs side by side: one writes, the others then find it written
        return _write(base, n_train, n_test, size, seed, text_only)


def _write(base: Path, n_train: int, n_test: int, size: int, seed: int, text_only: int) -> dict:
    from PIL import Image

    shapes = generate_shapes(base / "shapes", {"train": n_train, "val": 0, "test": n_test}, size=size, seed=seed,
                             noise=0.0)
    data = base / "llava_data"
    out = {"train_file": str(data / "LLaVA-Instruct-150K" / "llava_v1_5_mix665k.json"),
           "images_dir": str(data / "llava_images"),
           "benchmarks": write_vl_benchmarks(base / "benchmarks", shapes / "scenes.json", shapes / "images", seed)}
    if Path(out["train_file"]).is_file():
        return out
    rng = random.Random(seed)
    scenes = json.loads((shapes / "scenes.json").read_text())
    records = []
    for img_id, scene in scenes.items():
        if scene["split"] != "train":
            continue
        conv = []
        known = facts(scene["objects"], rng)
        for k, (q, a, pool) in enumerate(rng.sample(known, min(len(known), rng.randint(2, 3)))):
            style = rng.choice(("open", "mc", "short"))
            if style == "mc":
                options, letter = multiple_choice(q, a, pool, rng)
                text, answer = mc_prompt(q, options), letter
            elif style == "short":
                text, answer = f"{q}\n{SHORT_SUFFIX}", a
            else:
                text, answer = q, a[0].upper() + a[1:] + "."
            conv += [{"from": "human", "value": ("<image>\n" if k == 0 else "") + text}, {"from": "gpt", "value": answer}]
        records.append({"id": img_id, "image": f"{img_id}.png", "conversations": conv})
    for i in range(text_only):
        colour = rng.choice(list(COLOURS))
        records.append({"id": f"text_{i}", "conversations": [
            {"from": "human", "value": f"Name a shape that could be {colour}."},
            {"from": "gpt", "value": f"A {colour} {rng.choice(SHAPES)}."}]})
    rng.shuffle(records)
    for i, r in enumerate(records):   # XTuner's image paths: coco/train2017/<12-digit id>.jpg under images_dir
        if r.get("image"):
            name = f"coco/train2017/{100000 + i:012d}.jpg"
            (data / "llava_images" / name).parent.mkdir(parents=True, exist_ok=True)
            Image.open(shapes / "images" / r["image"]).convert("RGB").save(data / "llava_images" / name, quality=95)
            r["image"] = name
    with atomic_open(Path(out["train_file"])) as f:   # written last: its presence says the set is complete
        f.write(json.dumps(records, indent=1) + "\n")
    return out


# -- the nine benchmarks, each in its hub repo's layout with the columns lmms-eval's task reads ------------------
MME_PERCEPTION = ("existence", "count", "position", "color")   # MME's own category names
MME_COGNITION = ("numerical_calculation",)


def _bench_rows(scenes: dict, images_dir: Path, rng: random.Random) -> dict[str, list[dict]]:
    """Rows of every benchmark about the test images: each question's answer depends on the image only."""
    from PIL import Image

    rows = {k: [] for k in ("mmbench", "seedbench", "ai2d", "scienceqa", "textvqa", "mathvista", "mmvet", "mme")}
    tests = [(k, v) for k, v in scenes.items() if v["split"] == "test"]
    for n, (img_id, scene) in enumerate(tests):
        image = Image.open(images_dir / f"{img_id}.png").convert("RGB")
        q, a, pool = rng.choice([f for f in facts(scene["objects"], rng) if len(f[2]) >= len(LETTERS)])
        options, letter = multiple_choice(q, a, pool, rng)
        rows["mmbench"].append({"index": n, "question": q, "hint": None if n % 2 else "Look at the shapes.",
                                **{LETTERS[i]: o for i, o in enumerate(options)}, "answer": letter,
                                "category": "attribute_recognition", "L2-category": "finegrained_perception",
                                "source": "shapes", "split": "dev", "comment": "", "image": image})
        rows["seedbench"].append({"question": q, **{f"choice_{c.lower()}": o for c, o in zip(LETTERS, options,
                                  strict=True)}, "answer": letter, "data_type": "image",
                                  "question_id": str(n), "image": [image]})
        rows["ai2d"].append({"question": q, "options": options, "answer": str(LETTERS.index(letter)), "image": image})
        rows["scienceqa"].append({"image": image, "question": q, "choices": options, "answer": LETTERS.index(letter),
                                  "hint": "" if n % 2 else "The picture shows coloured shapes."})
        q2, a2, _ = rng.choice(facts(scene["objects"], rng))
        rows["textvqa"].append({"question_id": n, "question": q2.lower(), "answers": [a2] * 10, "image": image,
                                "image_id": img_id, "ocr_tokens": []})
        count = len(scene["objects"])
        rows["mathvista"].append({
            "pid": str(n + 1), "question": "How many shapes are there?", "decoded_image": image, "choices": None,
            "unit": None, "precision": None, "answer": str(count), "question_type": "free_form",
            "answer_type": "integer", "caption": "", "ocr": "", "query": "How many shapes are there?",
            "metadata": {"split": "testmini", "language": "english", "source": "shapes", "category": "general-vqa",
                         "task": "figure question answering", "context": "synthetic scene", "grade": "elementary school",
                         "skills": ["arithmetic reasoning"]}})
        rows["mmvet"].append({"question_id": f"v{n}", "question": q, "answer": a, "capability": "rec", "image": image})
        o = scene["objects"][0]
        other = next(c for c in COLOURS if c != o["colour"])
        category = (MME_COGNITION[n // 2 % len(MME_COGNITION)] if n % 2 else MME_PERCEPTION[n // 2 % len(MME_PERCEPTION)])
        for colour, answer in ((o["colour"], "Yes"), (other, "No")):  # MME's pairs: one yes, one no per image
            rows["mme"].append({"question_id": f"{category}/{img_id}.png", "question": f"Is there a {colour} "
                                f"{o['shape']} in the image? Please answer yes or no.", "answer": answer,
                                "category": category, "image": image})
    return rows


def write_vl_benchmarks(root: Path, scenes_file: Path, images_dir: Path, seed: int = 0) -> dict[str, str]:
    """The tiny benchmarks under ``root``, one folder per hub repo (README configs + parquet, as on the hub):
    {benchmark name: folder}. Column types as the repos': PIL images, SEED-Bench's image list, MathVista's
    ``decoded_image`` and ``metadata`` struct."""
    from datasets import Features, Image, Sequence, Value

    from rankmix.data.hub_files import write_hub_parquet, write_hub_readme

    root = Path(root)
    folders = {"mmbench_en": root / "MMBench", "mmbench_cn": root / "MMBench", "seedbench": root / "SEED-Bench",
               "ai2d": root / "ai2d", "scienceqa_img": root / "ScienceQA", "textvqa": root / "textvqa",
               "mathvista": root / "MathVista", "mmvet": root / "MMVet", "mme": root / "MME"}
    if (root / "done").is_file():
        return {k: str(v) for k, v in folders.items()}
    rows = _bench_rows(json.loads(Path(scenes_file).read_text()), Path(images_dir), random.Random(seed))
    s, i64 = Value("string"), Value("int64")
    mmbench = Features({"index": i64, "question": s, "hint": s, **{c: s for c in LETTERS}, "answer": s,
                        "category": s, "L2-category": s, "source": s, "split": s, "comment": s, "image": Image()})
    for config in ("en", "cn"):
        write_hub_parquet(root / "MMBench" / config / "dev-00000-of-00001.parquet", rows["mmbench"], mmbench)
    write_hub_readme(root / "MMBench" / "README.md", {c: {"dev": f"{c}/dev-*"} for c in ("en", "cn")}, NOTE)
    layouts = {  # folder, config, split, rows, features
        "SEED-Bench": ("default", "test", rows["seedbench"], Features({
            "question": s, **{f"choice_{c.lower()}": s for c in LETTERS}, "answer": s, "data_type": s,
            "question_id": s, "image": Sequence(Image())})),
        "ai2d": ("default", "test", rows["ai2d"], Features({"question": s, "options": Sequence(s), "answer": s,
                                                             "image": Image()})),
        "ScienceQA": ("ScienceQA-IMG", "test", rows["scienceqa"], Features({
            "image": Image(), "question": s, "choices": Sequence(s), "answer": i64, "hint": s})),
        "textvqa": ("default", "validation", rows["textvqa"], Features({
            "question_id": i64, "question": s, "answers": Sequence(s), "image": Image(), "image_id": s,
            "ocr_tokens": Sequence(s)})),
        "MathVista": ("default", "testmini", rows["mathvista"], Features({
            "pid": s, "question": s, "decoded_image": Image(), "choices": Sequence(s), "unit": s,
            "precision": Value("float64"), "answer": s, "question_type": s, "answer_type": s, "caption": s, "ocr": s,
            "query": s, "metadata": {"split": s, "language": s, "source": s, "category": s, "task": s, "context": s,
                                     "grade": s, "skills": Sequence(s)}})),
        "MMVet": ("default", "test", rows["mmvet"], Features({"question_id": s, "question": s, "answer": s,
                                                              "capability": s, "image": Image()})),
        "MME": ("default", "test", rows["mme"], Features({"question_id": s, "question": s, "answer": s,
                                                          "category": s, "image": Image()})),
    }
    for folder, (config, split, table, features) in layouts.items():
        sub = config if config != "default" else "data"
        write_hub_parquet(root / folder / sub / f"{split}-00000-of-00001.parquet", table, features)
        write_hub_readme(root / folder / "README.md", {config: {split: f"{sub}/{split}-*"}}, NOTE)
    (root / "done").write_text("")
    return {k: str(v) for k, v in folders.items()}


NOTE = "A generated tiny stand-in (rankmix.data.llava_like): questions about generated shapes images."
