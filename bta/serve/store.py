"""Profile stores: where the Engine reads a user's features and segments per request.

A store returns a :class:`Profile`: the user's stored feature entries in a fixed column layout
(``feature_names``) and the user's segment flags over ``segment_names``. The in-process
:class:`MemoryProfileStore` wraps :class:`~bta.features.OnlineProfiles` and a
:class:`~bta.segment.book.SegmentBook`; :class:`~bta.serve.redis_store.RedisProfileStore` keeps
the same profiles in Redis for a fleet of ad servers.

Bulk reads: :meth:`MemoryProfileStore.get_block` reads many users, each at its own time, in
one compiled call (:meth:`~bta.features.OnlineProfiles.vectors`) as a
:class:`ProfileBlock` of arrays; :meth:`MemoryProfileStore.get_many` gives the same as
:class:`Profile` objects. Both equal ``get`` per user exactly; the offline replay
(:meth:`~bta.serve.engine.Engine.decide_batch`) reads through ``get_block``, which
:meth:`~bta.serve.redis_store.RedisProfileStore.get_block` also has (pipelined ``MGET``).
"""

from __future__ import annotations

import threading
from typing import Any, NamedTuple, Protocol, Sequence

import numpy as np

from bta.errors import ConfigError
from bta.features import OnlineProfiles
from bta.ids import canonical_id, canonical_ids
from bta.segment.book import SegmentBook
from bta.serve import _kernels as K

__all__ = ["Profile", "ProfileBlock", "ProfileStore", "MemoryProfileStore"]


class Profile(NamedTuple):
    """A user's profile as the Engine reads it."""

    indices: np.ndarray   #: int32 feature columns of the stored entries
    values: np.ndarray    #: float64 values
    segments: np.ndarray  #: bool flags over the store's ``segment_names``
    #: the names ``segments`` is aligned with (None: the store's current ``segment_names``)
    segment_names: tuple[str, ...] | None = None


class ProfileBlock(NamedTuple):
    """Many users' profiles as arrays (:meth:`MemoryProfileStore.get_block`): user ``i`` has a
    profile where ``present[i]``, with entries ``indices[indptr[i]:indptr[i + 1]]`` (and
    ``values``) and segment flags ``segments[i]``. A store whose reads can fail user by user
    (a stored value that is not a profile) marks those users in ``failed`` (not ``present``);
    a read of the whole block that fails raises instead."""

    present: np.ndarray   #: bool, shape (n_users,)
    indptr: np.ndarray    #: int64, shape (n_users + 1,)
    indices: np.ndarray   #: int32 feature columns
    values: np.ndarray    #: float64 values
    segments: np.ndarray  #: bool, shape (n_users, len(segment_names))
    segment_names: tuple[str, ...]
    failed: np.ndarray | None = None  #: bool, shape (n_users,); None when no read failed


class ProfileStore(Protocol):
    """What the Engine uses of a store, all of it: the Engine probes for nothing.

    ``get`` (a request), ``get_block`` (a replay's chunk: user ``i`` at ``as_of_ms[i]``,
    equal to ``get`` per user) and ``get_many`` may raise: the Engine falls back (a
    ``get_block`` that raises is read again user by user with ``get``). ``book`` is the
    SegmentBook behind ``segment_names`` (None: no minimum-audience check); ``warmup()``
    compiles what the reads run before the first request; ``erase`` forgets a user.
    """

    feature_names: tuple[str, ...]
    nan_absent: np.ndarray
    segment_names: tuple[str, ...]
    book: SegmentBook | None

    def get(self, user_id: Any, as_of_ms: int) -> Profile | None: ...

    def get_many(self, user_ids: Sequence[Any], as_of_ms: Any = None
                 ) -> list[Profile | None]: ...

    def get_block(self, user_ids: Sequence[Any], as_of_ms: Any = None) -> ProfileBlock: ...

    def warmup(self) -> Any: ...

    def erase(self, user_id: Any) -> bool: ...


_NO_SEGMENTS = np.zeros(0, dtype=bool)


