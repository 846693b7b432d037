"""One way to make a matplotlib figure: imported lazily (extra ``bta[plot]``), without pyplot
(no global figure registry, no GUI backend, safe inside servers)."""

from __future__ import annotations

from typing import Any

__all__ = ["new_figure"]


def new_figure(width: float, height: float, what: str = "plotting") -> Any:
    """A constrained-layout ``matplotlib.figure.Figure``; ImportError names the extra."""
    try:
        from matplotlib.figure import Figure
    except ImportError:  # the optional extra is missing
        raise ImportError(f"{what} needs matplotlib: pip install 'bta[plot]'") from None
    return Figure(figsize=(width, height), layout="constrained")
