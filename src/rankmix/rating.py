"""Blind pairwise rating of two methods' images (MoSLoRA Tab. 6) on a local web page, and the table of the votes.

- ``pairs``: ``n_prompts`` prompts drawn with ``seed`` from those both runs generated (the paper: "randomly select 8
  prompts"), each with the two runs' image for it and the subject's reference images, copied under
  ``ratings/images/`` so that the folder is complete by itself: ``ratings/pairs.json``.
- ``serve``: ``python -m rankmix.rating serve <table> --rater NAME``. One pair at a time: the reference images, the
  prompt, and the two images in a left/right order drawn from the rater and the pair (the page never says which
  method made which); per criterion three buttons (left better, tie, right better). Each answer is appended to
  ``ratings/<rater>.csv`` as it is given, so nothing is lost when a rater stops, and a rater who comes back goes on
  from the first unanswered question.
- ``summarise``: over every rater's CSV, per criterion, the share of votes where the first method wins, ties and
  loses against the second, Delta = Win − Loss (which the paper's Tab. 6 rows satisfy), and the raters' agreement:
  Fleiss' kappa (``statsmodels``) over the pairs every rater answered.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
import sys
from collections import Counter, defaultdict
from collections.abc import Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from rankmix.errors import DataError, RankmixError

CHOICES = ("left", "tie", "right")
FIELDS = ("rater", "pair", "prompt", "criterion", "left", "right", "choice", "outcome")


def _run_matching(runs: list[dict], match: Mapping) -> dict:
    found = [r for r in runs if all(r["config"]["table"]["match"].get(k) == v for k, v in match.items())]
    if len(found) != 1:
        raise RankmixError(f"the rating needs one finished run with table.match {dict(match)}; found {len(found)}")
    return found[0]


def write_pairs(table_dir: Path, spec: Mapping) -> Path:
    """``ratings/pairs.json`` from the table's finished runs (``spec``: the table's ``ratings`` block); the
    reference images are the first run's subject images."""
    runs = [json.loads(p.read_text()) for p in sorted((table_dir / "runs").glob("*.json"))]
    first, second = (_run_matching(runs, spec[side]) for side in ("first", "second"))
    indexes = [json.loads((Path(r["run"]["run_dir"]) / "images" / "index.json").read_text()) for r in (first, second)]
    by_prompt = [{rec["prompt"]: rec["file"] for rec in index["images"]} for index in indexes]
    common = sorted(set(by_prompt[0]) & set(by_prompt[1]))
    chosen = sorted(random.Random(spec.get("seed", 0)).sample(common, min(int(spec["n_prompts"]), len(common))))
    folder = table_dir / "ratings" / "images"
    folder.mkdir(parents=True, exist_ok=True)

    def copy(source, name: str) -> str:
        shutil.copyfile(source, folder / name)
        return f"images/{name}"

    references = [copy(p, f"reference_{i}{Path(p).suffix}") for i, p in enumerate(indexes[0]["references"])]
    runs_images = [Path(r["run"]["run_dir"]) / "images" for r in (first, second)]
    pairs = [{"pair": i, "prompt": prompt, "references": references,
              "first": copy(runs_images[0] / by_prompt[0][prompt], f"{i:02d}_first.png"),
              "second": copy(runs_images[1] / by_prompt[1][prompt], f"{i:02d}_second.png")}
             for i, prompt in enumerate(chosen)]
    out = table_dir / "ratings" / "pairs.json"
    out.write_text(json.dumps({"first": dict(spec["first"]), "second": dict(spec["second"]),
                               "criteria": list(spec["criteria"]), "pairs": pairs}, indent=1) + "\n")
    return out


def first_on_left(rater: str, pair: int) -> bool:
    return random.Random(f"{rater}/{pair}").random() < 0.5


def outcome(choice: str, first_left: bool) -> str:
    """The first method's result against the second for a vote on the left/right page."""
    if choice == "tie":
        return "tie"
    return "win" if (choice == "left") == first_left else "loss"


def read_votes(ratings_dir: Path) -> list[dict]:
    votes = []
    for path in sorted(Path(ratings_dir).glob("*.csv")):
        with open(path, newline="") as f:
            for line, row in enumerate(csv.DictReader(f), 2):
                if set(FIELDS) - set(row) or row["outcome"] not in ("win", "tie", "loss"):
                    raise DataError(f"{path}:{line}: not a rating row (columns {', '.join(FIELDS)}; outcome "
                                    "win/tie/loss); rate on the page (python -m rankmix.rating serve)")
                votes.append(row)
    return votes


