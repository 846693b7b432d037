"""Running graphs on the scheduler the caller chose (a distributed Client, or the current one)."""

from __future__ import annotations

from typing import Any

from bta.errors import ConfigError

__all__ = ["compute", "persist"]


def _check(client: Any) -> None:
    if client is not None and not (hasattr(client, "compute") and hasattr(client, "gather")):
        raise ConfigError(f"client must be a distributed.Client or None (the current "
                          f"scheduler), got {type(client).__name__}")


def compute(*objs: Any, client: Any = None) -> tuple:
    """Compute Dask objects (plain values pass through) with ``client`` or the current scheduler."""
    import dask

    _check(client)
    if client is None:
        return dask.compute(*objs)
    futures = client.compute(list(objs))
    return tuple(client.gather(futures))


def persist(*objs: Any, client: Any = None) -> tuple:
    """Persist Dask objects (in the cluster's memory with a client, else in this process)."""
    import dask

    _check(client)
    if client is None:
        return dask.persist(*objs)
    return tuple(client.persist(list(objs)))
