"""COCO caption metrics through pycocoevalcap, as the COCO evaluation server and the official ``eval_coco.py``:
BLEU-4, METEOR, ROUGE-L, CIDEr (CIDEr-D) and SPICE on PTB-tokenised captions, each × 100, and their mean
(routing functions Tab. 4, "Avg.").

The PTB tokenizer, METEOR and SPICE run on Java; SPICE also needs the Stanford CoreNLP 3.6.0 jars that
pycocoevalcap downloads at first use. A metric that cannot run is left out with the reason
(``missing[name]``) — never replaced by another number — and "Avg." then is missing too. Without Java the
captions are tokenised by ``python_ptb`` (lower-case, punctuation split off and dropped, as the PTB tokenizer's
output), and ``notes["tokenizer"]`` says so. Each metric's bootstrap standard error over the images is recorded
for the run's table (``rankmix.uncertainty``; only inside its ``collecting()``, i.e. at test).
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
from pathlib import Path

import numpy as np

from rankmix.errors import first_line
from rankmix.uncertainty import record_replicates

FIVE = ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE")
CHEAP = ("BLEU-4", "ROUGE-L", "CIDEr")  # no Java process to start: what validation epochs compute
# pycocoevalcap's PTBTokenizer drops these tokens after tokenising.
PUNCTUATIONS = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--",
                "...", ";"}
BRACKETS = {"(", ")", "[", "]", "{", "}"}  # PTB writes them -LRB- ... and then drops them


def java_missing() -> str | None:
    if shutil.which("java") is None:
        return "Java not found on PATH (apt install default-jre-headless)"
    return None


def spice_missing() -> str | None:
    """Why SPICE cannot run here, or None. Never downloads: a run must not hang on an unreachable network."""
    if java_missing():
        return java_missing()
    from pycocoevalcap import spice

    jar = Path(spice.__file__).parent / "lib" / "stanford-corenlp-3.6.0.jar"
    if not jar.is_file():
        return ("Stanford CoreNLP 3.6.0 jars not installed (fetch them where the network is reachable: "
                "python -m pycocoevalcap.spice.get_stanford_models)")
    return None


def python_ptb(text: str) -> str:
    """The PTB tokenizer's output without Java: lower-cased words, punctuation split off and dropped."""
    tokens = re.findall(r"[a-z0-9]+|'[a-z]+|[^\sa-z0-9']+|'", text.lower())
    return " ".join(t for t in tokens if t not in PUNCTUATIONS and t not in BRACKETS)


def tokenize(captions: dict, java: bool = True) -> tuple[dict, str]:
    """``{id: [caption, ...]}`` → the same, PTB-tokenised; and which tokenizer ran."""
    if not java:
        return {k: [python_ptb(c) for c in v] for k, v in captions.items()}, "python_ptb"
    if java_missing():
        return {k: [python_ptb(c) for c in v] for k, v in captions.items()}, "python_ptb (no Java)"
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    return PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in captions.items()}), "ptb"


def _scorer(name: str):
    if name == "BLEU-4":
        from pycocoevalcap.bleu.bleu import Bleu

        return Bleu(4)
    if name == "METEOR":
        from pycocoevalcap.meteor.meteor import Meteor

        return Meteor()
    if name == "ROUGE-L":
        from pycocoevalcap.rouge.rouge import Rouge

        return Rouge()
    if name == "CIDEr":
        from pycocoevalcap.cider.cider import Cider

        return Cider()
    from pycocoevalcap.spice.spice import Spice

    return Spice()


def score_captions(records: list[dict], metrics: tuple[str, ...] = FIVE, java_tokenizer: bool = True
                   ) -> tuple[dict[str, float], dict]:
    """(scores × 100, notes) for records ``{prediction, references}``; notes: ``tokenizer`` and ``missing``.
    ``java_tokenizer=False`` tokenises with ``python_ptb`` (validation epochs: no Java start-up)."""
    if not records:
        return {}, {"missing": {m: "no test records" for m in metrics}}
    refs = tokenize({i: r["references"] for i, r in enumerate(records)}, java_tokenizer)[0]
    hyps, tokenizer = tokenize({i: [r["prediction"]] for i, r in enumerate(records)}, java_tokenizer)
    blocked = {"METEOR": java_missing(), "SPICE": spice_missing()}
    scores, missing, replicates = {}, {}, {}
    ids = [r.get("idx", i) for i, r in enumerate(records)]
    for name in metrics:
        if blocked.get(name):
            missing[name] = blocked[name]
            continue
        scorer = _scorer(name)
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # BLEU prints its n-gram counts
                value, per_item = scorer.compute_score(refs, hyps)
        except Exception as e:  # noqa: BLE001  (a Java tool failing at run time: report, don't crash the run)
            missing[name] = f"{type(e).__name__}: {first_line(e)}"
            if name == "METEOR":
                scorer.__del__()
            continue
        try:
            replicates[name] = _bootstrap(name, scorer, refs, hyps, per_item, ids)
        except Exception:  # noqa: BLE001  (no standard error then; the metric itself stands)
            replicates[name] = None
        finally:
            if name == "METEOR":  # stop its Java process now rather than at garbage collection
                scorer.__del__()
        scores[name] = 100.0 * float(value[3] if name == "BLEU-4" else value)
    if set(FIVE) <= set(metrics):
        if all(m in scores for m in FIVE):
            scores["Avg."] = sum(scores[m] for m in FIVE) / len(FIVE)
            if all(replicates.get(m) is not None for m in FIVE):  # the same resamples: Avg.'s own replicates
                record_replicates("Avg.", ids, np.mean([replicates[m] for m in FIVE], axis=0))
        else:
            missing["Avg."] = "the mean of the five needs " + ", ".join(m for m in FIVE if m not in scores)
    return scores, {"tokenizer": tokenizer, "missing": missing}


def _bootstrap(name: str, scorer, refs: dict, hyps: dict, per_item, ids: list) -> np.ndarray | None:
    """Bootstrap replicates × 100 of one metric on the shared resamples (``rankmix.uncertainty``): ROUGE-L and SPICE
    are means of per-image scores, resampled as such; BLEU-4, METEOR and CIDEr-D (document frequencies from the
    resampled references) are recomputed on each resample."""
    from rankmix.uncertainty import record_corpus

    keys = list(refs)
    if name in ("ROUGE-L", "SPICE"):
        items = np.array([float(x["All"]["f"]) if isinstance(x, dict) else float(x) for x in per_item])
        return record_corpus(name, ids, lambda idx: 100.0 * float(np.mean(items[idx])))

    def metric(idx) -> float:
        r = {k: refs[keys[j]] for k, j in enumerate(idx)}
        h = {k: hyps[keys[j]] for k, j in enumerate(idx)}
        with contextlib.redirect_stdout(io.StringIO()):
            value = scorer.compute_score(r, h)[0]
        return 100.0 * float(value[3] if name == "BLEU-4" else value)

    return record_corpus(name, ids, metric)