class BookState:
    """Segment names and book of a store that keeps them in one tuple, ``_book_state =
    (segment names, ..., book)``, so that swapping the book is one reference assignment."""

    _book_state: tuple

    @property
    def segment_names(self) -> tuple[str, ...]:
        return self._book_state[0]

    @property
    def book(self) -> SegmentBook | None:
        """The SegmentBook given (for the minimum-audience check), or None."""
        return self._book_state[2]

    # defaults of the rest of :class:`ProfileStore`, from ``get``; a store with bulk reads
    # overrides them
    def warmup(self) -> Any:
        """Nothing to compile (a store that compiles overrides it)."""
        return self

    def get_block(self, user_ids: Sequence[Any], as_of_ms: Any = None) -> ProfileBlock:
        """``get`` per user (at its own time when ``as_of_ms`` is an array), as one block;
        a user whose read raises is marked ``failed``."""
        times = np.broadcast_to(np.asarray(as_of_ms if as_of_ms is not None else 0),
                                (len(user_ids),)) if as_of_ms is not None else None
        got, failed = [], np.zeros(len(user_ids), dtype=bool)
        for i, u in enumerate(user_ids):
            try:
                got.append(self.get(u, None if times is None else int(times[i])))
            except Exception:  # noqa: BLE001 - fails this user's read only
                got.append(None)
                failed[i] = True
        return profiles_block(got, self.segment_names, failed if failed.any() else None)

    def get_many(self, user_ids: Sequence[Any], as_of_ms: Any = None
                 ) -> list[Profile | None]:
        """``get`` per user, at one time for all or one per user."""
        times = np.broadcast_to(np.asarray(as_of_ms), (len(user_ids),)) \
            if as_of_ms is not None else [None] * len(user_ids)
        return [self.get(u, None if t is None else int(t)) for u, t in zip(user_ids, times)]


