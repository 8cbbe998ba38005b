"""Console output without noise: each Lightning message once, and no advertisement or harmless deprecation lines.

The ``lightning`` package adds its own console handler to the ``lightning`` logger at import, while its messages
also reach the root logger that Hydra configures (console and the run's log file): every line came twice. With
Hydra's handlers present, Lightning's own is removed. Lightning's tip about an optional logging service is dropped,
and so is a deprecation warning Lightning itself triggers inside torch's pytree (not ours to fix, harmless).
"""

from __future__ import annotations

import logging
import warnings

DROPPED = ("💡 Tip:",)


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(DROPPED)


def quiet_lightning() -> None:
    """Call once Lightning is imported (idempotent)."""
    root = logging.getLogger()
    lightning = logging.getLogger("lightning")
    if root.handlers:
        for handler in list(lightning.handlers):
            if type(handler) is logging.StreamHandler:
                lightning.removeHandler(handler)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in logger.filters):
            logger.addFilter(_DropTips())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")
