"""Per-item scores, each metric's standard error over the test items, and paired tests between runs.

As lm-evaluation-harness does: a metric that is a mean over items gets the closed-form standard error of a mean;
a corpus metric (BLEU-4, CIDEr-D and METEOR of the COCO captions) gets a bootstrap standard error over the items.

**Means** (exact match, ROUGE, VQA accuracy, sentence BLEU, accuracy). Many of the suite's metrics are means of
per-task means (a FLAN cluster: the mean over its tasks; ``average``: the mean over the clusters' rows). Each is
stored as per-item scores ``y`` whose plain mean is the metric (an item's score times its task's share of the
metric, so a task of 5 items weighs as much as one of 50) and the item's stratum (its task). The standard error is
that of a stratified mean, ``sqrt(sum_s n_s · var_s(y) / n²)`` with the sample variance (ddof 1) in each stratum;
with one stratum it is lm-evaluation-harness's ``mean_stderr``: ``stdev(y) / sqrt(n)``. It is the standard error of
the unrounded metric (FLAN's protocol rounds each task to 0.1 before averaging).

**Corpus metrics**: ``BOOTSTRAP_ITERS`` = 100 resamples of the items with replacement (lm-evaluation-harness caps
its BLEU/chrF/TER bootstraps at 100, as they recompute the metric each time), drawn by
``numpy.random.default_rng(BOOTSTRAP_SEED)``; the standard error is the sample std of the 100 values. The same
seed and item count give every run the same resamples, so the stored replicates of two runs on the same test items
are paired.

**Paired tests** (``paired``): two runs on the same test items (the same item ids, hashed in ``items``). Means: a
paired t-test on the per-item differences (stratified as above; with one stratum exactly ``scipy.stats.ttest_rel``;
degrees of freedom n − strata). Corpus metrics: the paired bootstrap (Koehn 2004) on the shared resamples, two-sided
p = 2·min(share of resamples with difference ≤ 0, share with ≥ 0). With several seeds, ``rankmix.tables``
tests over seeds instead (a paired t-test, pairs = seeds).

Storage: the run JSON's ``evaluation.items`` maps ``<stage>/<metric>`` to ``{"method": "mean"|"bootstrap",
"n", "se", "items", "scores"|"replicates", "strata"?}``; arrays are base64 of zlib-compressed little-endian
float32 (scores, replicates) or uint16 (strata) — ``decode`` reads them, ``numpy`` alone suffices.

Scorers report per-item scores with ``record`` (means), ``record_corpus`` (a metric recomputed on resamples) and
``combine`` (a mean of metrics already recorded); outside ``collecting()`` these do nothing.
"""

from __future__ import annotations

import base64
import hashlib
import math
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np

BOOTSTRAP_ITERS = 100
BOOTSTRAP_SEED = 1234
LEVEL = 0.95  # a difference "holds" when the paired test's p < 1 − LEVEL

_collectors: list[Collector] = []


def encode(values, dtype: str = "<f4") -> str:
    return base64.b64encode(zlib.compress(np.asarray(values, dtype=dtype).tobytes(), 9)).decode("ascii")


def decode(text: str, dtype: str = "<f4") -> np.ndarray:
    return np.frombuffer(zlib.decompress(base64.b64decode(text)), dtype=dtype).astype(np.float64 if "f" in dtype
                                                                                     else np.int64)


def items_hash(ids: Sequence) -> str:
    return hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest()[:16]


def stratified_se(y: np.ndarray, strata: np.ndarray | None = None) -> float:
    """Standard error of ``mean(y)`` with items independent within strata (one stratum: ``stdev(y)/sqrt(n)``)."""
    y = np.asarray(y, dtype=np.float64)
    n = len(y)
    if n < 2:
        return float("nan")
    if strata is None:
        return float(np.std(y, ddof=1) / math.sqrt(n))
    total = 0.0
    for s in np.unique(strata):
        part = y[strata == s]
        if len(part) > 1:
            total += len(part) * float(np.var(part, ddof=1))
    return math.sqrt(total) / n


