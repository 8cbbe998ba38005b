"""Folders in a Hugging Face hub dataset's layout: writing one (parquet files and a README whose ``configs`` map
splits to files) and reading a local one with a cache of its own."""

from __future__ import annotations

from pathlib import Path

from rankmix.atomic import atomic_open


def write_hub_parquet(path: Path, rows: list[dict], features) -> None:
    """``rows`` as a hub parquet file: the arrow table of a ``datasets.Dataset``, its features in the metadata."""
    import datasets
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(datasets.Dataset.from_list(rows, features=features).data.table, path)


def write_hub_readme(path: Path, configs: dict[str, dict[str, str]], note: str) -> None:
    """A hub dataset README whose YAML ``configs`` map each config's splits to file globs
    (``{config: {split: "data/test-*"}}``): what ``datasets.load_dataset(folder, config)`` reads."""
    lines = ["---", "configs:"]
    for name, splits in configs.items():
        lines += [f"- config_name: {name}", "  data_files:"]
        lines += [f"  - split: {split}\n    path: \"{glob}\"" for split, glob in splits.items()]
    with atomic_open(path) as f:
        f.write("\n".join([*lines, "---", "", note, ""]))


def local_dataset_kwargs(path: Path | str) -> dict:
    """``load_dataset`` keywords for a local folder in a hub dataset's layout (nothing for a hub id): a cache of its
    own, named by the folder's absolute path. The shared cache keys a folder with README ``configs`` by its name and
    file patterns alone (datasets 5), so two copies named ``mmlu`` with different contents would both get the first
    one read."""
    import datasets

    from rankmix.config import digest

    if not Path(path).is_dir():
        return {}
    where = str(Path(path).resolve())
    return {"cache_dir": str(Path(datasets.config.HF_DATASETS_CACHE) / "rankmix-local" / digest(where, 16))}
