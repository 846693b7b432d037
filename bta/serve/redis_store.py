"""RedisProfileStore: user profiles in Redis, shared by a fleet of ad servers.

A publisher (a batch job, or the process that runs :class:`~bta.features.OnlineProfiles`) writes
each user's feature entries and segment flags as one compact binary value; every ad server reads
them with one ``GET`` per request. The store has the interface the
:class:`~bta.serve.engine.Engine` expects of a :class:`~bta.serve.store.ProfileStore`.

Profiles in Redis are **snapshots as of their publish time**: decayed counts, windows and
recencies are evaluated at the ``as_of`` of :meth:`RedisProfileStore.publish_from` (or of the
``put`` call), and ``get(user_id, as_of_ms)`` does not age them further. Publish as often as the
features must be fresh (windows of a day tolerate hourly snapshots; recency in minutes does not).

Value layout (little-endian, never pickle)::

    header   magic b"btap" | version u8 | dtype u8 (0: float64, 1: float32) | reserved u16
             | n_entries u32 | n_segments u32 | segment fingerprint u32 | as_of_ms i64
    indices  int32[n_entries]        feature columns of the stored entries
    values   float64 or float32[n_entries]
    segments ceil(n_segments / 8) bytes, a bitset over the store's segment names (LSB first)

Keys are ``{prefix}:{layout}:id:{user}``, where ``user`` is the canonical user id
(:mod:`bta.ids`: ``923`` and ``"923"`` are one key, ``"0923"`` another) and ``layout`` is a
fingerprint of the feature names and their ``nan_absent`` flags: a new feature layout reads no
vector written for an old one. (Stores written before ids were canonical used ``:u:`` keys
with a type tag; they are not read: publish again.) A
value whose segment fingerprint differs from the reader's segment names (a new book published
under the same feature layout) is read with no segment memberships: a stale bitset would put the
user in the wrong audiences.
"""

from __future__ import annotations

import hashlib
import math
import struct
from typing import Any, Iterable, Literal, Sequence

import numpy as np

from bta.errors import ConfigError, SchemaError, StoreError, check_param
from bta.ids import MAX_ID_CHARS, canonical_id
from bta.events import to_millis
from bta.serve.store import BookState, Profile, ProfileBlock

__all__ = ["RedisProfileStore", "FORMAT_VERSION", "encode_profile", "decode_profile",
           "layout_fingerprint"]

#: Version of the binary value layout; a reader refuses other versions.
FORMAT_VERSION = 1
_MAGIC = b"btap"
_HEADER = struct.Struct("<4sBBHIIIq")
_DTYPES = {0: np.dtype("<f8"), 1: np.dtype("<f4")}
_DTYPE_CODE = {"float64": 0, "float32": 1}
_NO_INDICES = np.zeros(0, dtype=np.int32)
_NO_VALUES = np.zeros(0, dtype=np.float64)
#: Keys per ``MGET`` of a bulk read, and ``MGET``\ s per pipelined round trip.
_MGET_CHUNK = 1000
_MGETS_PER_TRIP = 10


def layout_fingerprint(feature_names: Sequence[str], nan_absent: Any) -> str:
    """16 hex characters identifying a feature layout (names, order and ``nan_absent``)."""
    h = hashlib.blake2b(digest_size=8)
    for name in feature_names:
        h.update(str(name).encode("utf-8", "surrogatepass"))
        h.update(b"\x00")  # separator that no name contains, so ("ab","c") != ("a","bc")
    h.update(np.ascontiguousarray(nan_absent, dtype=np.bool_).tobytes())
    return h.hexdigest()