def summarise(ratings_dir: Path, criteria: list[Mapping]) -> dict[str, dict]:
    """``{criterion: {win, tie, loss, delta (percent), votes, raters, kappa}}``; a rater's later vote on the same
    question replaces the earlier one."""
    import numpy as np
    from statsmodels.stats.inter_rater import fleiss_kappa

    latest = {(v["rater"], v["pair"], v["criterion"]): v for v in read_votes(ratings_dir)}
    out = {}
    for c in criteria:
        votes = [v for (_, _, name), v in latest.items() if name == c["name"]]
        counts = Counter(v["outcome"] for v in votes)
        n = len(votes)
        share = {k: 100.0 * counts[k] / n if n else None for k in ("win", "tie", "loss")}
        raters = sorted({v["rater"] for v in votes})
        by_pair = defaultdict(dict)
        for v in votes:
            by_pair[v["pair"]][v["rater"]] = v["outcome"]
        complete = [p for p in by_pair.values() if len(p) == len(raters)]
        kappa = None
        if len(raters) > 1 and complete:
            table = np.array([[list(p.values()).count(k) for k in ("win", "tie", "loss")] for p in complete])
            with np.errstate(divide="ignore", invalid="ignore"):
                kappa = float(fleiss_kappa(table))
            kappa = None if np.isnan(kappa) else kappa  # undefined when every vote is the same
        out[c["name"]] = {**share, "delta": share["win"] - share["loss"] if n else None, "votes": n,
                          "raters": len(raters), "kappa": kappa}
    return out


