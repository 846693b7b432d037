"""Scale-out on Dask: features, segments, scores and A/B reports over data partitioned by user.

Everything bta computes per user is partitionable by user: events are partitioned by a stable
hash of the user id, each partition is built with the single-machine functions (the same
kernels), and what must be global -- the category vocabulary, the bot-flag median, the default
``as_of``, the per-arm statistics -- is computed once from small per-partition summaries and
merged exactly. The result equals the single-machine result (see each function for the
tolerance on floats).

- :func:`read_events`, :func:`partition_by_user`, :func:`user_bucket`: Parquet datasets into a
  Dask DataFrame, partitioned so that partition ``k`` holds the users of hash bucket ``k``.
- :func:`build_features` -> :class:`PartitionedFeatures` (one FeatureMatrix per partition,
  global columns): ``compute()`` collects, ``to_parquet()`` writes a dataset,
  :func:`read_features` reads it back.
- :func:`segment` -> :class:`PartitionedSegments` (rule, cluster and propensity segments with
  models fitted once and broadcast); :func:`score` for any compiled scorer.
- :func:`summarize` and :func:`ab_report`: per-partition summaries, merged exactly.

Any Dask scheduler works: pass ``client=`` (a ``distributed.Client`` of a local or remote
cluster), or leave it out to use the current one. Needs the ``dask`` extra
(``pip install bta[dask]``).
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

for _name in ("dask", "dask.dataframe", "pyarrow"):
    try:
        _found = importlib.util.find_spec(_name) is not None
    except ImportError:  # the parent package is missing
        _found = False
    if not _found:
        raise ImportError(f"bta.dask needs {_name}: install the extra with "
                          f"pip install 'bta[dask]' (and distributed for a cluster)")

_WHERE = {"read_events": "io", "partition_by_user": "io", "user_bucket": "io",
          "build_features": "features", "PartitionedFeatures": "features",
          "read_features": "features", "segment": "segments",
          "PartitionedSegments": "segments", "score": "segments", "summarize": "ab",
          "ab_report": "ab"}

__all__ = list(_WHERE)


def __getattr__(name: str) -> Any:
    # Submodules load on first use: importing bta.dask stays cheap, and dask itself is
    # imported only when something here is called.
    if name in _WHERE:
        value = getattr(importlib.import_module(f"bta.dask.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'bta.dask' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