def _segments_fingerprint(names: Sequence[str]) -> int:
    h = hashlib.blake2b(digest_size=4)
    for name in names:
        h.update(str(name).encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return int.from_bytes(h.digest(), "little")


def encode_profile(indices: np.ndarray, values: np.ndarray, segments: np.ndarray,
                   segments_fp: int = 0, as_of_ms: int = 0,
                   dtype: Literal["float64", "float32"] = "float64") -> bytes:
    """One profile as the binary value described in the module docstring.

    Parameters
    ----------
    indices : ndarray of int, shape (n_entries,)
    values : ndarray of float, shape (n_entries,)
    segments : ndarray of bool, shape (n_segments,)
    segments_fp : int
        Fingerprint (u32) of the segment names the flags are over.
    as_of_ms : int
        Time the snapshot was evaluated at (epoch ms).
    dtype : {"float64", "float32"}
        Stored value type; float32 halves the value bytes at ~7 significant digits.
    """
    code = _DTYPE_CODE[dtype]
    head = _HEADER.pack(_MAGIC, FORMAT_VERSION, code, 0, int(indices.shape[0]),
                        int(segments.shape[0]), int(segments_fp), int(as_of_ms))
    return b"".join((head, np.ascontiguousarray(indices, dtype="<i4").tobytes(),
                     np.ascontiguousarray(values, dtype=_DTYPES[code]).tobytes(),
                     np.packbits(segments, bitorder="little").tobytes()))


def decode_profile(raw: bytes, n_features: int, n_segments: int, segments_fp: int
                   ) -> tuple[Profile, int]:
    """``(Profile, as_of_ms)`` from a value written by :func:`encode_profile`.

    Raises
    ------
    StoreError
        If the value is not a profile of this format version and layout (truncated, another
        version, feature columns out of range).
    """
    try:
        magic, version, code, _r, n, n_seg, fp, as_of = _HEADER.unpack_from(raw, 0)
    except struct.error:
        raise StoreError(f"profile value is not a bta profile: {len(raw)} bytes, shorter than "
                         f"the {_HEADER.size}-byte header") from None
    if magic != _MAGIC:
        raise StoreError(f"profile value is not a bta profile: magic {magic!r}, expected "
                         f"{_MAGIC!r}")
    if version != FORMAT_VERSION or code not in _DTYPES:
        raise StoreError(f"profile value has format version {version} and dtype code {code}; "
                         f"this bta reads version {FORMAT_VERSION} with dtype codes 0-1")
    vdt = _DTYPES[code]
    off = _HEADER.size
    end_i = off + 4 * n
    end_v = end_i + vdt.itemsize * n
    end = end_v + (n_seg + 7) // 8
    if len(raw) != end:
        raise StoreError(f"profile value has {len(raw)} bytes, expected {end} for {n} entries "
                         f"and {n_seg} segments")
    indices = np.frombuffer(raw, dtype="<i4", count=n, offset=off)
    if n and (int(indices.min()) < 0 or int(indices.max()) >= n_features):
        raise StoreError(f"profile value has feature columns outside [0, {n_features}): "
                         f"the writer used another layout")
    values = np.frombuffer(raw, dtype=vdt, count=n, offset=end_i).astype(np.float64)
    if fp == segments_fp and n_seg == n_segments:
        bits = np.frombuffer(raw, dtype=np.uint8, count=end - end_v, offset=end_v)
        flags = np.unpackbits(bits, count=n_seg, bitorder="little").astype(bool)
    else:  # written for another segment book: no memberships rather than wrong ones
        flags = np.zeros(n_segments, dtype=bool)
    # frombuffer views are read-only; the Engine only reads, but a copy keeps callers safe
    return Profile(indices.astype(np.int32), values, flags), int(as_of)


def _redis_module():
    try:
        import redis
    except ImportError:
        raise ImportError("RedisProfileStore needs the redis package: pip install 'bta[redis]'"
                          ) from None
    return redis


def _user_key(user_id: Any) -> str:
    """The key part of a user: its canonical id (:mod:`bta.ids`), so ``923`` and ``"923"``
    read and write one profile, as in every other store."""
    k = user_id if type(user_id) is str else canonical_id(user_id)
    if k is None or (type(user_id) is str and not 0 < len(user_id) <= MAX_ID_CHARS):
        raise ConfigError(f"user_id must be a str or int (see bta.ids), got "
                          f"{type(user_id).__name__} {user_id!r:.80}")
    if not k.isascii():
        try:
            k.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: no Redis key can hold it
            raise ConfigError(f"user_id must be valid Unicode text, got {user_id!r:.80}") \
                from None
    return k


def _ms(value: float | int, name: str) -> float:
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value) and value > 0)
    check_param(name, value, ok, "a finite number of milliseconds > 0")
    return float(value)