# -- the page -------------------------------------------------------------------------------------------
PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Rating</title>
<style>body{font-family:sans-serif;margin:2em;max-width:70em}img{width:256px;height:256px;image-rendering:pixelated;
border:1px solid #999;margin:4px}.refs img{width:96px;height:96px}.pair{display:flex;gap:2em}button{margin:.3em;
padding:.5em 1em}#done{display:none}</style></head><body>
<h1>Which image is better?</h1>
<p id="progress"></p>
<div id="task"><p>Reference images of the subject:</p><div class="refs" id="refs"></div>
<p>Prompt: <b id="prompt"></b></p>
<div class="pair"><figure><img id="left" alt="left image"><figcaption>Left</figcaption></figure>
<figure><img id="right" alt="right image"><figcaption>Right</figcaption></figure></div>
<p id="question"></p>
<button id="vote-left" disabled onclick="vote('left')">Left is better</button>
<button id="vote-tie" disabled onclick="vote('tie')">Tie</button>
<button id="vote-right" disabled onclick="vote('right')">Right is better</button></div>
<p id="done">All pairs rated. Thank you.</p>
<script>
let current = null;
async function next() {
  const r = await fetch('/next'); current = await r.json();
  if (current.done) { document.getElementById('task').style.display = 'none';
    document.getElementById('done').style.display = 'block'; document.getElementById('progress').textContent = '';
    return; }
  document.getElementById('prompt').textContent = current.prompt;
  document.getElementById('question').textContent = current.question;
  const left = document.getElementById('left'), right = document.getElementById('right');
  left.src = `/image?pair=${current.pair}&side=left`;
  right.src = `/image?pair=${current.pair}&side=right`;
  document.getElementById('refs').innerHTML = current.references.map(
    (_, i) => `<img src="/reference?i=${i}" alt="reference ${i}">`).join('');
  // no vote before both images of the pair are on screen
  await Promise.all([left.decode(), right.decode()]).catch(() => {});
  document.getElementById('progress').textContent = `Question ${current.number} of ${current.total}`;
  setVoting(true);
}
function setVoting(on) {
  for (const b of document.querySelectorAll('button[id^="vote-"]')) b.disabled = !on;
}
async function vote(choice) {
  setVoting(false);
  await fetch('/vote', {method: 'POST', headers: {'Content-Type': 'application/json'},
    body: JSON.stringify({pair: current.pair, criterion: current.criterion, choice: choice})});
  next();
}
next();
</script></body></html>
"""


class RatingSession:
    """One rater's round over the pairs of ``pairs.json``, recorded in ``ratings/<rater>.csv``."""

    def __init__(self, pairs_file: Path, rater: str):
        if not rater.replace("-", "").replace("_", "").isalnum():
            raise RankmixError(f"rater name {rater!r}: use letters, digits, - and _ (it names the CSV file)")
        self.manifest = json.loads(Path(pairs_file).read_text())
        self.root = Path(pairs_file).parent  # the manifest's image paths are relative to it
        self.rater = rater
        self.csv = Path(pairs_file).parent / f"{rater}.csv"
        self.questions = [(p["pair"], c) for p in self.manifest["pairs"] for c in self.manifest["criteria"]]

    def answered(self) -> set[tuple[int, str]]:
        if not self.csv.is_file():
            return set()
        with open(self.csv, newline="") as f:
            return {(int(r["pair"]), r["criterion"]) for r in csv.DictReader(f)}

    def next_question(self) -> dict:
        done = self.answered()
        todo = [(p, c) for p, c in self.questions if (p, c["name"]) not in done]
        if not todo:
            return {"done": True}
        pair, criterion = todo[0]
        p = self.manifest["pairs"][pair]
        return {"done": False, "pair": pair, "criterion": criterion["name"], "question": criterion["question"],
                "prompt": p["prompt"], "references": p["references"],
                "number": len(self.questions) - len(todo) + 1, "total": len(self.questions)}

    def image(self, pair: int, side: str) -> Path:
        first_left = first_on_left(self.rater, pair)
        p = self.manifest["pairs"][pair]
        return self.root / (p["first"] if (side == "left") == first_left else p["second"])

    def record(self, pair: int, criterion: str, choice: str) -> None:
        if choice not in CHOICES or criterion not in {c["name"] for c in self.manifest["criteria"]}:
            raise ValueError(f"choice {choice!r} / criterion {criterion!r}")
        first_left = first_on_left(self.rater, pair)
        names = [json.dumps(self.manifest[s], sort_keys=True) for s in ("first", "second")]
        row = {"rater": self.rater, "pair": pair, "prompt": self.manifest["pairs"][pair]["prompt"],
               "criterion": criterion, "left": names[0] if first_left else names[1],
               "right": names[1] if first_left else names[0], "choice": choice, "outcome": outcome(choice, first_left)}
        new = not self.csv.is_file()
        with open(self.csv, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            if new:
                writer.writeheader()
            writer.writerow(row)
            f.flush()


def handler_for(session: RatingSession):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def _send(self, body: bytes, kind: str, status: HTTPStatus = HTTPStatus.OK):
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            url = urlparse(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            if url.path == "/":
                return self._send(PAGE.encode(), "text/html; charset=utf-8")
            if url.path == "/next":
                return self._send(json.dumps(session.next_question()).encode(), "application/json")
            try:
                if url.path == "/image":
                    path = session.image(int(query["pair"]), query["side"])
                elif url.path == "/reference":
                    path = session.root / session.manifest["pairs"][0]["references"][int(query["i"])]
                else:
                    return self._send(b"not found", "text/plain", HTTPStatus.NOT_FOUND)
            except (KeyError, IndexError, ValueError):
                return self._send(b"bad request", "text/plain", HTTPStatus.BAD_REQUEST)
            return self._send(path.read_bytes(), "image/png")

        def do_POST(self):
            if urlparse(self.path).path != "/vote":
                return self._send(b"not found", "text/plain", HTTPStatus.NOT_FOUND)
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                session.record(int(body["pair"]), body["criterion"], body["choice"])
            except (KeyError, ValueError, IndexError):
                return self._send(b"bad vote", "text/plain", HTTPStatus.BAD_REQUEST)
            return self._send(b"{}", "application/json")

    return Handler


def serve(pairs_file: Path, rater: str, port: int = 8765, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """The page's server (not yet serving: call ``serve_forever``)."""
    return ThreadingHTTPServer((host, port), handler_for(RatingSession(pairs_file, rater)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rankmix.rating", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="the rating page for one rater")
    s.add_argument("table")
    s.add_argument("--rater", required=True)
    s.add_argument("--port", type=int, default=8765)
    s.add_argument("--results", type=Path, default=Path("results"))
    a = ap.parse_args(argv)
    pairs = a.results / a.table / "ratings" / "pairs.json"
    if not pairs.is_file():
        print(f"rankmix: error: {pairs} not found; run make reproduce-table-{a.table} first", file=sys.stderr)
        return 2
    server = serve(pairs, a.rater, a.port)
    print(f"rankmix: rating page for {a.rater}: http://127.0.0.1:{a.port}/ (Ctrl-C to stop; answers are saved as given)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