def bootstrap_indices(n: int, iters: int = BOOTSTRAP_ITERS, seed: int = BOOTSTRAP_SEED) -> Iterator[np.ndarray]:
    """The resamples (item indices, with replacement) every run of ``n`` items shares."""
    rng = np.random.default_rng(seed)
    for _ in range(iters):
        yield rng.integers(0, n, n)


def bootstrap_replicates(n: int, metric: Callable[[np.ndarray], float], iters: int = BOOTSTRAP_ITERS,
                         seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    return np.array([float(metric(idx)) for idx in bootstrap_indices(n, iters, seed)])


class Collector:
    """The per-item scores recorded while one evaluation is scored; ``entries()`` is what the run JSON stores."""

    def __init__(self):
        self.means: dict[str, dict] = {}  # name -> {"ids", "y" (sums to the metric × n), "strata" (labels)}
        self.corpus: dict[str, dict] = {}  # name -> {"ids", "replicates"}
        self.prefix = ""

    def entries(self, prefix: str = "") -> dict[str, dict]:
        out = {}
        for name, m in self.means.items():
            labels = {s: i for i, s in enumerate(dict.fromkeys(m["strata"]))}
            strata = np.array([labels[s] for s in m["strata"]])
            y = np.asarray(m["y"], dtype=np.float32).astype(np.float64)
            entry = {"method": "mean", "n": len(y), "se": _round(stratified_se(y, strata if len(labels) > 1 else None)),
                     "items": items_hash(m["ids"]), "scores": encode(y)}
            if len(labels) > 1:
                entry["strata"] = encode(strata, "<u2")
            out[prefix + name] = entry
        for name, c in self.corpus.items():
            r = np.asarray(c["replicates"], dtype=np.float32).astype(np.float64)
            out[prefix + name] = {"method": "bootstrap", "n": len(c["ids"]), "se": _round(float(np.std(r, ddof=1))),
                                  "items": items_hash(c["ids"]), "iters": len(r), "seed": BOOTSTRAP_SEED,
                                  "replicates": encode(r)}
        return out


def _round(x: float) -> float | None:
    return None if math.isnan(x) else float(f"{x:.6g}")


@contextmanager
def collecting() -> Iterator[Collector]:
    """Scorers called inside record their per-item scores into the yielded collector."""
    c = Collector()
    _collectors.append(c)
    try:
        yield c
    finally:
        _collectors.remove(c)


@contextmanager
def prefixed(prefix: str) -> Iterator[None]:
    """Names recorded inside get ``prefix`` (a scorer reused under another name, e.g. ``vqa/``)."""
    c = _collectors[-1] if _collectors else None
    old = c.prefix if c else ""
    if c:
        c.prefix = old + prefix
    try:
        yield
    finally:
        if c:
            c.prefix = old


def record(name: str, ids: Sequence, scores: Sequence[float], strata: Sequence | None = None,
           weights: Mapping | None = None) -> None:
    """Metric ``name`` = sum over strata of ``weights[s]`` × the mean of ``scores`` in stratum ``s`` (no strata: the
    plain mean; no weights: the mean over strata of the stratum means)."""
    if not _collectors or not len(scores):
        return
    c = _collectors[-1]
    strata = list(strata) if strata is not None else [""] * len(scores)
    count: dict = {}
    for s in strata:
        count[s] = count.get(s, 0) + 1
    w = dict(weights) if weights is not None else {s: 1.0 / len(count) for s in count}
    n = len(scores)
    y = [n * w[s] * float(x) / count[s] for x, s in zip(scores, strata, strict=True)]
    c.means[c.prefix + name] = {"ids": list(ids), "y": y, "strata": strata}


def combine(name: str, parts: Mapping[str, float]) -> None:
    """Metric ``name`` = sum of ``weight × part`` over metrics already recorded (means), item by item: an item in
    several parts (ROUGE-1, -2 and -L of one record) adds up its shares, so their correlation is kept."""
    if not _collectors:
        return
    c = _collectors[-1]
    found = {c.prefix + p: w for p, w in parts.items() if c.prefix + p in c.means}
    if len(found) != len(parts):
        return
    share: dict = {}
    stratum: dict = {}
    for p, w in found.items():
        m = c.means[p]
        n = len(m["y"])
        for i, y, s in zip(m["ids"], m["y"], m["strata"], strict=True):
            share[i] = share.get(i, 0.0) + w * y / n  # the item's part of the metric
            stratum.setdefault(i, f"{p}:{s}" if len(found) > 1 and s == "" else s)
    ids = sorted(share, key=lambda i: (str(type(i)), i))
    c.means[c.prefix + name] = {"ids": ids, "y": [len(ids) * share[i] for i in ids], "strata": [stratum[i] for i in ids]}


def record_corpus(name: str, ids: Sequence, metric: Callable[[np.ndarray], float],
                  iters: int = BOOTSTRAP_ITERS) -> np.ndarray | None:
    """A corpus metric: ``metric(indices)`` recomputed on the shared resamples of the ``len(ids)`` items."""
    if not _collectors or not len(ids):
        return None
    c = _collectors[-1]
    reps = bootstrap_replicates(len(ids), metric, iters)
    c.corpus[c.prefix + name] = {"ids": list(ids), "replicates": reps}
    return reps


def record_replicates(name: str, ids: Sequence, replicates: np.ndarray) -> None:
    """Replicates computed by the caller on ``bootstrap_indices(len(ids))`` (e.g. a mean of corpus metrics)."""
    if _collectors:
        c = _collectors[-1]
        c.corpus[c.prefix + name] = {"ids": list(ids), "replicates": np.asarray(replicates, dtype=np.float64)}


# -- reading them back ------------------------------------------------------------------------------------------
def entry(run: dict, metric: str) -> dict | None:
    """The stored per-item entry of ``metric`` (``test/…``) in a run JSON, or None."""
    return ((run.get("evaluation") or {}).get("items") or {}).get(metric)


def item_scores(e: dict) -> np.ndarray:
    """The per-item scores whose mean is the metric (a ``mean`` entry)."""
    return decode(e["scores"])


def strata_of(e: dict) -> np.ndarray | None:
    return decode(e["strata"], "<u2") if e.get("strata") else None


def paired(a: dict, b: dict) -> tuple[float, float, float] | None:
    """(difference a − b of the metric, two-sided p, standard error of the difference) of two runs' entries on the
    same items; None if they are not on the same items."""
    if a.get("method") != b.get("method") or a.get("items") != b.get("items") or a.get("n") != b.get("n"):
        return None
    if a["method"] == "bootstrap":
        if a.get("iters") != b.get("iters") or a.get("seed") != b.get("seed"):
            return None
        d = decode(a["replicates"]) - decode(b["replicates"])
        p = min(1.0, 2 * min(float(np.mean(d <= 0)), float(np.mean(d >= 0))))
        return float(np.mean(d)), p, float(np.std(d, ddof=1))
    sa, sb = strata_of(a), strata_of(b)
    if (sa is None) != (sb is None) or (sa is not None and not np.array_equal(sa, sb)):
        return None
    d = item_scores(a) - item_scores(b)
    return float(np.mean(d)), paired_p(d, sa), stratified_se(d, sa)


def paired_p(d: np.ndarray, strata: np.ndarray | None = None) -> float:
    """Two-sided p of a (stratified) paired t-test that the mean of the differences ``d`` is 0."""
    from scipy import stats

    mean, se = float(np.mean(d)), stratified_se(d, strata)
    if not se or math.isnan(se):
        return 1.0 if mean == 0 else 0.0
    df = len(d) - (len(np.unique(strata)) if strata is not None else 1)
    return float(2 * stats.t.sf(abs(mean / se), max(df, 1)))