class RedisProfileStore(BookState):
    """Profiles in Redis: compact binary snapshots, one key per user.

    Parameters
    ----------
    url : str, default "redis://127.0.0.1:6379/0"
        Redis URL (``redis://``, ``rediss://`` or ``unix://``).
    feature_names : sequence of str
        The fixed feature layout (``OnlineProfiles(..., grow_categories=False).feature_names``);
        see :meth:`from_profiles`.
    nan_absent : array-like of bool, shape (n_features,)
        Whether each feature is NaN (not 0) when absent.
    book : SegmentBook, optional
        Segment names (the bitset positions) and sizes, so that the Engine can refuse
        campaigns targeting segments below the minimum audience. Alternatively
        ``segment_names`` alone.
    segment_names : sequence of str, optional
        Used when ``book`` is not given.
    prefix : str, default "bta"
        Key namespace.
    timeout_ms : float, default 5.0
        Socket timeout of every request's read; a read that takes longer raises
        :class:`StoreError` (the Engine falls back with ``fallback:store_error``). The bulk
        reads of an offline replay (:meth:`get_block`) use ``write_timeout_ms``.
    connect_timeout_ms : float, default 20.0
        Timeout of (re)connecting.
    write_timeout_ms : float, default 5000.0
        Socket timeout of writes (:meth:`put_many`, :meth:`publish_from` send large pipelines)
        and of bulk reads (:meth:`get_block`).
    dtype : {"float64", "float32"}, default "float64"
        Type of the stored values; float32 keeps ~7 significant digits in half the bytes.
    ttl : duration, optional
        Expiry of every written profile (``"30d"``, seconds, a Timedelta): retention.
    client : redis.Redis, optional
        An existing client, used for reads and writes instead of one built from ``url`` (its
        own timeouts and retries then apply).

    Raises
    ------
    ConfigError
        For an invalid parameter.
    ImportError
        If the ``redis`` package is not installed (``pip install 'bta[redis]'``).

    Notes
    -----
    Reads never retry: a request has a budget of a few milliseconds, and a retry would spend it
    waiting. After an outage the client reconnects by itself on a later call (redis-py's
    connection pool replaces broken connections), so neither the store nor the Engine needs to
    be rebuilt. Thread-safe: the pool hands each thread its own connection.

    Examples
    --------
    >>> store = RedisProfileStore.from_profiles(profiles, book, url="redis://10.0.0.5:6379/0")
    ...                                                                    # doctest: +SKIP
    >>> store.publish_from(profiles, book, as_of="2026-03-04")            # doctest: +SKIP
    >>> engine = Engine(campaigns, fallback=house, store=store)           # doctest: +SKIP
    """

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, feature_names: Sequence[str],
                 nan_absent: Any, book: Any = None, segment_names: Sequence[str] | None = None,
                 prefix: str = "bta", timeout_ms: float = 5.0, connect_timeout_ms: float = 20.0,
                 write_timeout_ms: float = 5000.0,
                 dtype: Literal["float64", "float32"] = "float64", ttl: Any = None,
                 client: Any = None):
        names = tuple(feature_names)
        check_param("feature_names", feature_names,
                    len(names) > 0 and all(isinstance(n, str) for n in names),
                    "a non-empty sequence of str")
        nan = np.asarray(nan_absent, dtype=bool)
        if nan.shape != (len(names),):
            raise ConfigError(f"nan_absent must have one flag per feature ({len(names)}), got "
                              f"shape {nan.shape}")
        check_param("prefix", prefix, isinstance(prefix, str) and prefix != "" and ":" not in
                    prefix, "a non-empty string without ':'")
        check_param("dtype", dtype, dtype in _DTYPE_CODE, "'float64' or 'float32'")
        self.feature_names = names
        self.nan_absent = nan
        self.prefix = prefix
        self.dtype = dtype
        self.timeout_ms = _ms(timeout_ms, "timeout_ms")
        self.connect_timeout_ms = _ms(connect_timeout_ms, "connect_timeout_ms")
        self.write_timeout_ms = _ms(write_timeout_ms, "write_timeout_ms")
        self._ttl_ms = None if ttl is None else to_millis(ttl, "ttl")
        self.layout = layout_fingerprint(names, nan)
        self._key_prefix = f"{prefix}:{self.layout}:id:"
        self._layouts_key = f"{prefix}:layouts"
        self._url = url
        self._book_state: tuple = ((), 0, None)
        if book is not None:
            self.set_book(book)
        elif segment_names is not None:
            self._set_segment_names(tuple(segment_names), None)
        if client is not None:
            self._r = self._w = client
        else:
            check_param("url", url, isinstance(url, str) and "://" in url,
                        "a Redis URL such as 'redis://127.0.0.1:6379/0'")
            self._r = self._client(self.timeout_ms)
            self._w = None  # built on the first write or bulk read; a server never opens it

    @classmethod
    def from_profiles(cls, profiles: Any, book: Any = None, **kwargs: Any) -> "RedisProfileStore":
        """A store with the feature layout of ``profiles`` (an ``OnlineProfiles`` with a fixed
        layout, or a ``FeatureMatrix``) and the segments of ``book``."""
        layout = getattr(profiles, "layout", None)
        src = layout if layout is not None and hasattr(layout, "nan_absent") else profiles
        if getattr(profiles, "_grow_categories", False):
            raise ConfigError("profiles must have a fixed layout: create them with "
                              "OnlineProfiles(spec, categories=..., grow_categories=False)")
        return cls(feature_names=src.feature_names, nan_absent=src.nan_absent, book=book,
                   **kwargs)

    def _client(self, timeout_ms: float):
        redis = _redis_module()
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        return redis.Redis.from_url(
            self._url, socket_timeout=timeout_ms / 1000.0,
            socket_connect_timeout=self.connect_timeout_ms / 1000.0,
            retry=Retry(NoBackoff(), 0), health_check_interval=0)

    def _writer(self):
        if self._w is None:
            self._w = self._client(self.write_timeout_ms)
        return self._w

    # ---- segments ------------------------------------------------------------------------------
    def set_book(self, book: Any) -> None:
        """Use ``book``'s segment names (bitset positions) and sizes from now on.

        Values published for another book read as no memberships until republished.
        """
        names = getattr(book, "names", None)
        if names is None or not hasattr(book, "is_activatable"):
            raise ConfigError(f"book must be a SegmentBook, got {type(book).__name__}")
        self._set_segment_names(tuple(names), book)

    def _set_segment_names(self, names: tuple[str, ...], book: Any) -> None:
        check_param("segment_names", names, all(isinstance(n, str) for n in names)
                    and len(set(names)) == len(names), "unique strings")
        # one reference assignment: readers see the old or the new state, never a mix
        self._book_state = (names, _segments_fingerprint(names), book)

    # ---- reads ---------------------------------------------------------------------------------
    def key(self, user_id: Any) -> str:
        """The Redis key of ``user_id``'s profile under this layout."""
        return self._key_prefix + _user_key(user_id)

    def get(self, user_id: Any, as_of_ms: int | None = None) -> Profile | None:
        """The user's published profile, or None when none is stored.

        ``as_of_ms`` is accepted for the store interface and ignored: the profile is the
        snapshot evaluated at publish time.

        Raises
        ------
        StoreError
            On a connection error, a timeout, or a value that is not a profile of this layout.
        """
        names, fp, _book = self._book_state
        try:
            key = self.key(user_id)
        except ConfigError:
            return None  # an id no publisher can have written
        try:
            raw = self._r.get(key)
        except Exception as exc:  # noqa: BLE001 - redis, socket and OS errors alike
            raise StoreError(f"Redis read of {key!r} failed: {type(exc).__name__}: {exc}") from exc
        if raw is None:
            return None
        return decode_profile(raw, len(self.feature_names), len(names), fp)[0]

    def get_many(self, user_ids: Sequence[Any], as_of_ms: int | None = None
                 ) -> list[Profile | None]:
        """Profiles of ``user_ids`` in one round trip (``MGET``); None for users without one.

        Raises
        ------
        StoreError
            As :meth:`get`.
        """
        names, fp, _book = self._book_state
        slot, order = self._distinct_keys(user_ids)
        if not order:
            return [None] * len(user_ids)
        try:
            raws = self._r.mget(order)
        except Exception as exc:  # noqa: BLE001
            raise StoreError(f"Redis MGET of {len(order)} keys failed: {type(exc).__name__}: "
                             f"{exc}") from exc
        n_feat, n_seg = len(self.feature_names), len(names)
        got = [None if raw is None else decode_profile(raw, n_feat, n_seg, fp)[0]
               for raw in raws]
        return [got[j] if j >= 0 else None for j in slot.tolist()]

    def _distinct_keys(self, user_ids: Sequence[Any]) -> tuple[np.ndarray, list[str]]:
        """(each user's position among the distinct keys, -1 for an id no publisher can have
        written; the distinct keys in order of first appearance)."""
        slot = np.full(len(user_ids), -1, dtype=np.int64)
        keys: dict[str, int] = {}
        for i, u in enumerate(user_ids):
            try:
                slot[i] = keys.setdefault(self.key(u), len(keys))
            except ConfigError:
                continue
        return slot, list(keys)

    def get_block(self, user_ids: Sequence[Any], as_of_ms: Any = None) -> ProfileBlock:
        r"""Many users' profiles as arrays (the offline replay's bulk read), user ``i``'s equal
        to ``get(user_ids[i])``.

        Each distinct user is read once, with ``MGET``\ s of up to 1,000 keys pipelined ten
        to a round trip, through the writer's connection and ``write_timeout_ms`` (a bulk read
        is offline work, not a request's few milliseconds). As with :meth:`get_many`, a key
        that holds another Redis type (not written by a store) reads as absent, where
        :meth:`get` raises :class:`StoreError`.

        Parameters
        ----------
        user_ids : sequence of user ids, length n_users
        as_of_ms : ignored
            Accepted for the store interface: profiles are snapshots as of their publish time.

        Returns
        -------
        ProfileBlock
            With ``failed`` set for users whose stored value is not a profile of this layout
            (where :meth:`get` would raise :class:`StoreError`); those are not ``present``.

        Raises
        ------
        StoreError
            When Redis cannot be read (the whole block: a connection error or a timeout).
        """
        names, fp, _book = self._book_state
        n = len(user_ids)
        slot, order = self._distinct_keys(user_ids)
        n_feat, n_seg = len(self.feature_names), len(names)
        decoded: list[Profile | None] = []
        bad = np.zeros(len(order), dtype=bool)
        step = _MGET_CHUNK * _MGETS_PER_TRIP  # raw values held at once: one trip's
        for lo in range(0, len(order), step):
            try:
                pipe = self._writer().pipeline(transaction=False)
                for k in range(lo, min(lo + step, len(order)), _MGET_CHUNK):
                    pipe.mget(order[k:k + _MGET_CHUNK])
                raws = [raw for part in pipe.execute() for raw in part]
            except Exception as exc:  # noqa: BLE001 - redis, socket and OS errors alike
                raise StoreError(f"Redis MGET of {len(order)} keys failed: "
                                 f"{type(exc).__name__}: {exc}") from exc
            for j, raw in enumerate(raws, start=lo):
                p = None
                if raw is not None:
                    try:
                        p = decode_profile(raw, n_feat, n_seg, fp)[0]
                    except StoreError:
                        bad[j] = True
                decoded.append(p)
            del raws
        got = slot >= 0
        present = got.copy()
        present[got] = [decoded[j] is not None for j in slot[got].tolist()]
        failed = np.zeros(n, dtype=bool)
        failed[got] = bad[slot[got]]
        rows = [decoded[j] for j in slot[present].tolist()]
        lengths = np.zeros(n, dtype=np.int64)
        lengths[present] = [p.indices.shape[0] for p in rows]
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        segments = np.zeros((n, n_seg), dtype=bool)
        if rows:
            indices = np.concatenate([p.indices for p in rows])
            values = np.concatenate([p.values for p in rows])
            segments[present] = np.stack([p.segments for p in rows])
        else:
            indices, values = _NO_INDICES, _NO_VALUES
        return ProfileBlock(present, indptr, indices, values, segments, names,
                            failed if failed.any() else None)

    def published_at(self, user_id: Any) -> int | None:
        """Epoch ms the user's stored snapshot was evaluated at, or None."""
        names, fp, _book = self._book_state
        try:
            raw = self._r.get(self.key(user_id))
        except Exception as exc:  # noqa: BLE001
            raise StoreError(f"Redis read failed: {type(exc).__name__}: {exc}") from exc
        return None if raw is None else decode_profile(raw, len(self.feature_names),
                                                      len(names), fp)[1]

    # ---- writes --------------------------------------------------------------------------------
    def _encode(self, indices: Any, values: Any, segments: Any, as_of_ms: int, what: str
                ) -> bytes:
        idx = np.asarray(indices)
        val = np.asarray(values, dtype=np.float64)
        if idx.ndim != 1 or val.shape != idx.shape:
            raise SchemaError(f"{what}: indices and values must be 1-d arrays of the same "
                              f"length, got shapes {idx.shape} and {val.shape}")
        if idx.size and idx.dtype.kind not in "iu":
            raise SchemaError(f"{what}: indices must be integer feature columns, got dtype "
                              f"{idx.dtype}")
        n_feat = len(self.feature_names)
        if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= n_feat):
            raise SchemaError(f"{what}: indices must be feature columns in [0, {n_feat}), got "
                              f"values from {int(idx.min())} to {int(idx.max())}")
        if np.unique(idx).size != idx.size:
            raise SchemaError(f"{what}: indices must be unique feature columns")
        names, fp, _book = self._book_state
        seg = self._segment_flags(segments, names, what)
        return encode_profile(idx, val, seg, fp, as_of_ms, self.dtype)

    @staticmethod
    def _segment_flags(segments: Any, names: tuple[str, ...], what: str) -> np.ndarray:
        if segments is None:
            return np.zeros(len(names), dtype=bool)
        arr = np.asarray(segments)
        if arr.dtype == bool:
            if arr.shape != (len(names),):
                raise SchemaError(f"{what}: segments must be bool flags of shape "
                                  f"({len(names)},) over the store's segment names, got shape "
                                  f"{arr.shape}")
            return arr
        flags = np.zeros(len(names), dtype=bool)
        pos = {n: i for i, n in enumerate(names)}
        for s in (segments if not isinstance(segments, str) else [segments]):
            j = pos.get(s)
            if j is None:
                raise SchemaError(f"{what}: segment {s!r} is not one of the store's segment "
                                  f"names {list(names)[:10]}")
            flags[j] = True
        return flags

    def put(self, user_id: Any, indices: Any, values: Any, segments: Any = None, *,
            as_of_ms: int | None = None) -> None:
        """Write one user's profile.

        Parameters
        ----------
        user_id : str or int
        indices : array-like of int, shape (n_entries,)
            Feature columns (unique, in ``[0, n_features)``).
        values : array-like of float, shape (n_entries,)
        segments : array-like of bool, shape (n_segments,), or iterable of str, optional
            Flags over :attr:`segment_names`, or the names of the user's segments.
        as_of_ms : int, optional
            Time the features were evaluated at (recorded in the value).

        Raises
        ------
        SchemaError
            For malformed entries or unknown segment names.
        StoreError
            When Redis cannot be written.
        """
        value = self._encode(indices, values, segments, int(as_of_ms or 0),
                             f"profile of user {user_id!r}")
        self._send([(self.key(user_id), value)])

    def put_many(self, user_ids: Sequence[Any], X: Any, segments: Any = None, *,
                 as_of_ms: int | None = None, chunk_size: int = 2000) -> int:
        """Write many profiles with pipelined ``SET``\\ s (``chunk_size`` per round trip).

        Parameters
        ----------
        user_ids : sequence of str or int, shape (n_users,)
        X : scipy.sparse matrix of shape (n_users, n_features)
            Stored entries of each user (a ``FeatureMatrix.X``); rows without entries are
            written as empty profiles.
        segments : array-like or sparse matrix of bool, shape (n_users, n_segments), optional
        as_of_ms : int, optional
        chunk_size : int, default 2000

        Returns
        -------
        int
            Profiles written.
        """
        import scipy.sparse as sp

        ids = list(user_ids)
        check_param("chunk_size", chunk_size, isinstance(chunk_size, int) and chunk_size >= 1,
                    "an integer >= 1")
        X = sp.csr_matrix(X)
        if X.shape != (len(ids), len(self.feature_names)):
            raise SchemaError(f"X must have shape (n_users, n_features) = "
                              f"{(len(ids), len(self.feature_names))}, got {X.shape}")
        names, fp, _book = self._book_state
        if segments is None:
            S = None
        else:
            S = sp.csr_matrix(segments, dtype=bool)
            if S.shape != (len(ids), len(names)):
                raise SchemaError(f"segments must have shape (n_users, n_segments) = "
                                  f"{(len(ids), len(names))}, got {S.shape}")
        X.sort_indices()
        t = int(as_of_ms or 0)
        batch: list[tuple[str, bytes]] = []
        no_seg = np.zeros(len(names), dtype=bool)
        for r, u in enumerate(ids):
            a, b = X.indptr[r], X.indptr[r + 1]
            if S is None:
                flags = no_seg
            else:
                flags = np.zeros(len(names), dtype=bool)
                flags[S.indices[S.indptr[r]:S.indptr[r + 1]]] = True
            batch.append((self.key(u), encode_profile(X.indices[a:b], X.data[a:b], flags, fp, t,
                                                      self.dtype)))
            if len(batch) >= chunk_size:
                self._send(batch)
                batch = []
        if batch:
            self._send(batch)
        return len(ids)

    def publish_from(self, profiles: Any, book: Any = None, as_of: Any = None, *,
                     users: Iterable[Any] | None = None, chunk_size: int = 2000) -> int:
        """Push snapshots of ``profiles`` (and memberships in ``book``) evaluated at ``as_of``.

        Parameters
        ----------
        profiles : OnlineProfiles
            With this store's feature layout.
        book : SegmentBook, optional
            Memberships to publish; default the store's book. Its segment names must be the
            store's (call :meth:`set_book` first to change them).
        as_of : datetime-like, optional
            Time the features are evaluated at (default: the latest event seen); not earlier
            than any published user's latest event.
        users : iterable, optional
            Publish only these users (default: every user with events, and every user of the
            book). Those with neither have no profile: their keys are deleted.

        Returns
        -------
        int
            Profiles written.

        Raises
        ------
        ConfigError
            If the layout or the book's segments differ from the store's.
        """
        names = tuple(getattr(profiles, "feature_names", ()))
        if names != self.feature_names:
            raise ConfigError(f"profiles have another feature layout ({len(names)} features) "
                              f"than the store ({len(self.feature_names)} features); create "
                              f"the store with RedisProfileStore.from_profiles(profiles)")
        seg_names, _fp, own_book = self._book_state
        book = own_book if book is None else book
        if book is not None and tuple(book.names) != seg_names:
            raise ConfigError(f"book has segments {list(book.names)[:5]}... but the store "
                              f"writes flags over {list(seg_names)[:5]}...; call "
                              f"store.set_book(book) first")
        known = list(profiles.users.tolist())
        if book is not None:
            seen = set(known)
            known.extend(u for u in book.users.tolist() if u not in seen)
        if users is None:
            ids = known
        else:
            # a requested user with neither events nor memberships has no profile: delete a
            # stale key (an erased user) so that Redis answers None as the memory store does
            wanted = list(users)
            have = set(known)
            ids = [u for u in wanted if u in have]
            gone = [self.key(u) for u in wanted if u not in have]
            if gone:
                try:
                    self._writer().delete(*gone)
                except Exception as exc:  # noqa: BLE001
                    raise StoreError(f"Redis delete of {len(gone)} profiles failed: "
                                     f"{type(exc).__name__}: {exc}") from exc
        if not ids:
            return 0
        fm = profiles.features(as_of=as_of, users=ids)
        as_of_ms = int(fm.as_of.value // 1_000_000)
        S = None
        if book is not None and seg_names:
            import pandas as pd
            import scipy.sparse as sp

            rows = pd.Index(book.users).get_indexer(ids)
            # users outside the book get empty rows
            known = sp.diags((rows >= 0).astype(np.int8), dtype=np.int8)
            S = sp.csr_matrix(known @ book.membership.astype(np.int8)[np.maximum(rows, 0)],
                              dtype=bool)
        return self.put_many(ids, fm.X, S, as_of_ms=as_of_ms, chunk_size=chunk_size)

    def _send(self, items: list[tuple[str, bytes]]) -> None:
        w = self._writer()
        try:
            pipe = w.pipeline(transaction=False)
            for k, v in items:
                pipe.set(k, v, px=self._ttl_ms)
            # every write registers its layout, so that erase() finds keys of old layouts too
            pipe.sadd(self._layouts_key, self.layout)
            pipe.execute()
        except Exception as exc:  # noqa: BLE001
            raise StoreError(f"Redis write of {len(items)} profiles failed: "
                             f"{type(exc).__name__}: {exc}") from exc

    # ---- privacy -------------------------------------------------------------------------------
    def erase(self, user_id: Any) -> bool:
        """Delete the user's profile under every layout ever published with this prefix.

        The store's in-memory book (if any) is replaced by one without the user. Returns
        whether anything was deleted in Redis or the book.

        Raises
        ------
        StoreError
            When Redis cannot be reached (an erasure must not be silently skipped).
        """
        try:
            ukey = _user_key(user_id)
        except ConfigError:
            return False
        in_book = self._erase_from_book(user_id)
        w = self._writer()
        try:
            layouts = {x.decode() if isinstance(x, bytes) else str(x)
                       for x in w.smembers(self._layouts_key)}
            layouts.add(self.layout)
            n = w.delete(*[f"{self.prefix}:{fp}:id:{ukey}" for fp in sorted(layouts)])
        except Exception as exc:  # noqa: BLE001
            raise StoreError(f"Redis erase of user {user_id!r} failed: {type(exc).__name__}: "
                             f"{exc}") from exc
        return bool(n) or in_book

    def _erase_from_book(self, user_id: Any) -> bool:
        names, fp, book = self._book_state
        if book is None or not hasattr(book, "erase"):
            return False
        smaller = book.erase(user_id)
        if smaller is book:
            return False
        self._book_state = (names, fp, smaller)  # same names: the bitsets stay valid
        return True

    def close(self) -> None:
        """Close the connection pools (the store reconnects if used again)."""
        for c in {id(self._r): self._r, id(self._w): self._w}.values():
            if c is not None:
                c.close()

    def __repr__(self) -> str:
        return (f"RedisProfileStore(prefix={self.prefix!r}, layout={self.layout}, "
                f"{len(self.feature_names)} features, {len(self.segment_names)} segments, "
                f"timeout_ms={self.timeout_ms:g})")