def profiles_block(profiles: Sequence[Profile | None], names: tuple[str, ...],
                   failed: np.ndarray | None = None) -> ProfileBlock:
    """Profiles (None: absent) as one :class:`ProfileBlock` over segment ``names``."""
    n = len(profiles)
    present = np.array([p is not None for p in profiles], dtype=bool)
    keep = [p for p in profiles if p is not None]
    indptr = np.zeros(n + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([0 if p is None else len(p.indices) for p in profiles])
    indices = np.concatenate([np.asarray(p.indices) for p in keep] + [np.zeros(0, np.int32)]
                             ).astype(np.int32)
    values = np.concatenate([np.asarray(p.values) for p in keep] + [np.zeros(0)]
                            ).astype(np.float64)
    segments = np.zeros((n, len(names)), dtype=bool)
    for i, p in enumerate(profiles):
        if p is not None and p.segments.shape[0] == len(names):
            segments[i] = p.segments
    return ProfileBlock(present, indptr, indices, values, segments, tuple(names), failed)


def id_rows(users: Any) -> dict:
    """Canonical user id (:mod:`bta.ids`) -> row, for an array of distinct ids."""
    return {u: i for i, u in enumerate(canonical_ids(users).tolist())}


def row_of(rows: dict, user_id: Any) -> int | None:
    """The row of ``user_id`` in an :func:`id_rows` table (by canonical form; never raises)."""
    return rows.get(user_id if type(user_id) is str else canonical_id(user_id))


def book_rows(book: SegmentBook) -> dict:
    """Canonical user id -> row of ``book.membership``."""
    return id_rows(book.users)


def segment_flags(book: SegmentBook | None, row: int | None, n: int) -> np.ndarray:
    """A user's segment flags (length ``n``) from row ``row`` of the book's membership; all
    False without a row."""
    flags = np.zeros(n, dtype=bool)
    if row is not None:
        M = book.membership
        K.csr_row_flags(M.indptr, M.indices, row, flags)
    return flags


class MemoryProfileStore(BookState):
    """In-process store: online feature state plus segment memberships.

    Parameters
    ----------
    profiles : OnlineProfiles
        Must have a fixed layout (``grow_categories=False``) so that column indices compiled
        into rules and scorers stay valid.
    book : SegmentBook, optional
        Segment memberships; replace it atomically with :meth:`set_book`.
    """

    def __init__(self, profiles: OnlineProfiles, book: SegmentBook | None = None):
        if not isinstance(profiles, OnlineProfiles):
            raise ConfigError(f"profiles must be an OnlineProfiles, got {type(profiles).__name__}")
        if profiles._grow_categories:
            raise ConfigError("profiles must have a fixed layout: create them with "
                              "OnlineProfiles(spec, categories=..., grow_categories=False)")
        self.profiles = profiles
        layout = profiles.layout
        self.feature_names = layout.feature_names
        self.nan_absent = layout.nan_absent
        self._lock = threading.Lock()
        self._book_state: tuple = ((), {}, None)
        if book is not None:
            self.set_book(book)

    def set_book(self, book: SegmentBook) -> None:
        """Swap in a new segment book (readers see the old or the new one, never a mix)."""
        rows = book_rows(book)
        # one reference assignment: a reader takes the whole tuple at once
        self._book_state = (tuple(book.names), rows, book)

    def get(self, user_id: Any, as_of_ms: int | None = None) -> Profile | None:
        """The user's profile at ``as_of_ms`` (epoch ms), or None for an unknown user."""
        names, rows, book = self._book_state
        vec = self.profiles.vector(user_id, as_of_ms)
        r = row_of(rows, user_id) if book is not None else None
        flags = segment_flags(book, r, len(names))
        if vec is None:
            return None if r is None else Profile(np.zeros(0, np.int32), np.zeros(0), flags,
                                                  names)
        return Profile(vec[0], vec[1], flags, names)

    def warmup(self) -> "MemoryProfileStore":
        """Compile the kernels :meth:`get` runs (the Engine's ``warmup`` calls this)."""
        self.profiles.warmup()
        for dt in (np.int32, np.int64):  # CSR index arrays come in either width
            K.csr_row_flags(np.zeros(2, dtype=dt), np.zeros(0, dtype=dt), 0,
                            np.zeros(0, dtype=bool))
        return self

    def get_block(self, user_ids: Sequence[Any], as_of_ms: Any = None) -> ProfileBlock:
        """Many users' profiles as arrays, user ``i``'s equal to ``get(user_ids[i],
        as_of_ms[i])``.

        Parameters
        ----------
        user_ids : sequence of user ids, length n_users
        as_of_ms : None, int or array-like of shape (n_users,)
            One time (epoch ms) for all users or one per user (see :meth:`get`).

        Returns
        -------
        ProfileBlock
            Feature entries read in one compiled call
            (:meth:`~bta.features.OnlineProfiles.vectors`), segment flags from the book.

        Raises
        ------
        ConfigError
            If ``as_of_ms`` is an array whose length is not the number of users.
        TypeError
            For an unhashable user id while a book is set (as :meth:`get`).
        """
        ids = user_ids if isinstance(user_ids, list) else list(user_ids)
        names, rows, book = self._book_state  # one book for the whole block
        indptr, indices, values, found = self.profiles.vectors(ids, as_of_ms)
        n = len(ids)
        segments = np.zeros((n, len(names)), dtype=bool)
        present = found
        if book is not None:
            r = np.fromiter((-1 if (x := row_of(rows, u)) is None else x for u in ids),
                            dtype=np.int64, count=n)
            who = np.flatnonzero(r >= 0)
            if who.size:
                M = book.membership
                lo, hi = M.indptr[r[who]], M.indptr[r[who] + 1]
                lengths = (hi - lo).astype(np.int64)
                # the CSR positions of every member row's entries, without a Python loop
                pos = np.repeat(lo - np.cumsum(lengths) + lengths, lengths) + np.arange(
                    int(lengths.sum()))
                segments[np.repeat(who, lengths), M.indices[pos]] = True
            present = found | (r >= 0)
        return ProfileBlock(present, indptr, indices, values, segments, names)

    def get_many(self, user_ids: Sequence[Any], as_of_ms: Any = None
                 ) -> list[Profile | None]:
        """Profiles of many users, equal to ``[get(u, t) for u, t in zip(user_ids,
        as_of_ms)]`` (``as_of_ms`` one time for all or one per user), read in bulk by
        :meth:`get_block`."""
        b = self.get_block(user_ids, as_of_ms)
        ptr = b.indptr.tolist()
        names = b.segment_names
        return [Profile(b.indices[ptr[i]:ptr[i + 1]], b.values[ptr[i]:ptr[i + 1]],
                        b.segments[i], names) if p else None
                for i, p in enumerate(b.present.tolist())]

    def update(self, events: Any, **kwargs: Any):
        """Fold events into the online profiles (see :meth:`OnlineProfiles.update`)."""
        return self.profiles.update(events, **kwargs)

    def erase(self, user_id: Any) -> bool:
        """Forget the user in this store: the online profile and the book's row.

        The book is replaced by :meth:`SegmentBook.erase` of it, so ``store.book`` no longer
        lists the user either. Returns whether the user was known.
        """
        found = bool(self.profiles.erase(user_id))
        with self._lock:  # two erasures must not each install a book missing only their user
            names, rows, book = self._book_state
            known = row_of(rows, user_id) is not None
            if known:
                rows = dict(rows)
                del rows[canonical_id(user_id)]
                book = book.erase(user_id)
                # one reference assignment, as in set_book
                self._book_state = (names, rows, book)
                found = True
        return found
