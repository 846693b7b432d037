"""Right to erasure across stores and logs (:func:`erase`, :class:`ErasureReceipt`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from bta.errors import ConfigError
from bta.ids import canonical_id, canonical_ids

__all__ = ["ErasureReceipt", "erase"]


# ---- erasure -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ErasureReceipt:
    """What :func:`erase` did, place by place.

    Attributes
    ----------
    user_id : object
        The id erased (as the places hold it: a pseudonym where ids are pseudonymized).
    places : tuple of str
        A description of each place, in the order given.
    held : tuple of bool or None
        Whether each place held the user (None: the place does not say).
    results : tuple
        For places that are immutable (an ``EventLog``, a ``SegmentBook``), the new object
        without the user, which the caller must use from now on; for the others, the place
        itself.
    """

    user_id: Any
    places: tuple[str, ...]
    held: tuple[bool | None, ...]
    results: tuple[Any, ...]

    @property
    def held_by(self) -> tuple[str, ...]:
        """The places that held the user."""
        return tuple(p for p, h in zip(self.places, self.held) if h)


def _held_before(place: Any, user_id: Any) -> bool | None:
    """For an immutable place, whether it holds ``user_id`` (None: cannot tell)."""
    try:
        if hasattr(place, "user_code") and hasattr(place, "quarantine"):  # EventLog
            col = place.user_column
            key = canonical_id(user_id)
            in_q = (key is not None and col in place.quarantine.columns
                    and bool((canonical_ids(place.quarantine[col].to_numpy(dtype=object))
                              == key).any()))
            return bool(place.user_code(user_id) >= 0) or in_q
        if hasattr(place, "segments_of") and hasattr(place, "users"):  # SegmentBook
            return bool(place._rows_of(np.array([user_id], dtype=object))[0] >= 0)
        if hasattr(place, "user_rows") and hasattr(place, "feature_names"):  # FeatureMatrix
            return bool(place.user_rows(user_id)[0] >= 0)
    except Exception:  # noqa: BLE001 - a receipt detail, never a reason to skip the erasure
        return None
    return None


def erase(user_id: Any, *places: Any) -> ErasureReceipt:
    """Remove ``user_id`` from every place given; a receipt says which held the user.

    Parameters
    ----------
    user_id : object
        The id as bta holds it (apply :func:`pseudonymize` first when ids were pseudonymized
        at ingestion).
    *places : objects with an ``erase`` method
        Event logs, feature matrices, ``OnlineProfiles``, profile stores (memory, Redis),
        segment books,
        engines, decision logs (``DecisionLog``: its buffer and its own Parquet files; other
        copies are rewritten with :func:`bta.serve.erase_parquet`), privacy policies. Mutable
        places are erased in place; immutable ones (``EventLog``, ``FeatureMatrix``,
        ``SegmentBook``) return a new object, found in ``receipt.results``. Every place finds
        the user by canonical id (:mod:`bta.ids`): ``erase("0", log)`` erases user 0 of a log
        of integer ids.

    Returns
    -------
    ErasureReceipt

    Raises
    ------
    ConfigError
        When a place has no ``erase`` method (checked before anything is erased).
    StoreError
        When some places failed (e.g. Redis unreachable): every place is still tried, and the
        error lists the failures; ``error.receipt`` holds the receipt of what succeeded.

    Notes
    -----
    An :class:`~bta.serve.Engine` forgets only its own state (frequency-cap history); pass its
    store too. Opt-outs are kept (see :meth:`PrivacyPolicy.erase`).
    """
    from bta.errors import StoreError

    for i, place in enumerate(places):
        if not callable(getattr(place, "erase", None)):
            raise ConfigError(f"places[{i}] must have an erase method, got "
                              f"{type(place).__name__}")
    names, held, results, failures = [], [], [], []
    for i, place in enumerate(places):
        names.append(f"{i}:{type(place).__name__}")
        before = _held_before(place, user_id)
        try:
            out = place.erase(user_id)
        except Exception as exc:  # noqa: BLE001 - try every place, then report all failures
            failures.append(f"{names[-1]}: {type(exc).__name__}: {exc}")
            held.append(None)
            results.append(place)
            continue
        if isinstance(out, (bool, np.bool_)):
            held.append(bool(out))
            results.append(place)
        elif out is None:
            held.append(None)
            results.append(place)
        else:
            held.append(before)
            results.append(out)
    receipt = ErasureReceipt(user_id, tuple(names), tuple(held), tuple(results))
    if failures:
        err = StoreError(f"erasure of user {user_id!r} is incomplete; failed places: "
                         + "; ".join(failures))
        err.receipt = receipt  # type: ignore[attr-defined]
        raise err
    return receipt
