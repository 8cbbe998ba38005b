"""What every figure shares: the registry (``@figure(id, title, claim)``), what a drawing returns, and where a
figure reads its runs (``Sources``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rankmix.errors import RankmixError
from rankmix.results import read_json


class FigureError(RankmixError):
    pass


@dataclass
class Drawn:
    figure: object          # a matplotlib Figure
    rows: list[dict]        # {panel, series, x, y}
    runs: list[str]         # "<table>/<run>" used
    finding: str            # one sentence: what our runs show, with numbers
    scale: str | None = None  # for figures not drawn from table runs (the kernel benchmark)


@dataclass
class Figure:
    id: str
    title: str
    claim: str              # the paper's claim, one sentence
    draw: Callable[[Sources], Drawn]


class Sources:
    """Finished runs of the tables, and their run folders."""

    def __init__(self, results_dir: Path, runs_dir: Path):
        self.results_dir, self.runs_dir = Path(results_dir), Path(runs_dir)

    def runs(self, table: str, need: tuple[str, ...] = ()) -> dict[str, dict]:
        found = {}
        for p in sorted((self.results_dir / table / "runs").glob("*.json")):
            r = read_json(p)
            if r and r.get("status") == "ok":
                found[p.stem] = r
        missing = [k for k in need if k not in found]
        if missing or not found:
            what = f"run {missing[0]!r}" if missing else "runs"
            raise FigureError(f"table {table}: no finished {what} under {self.results_dir / table / 'runs'}; "
                              f"run `make reproduce-table-{table}` first")
        return found

    def run_folder(self, table: str, key: str) -> Path:
        """The folder holding a run's files: its own, or, for a run whose numbers were reused from another run of the
        same computation (``run.reused_from`` in its result), that run's, followed to the run that trained."""
        seen = set()
        while (table, key) not in seen:
            seen.add((table, key))
            source = ((read_json(self.results_dir / table / "runs" / f"{key}.json") or {}).get("run") or {}).get(
                "reused_from")
            if not source:
                break
            table, key = Path(source).parent.parent.name, Path(source).stem
        return self.runs_dir / table / key

    def run_file(self, table: str, key: str, name: str) -> Path:
        path = self.run_folder(table, key) / name
        if not path.is_file():
            raise FigureError(f"run {table}/{key}: {path} not found; it is written by the run itself "
                              f"(`make reproduce-table-{table} ARGS=rerun=true` to make it here)")
        return path


def plt_module():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def run_scale(runs: dict[str, dict]) -> str:
    return "+".join(sorted({r["run"]["scale"] for r in runs.values()}))


FIGURES: dict[str, Figure] = {}


def figure(fid: str, title: str, claim: str):
    """Register the decorated ``draw(src) -> Drawn`` as figure ``fid`` with its title and the paper's claim."""

    def deco(draw: Callable[[Sources], Drawn]):
        if fid in FIGURES:
            raise ValueError(f"figure {fid!r} is registered twice")
        FIGURES[fid] = Figure(fid, title, claim, draw)
        return draw

    return deco
