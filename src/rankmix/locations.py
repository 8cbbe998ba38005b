"""Where rankmix finds its configs and where it writes.

Two roots, never mixed:
- ``SOURCE``: the checkout that holds ``conf/``, ``README.md`` and the lock, next to the package (read-only use).
- ``work_root()``: where runs and results are written and read: ``$RANKMIX_ROOT`` if set, else the current folder.
  The training entry (``paths.root_dir`` in ``conf/paths/default.yaml``), the tables tool and the figures all use
  it, so a second clone sharing one environment writes only into itself, and an installed package never writes
  into site-packages.
"""

from __future__ import annotations

import os
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[2]
CONF_DIR = SOURCE / "conf"


def work_root() -> Path:
    """``$RANKMIX_ROOT`` or the current folder: the root of ``runs/`` and ``results/``."""
    return Path(os.environ.get("RANKMIX_ROOT") or ".").resolve()


def results_root() -> Path:
    return work_root() / "results"


def runs_root() -> Path:
    return work_root() / "runs"
