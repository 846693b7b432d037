"""Segment and SegmentBook: who is in which audience, how it was defined, and whether it may run."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from bta.errors import ConfigError, SchemaError, UnknownNameError, check_param
from bta.ids import IdIndex
from bta.privacy import PrivacyPolicy

__all__ = ["Segment", "SegmentBook", "FORMAT_VERSION", "DEFAULT_MIN_AUDIENCE"]

FORMAT_VERSION = 1
#: Smallest audience a campaign may target: small enough for niche interests, large enough that
#: a segment cannot single out a handful of people (the usual industry floor is 50-100 users).
DEFAULT_MIN_AUDIENCE = 50

SegmentKind = Literal["rule", "cluster", "propensity", "lookalike", "value", "custom"]


@dataclass(frozen=True, eq=False)
class Segment:
    """One audience over a fixed list of users.

    Parameters
    ----------
    name : str
        Unique name (letters, digits, ``_``, ``-``, ``.``, ``:``).
    kind : {"rule", "cluster", "propensity", "lookalike", "value", "custom"}
    definition : mapping
        JSON-serializable description that, with the maker, reproduces the segment (a rule's
        text, a model's file name and threshold, a cluster's centroid index and top categories).
    members : ndarray of bool, shape (n_users,)
        Membership, aligned with the user list it was computed on.
    scores : ndarray of float, shape (n_users,), optional
        Score the membership was cut from (propensity, similarity), if any.
    """

    name: str
    kind: SegmentKind
    definition: Mapping[str, Any]
    members: np.ndarray
    scores: np.ndarray | None = None

    def __post_init__(self) -> None:
        _check_name(self.name)
        check_param("kind", self.kind, self.kind in SegmentKind.__args__,  # type: ignore[attr-defined]
                    f"one of {SegmentKind.__args__}")  # type: ignore[attr-defined]
        m = np.asarray(self.members)
        if m.ndim != 1 or m.dtype != bool:
            raise ConfigError(f"members of segment {self.name!r} must be a 1-d boolean array, "
                              f"got dtype {m.dtype} with shape {m.shape}")
        object.__setattr__(self, "members", m)
        try:
            json.dumps(dict(self.definition))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"definition of segment {self.name!r} must be JSON-serializable: "
                              f"{exc}") from None
        object.__setattr__(self, "definition", dict(self.definition))
        if self.scores is not None:
            s = np.asarray(self.scores, dtype=np.float64)
            if s.shape != m.shape:
                raise ConfigError(f"scores of segment {self.name!r} must have shape {m.shape}, "
                                  f"got {s.shape}")
            object.__setattr__(self, "scores", s)

    @property
    def size(self) -> int:
        return int(self.members.sum())


def _check_name(name: Any) -> None:
    ok = isinstance(name, str) and name != "" and all(ch.isalnum() or ch in "_-.:" for ch in name)
    check_param("name", name, ok, "a non-empty string of letters, digits, '_', '-', '.', ':'")


@dataclass(frozen=True, eq=False)
class SegmentBook:
    """Memberships of users in named segments, with definitions and the minimum-audience rule.

    Attributes
    ----------
    users : ndarray of shape (n_users,)
        User ids, one per row of ``membership``.
    membership : scipy.sparse.csr_matrix of bool, shape (n_users, n_segments)
    names : tuple of str
    kinds : tuple of str
    definitions : tuple of dict
    min_audience : int
        Segments with fewer members are kept but not activatable: no campaign may target them.
    privacy : PrivacyPolicy, optional
        A segment whose definition references a blocked category (a sensitive category the
        policy does not allow; see :meth:`PrivacyPolicy.blocked_in_definition`) is refused
        with :class:`~bta.errors.ConfigError`. None means ``PrivacyPolicy()``: the default
        sensitive deny list always applies.
    """

    users: np.ndarray
    membership: sp.csr_matrix
    names: tuple[str, ...]
    kinds: tuple[str, ...]
    definitions: tuple[dict, ...]
    min_audience: int = DEFAULT_MIN_AUDIENCE
    privacy: PrivacyPolicy | None = field(default=None, repr=False, compare=False)
    _name_index: dict = field(default=None, repr=False)  # type: ignore[assignment]
    _user_index: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        check_param("min_audience", self.min_audience,
                    isinstance(self.min_audience, (int, np.integer)) and self.min_audience >= 1,
                    "an integer >= 1")
        if len(set(self.names)) != len(self.names):
            dup = sorted({n for n in self.names if self.names.count(n) > 1})
            raise ConfigError(f"segment names must be unique, got duplicates {dup}")
        if self.membership.shape != (len(self.users), len(self.names)):
            raise ConfigError(f"membership must have shape (n_users, n_segments) = "
                              f"{(len(self.users), len(self.names))}, got {self.membership.shape}")
        object.__setattr__(self, "membership", sp.csr_matrix(self.membership, dtype=bool))
        policy = PrivacyPolicy() if self.privacy is None else self.privacy
        if not isinstance(policy, PrivacyPolicy):
            raise ConfigError(f"privacy must be a PrivacyPolicy or None, got "
                              f"{type(policy).__name__}")
        object.__setattr__(self, "privacy", policy)
        for name, definition in zip(self.names, self.definitions):
            bad = policy.blocked_in_definition(definition)
            if bad:
                where = ", ".join(f"{c!r} at {path}" for path, c in bad)
                raise ConfigError(f"segment {name!r}: its definition references blocked "
                                  f"(sensitive) categories: {where}; such segments need the "
                                  f"category in PrivacyPolicy(allowed_sensitive=...) and the "
                                  f"users' opt-in")
        object.__setattr__(self, "_name_index", {n: i for i, n in enumerate(self.names)})
        object.__setattr__(self, "_user_index", None)  # built on first lookup (_rows_of)

    # ---- construction --------------------------------------------------------------------------
    @classmethod
    def from_segments(cls, users: Sequence[Any], segments: Iterable[Segment],
                      min_audience: int = DEFAULT_MIN_AUDIENCE,
                      privacy: PrivacyPolicy | None = None) -> "SegmentBook":
        """Book of ``segments``, each computed over ``users`` (members aligned with them)."""
        users = np.asarray(users)
        segs = list(segments)
        for s in segs:
            if s.members.shape[0] != users.shape[0]:
                raise ConfigError(f"segment {s.name!r} has {s.members.shape[0]} members flags "
                                  f"for {users.shape[0]} users")
        if segs:
            M = sp.csr_matrix(np.column_stack([s.members for s in segs]))
        else:
            M = sp.csr_matrix((users.shape[0], 0), dtype=bool)
        return cls(users=users, membership=M, names=tuple(s.name for s in segs),
                   kinds=tuple(s.kind for s in segs),
                   definitions=tuple(dict(s.definition) for s in segs), min_audience=min_audience,
                   privacy=privacy)

    def add(self, *segments: Segment, replace: bool = False) -> "SegmentBook":
        """New book with ``segments`` added (computed over this book's users)."""
        existing = [Segment(n, k, d, self.column(n)) for n, k, d in
                    zip(self.names, self.kinds, self.definitions)]
        new_names = {s.name for s in segments}
        clash = [n for n in self.names if n in new_names]
        if clash and not replace:
            raise ConfigError(f"segments {clash} already exist; pass replace=True to replace them")
        kept = [s for s in existing if s.name not in new_names]
        return SegmentBook.from_segments(self.users, kept + list(segments), self.min_audience,
                                         self.privacy)

    def erase(self, user_ids: Any) -> "SegmentBook":
        """New book without the rows of ``user_ids`` (a scalar or a list; unknown ids ignored).

        Segment sizes shrink accordingly, so a segment may fall below ``min_audience`` and
        stop being activatable.
        """
        rows = self._rows_of(user_ids)
        keep = np.ones(self.n_users, dtype=bool)
        keep[rows[rows >= 0]] = False
        if keep.all():
            return self
        return SegmentBook(users=self.users[keep], membership=self.membership[keep],
                           names=self.names, kinds=self.kinds, definitions=self.definitions,
                           min_audience=self.min_audience, privacy=self.privacy)

    # ---- queries -------------------------------------------------------------------------------
    def _rows_of(self, user_ids: Any) -> np.ndarray:
        """Rows of ``user_ids`` (a scalar or an array; -1 where unknown), found by canonical
        id (:mod:`bta.ids`: ``923`` finds user ``"923"``)."""
        index = self._user_index
        if index is None:
            index = IdIndex(self.users)
            object.__setattr__(self, "_user_index", index)
        ids = np.atleast_1d(np.asarray(user_ids, dtype=object)).ravel() \
            if not isinstance(user_ids, np.ndarray) else user_ids.ravel()
        return index.get_indexer(ids)

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_segments(self) -> int:
        return len(self.names)

    @property
    def sizes(self) -> pd.Series:
        """Members per segment."""
        return pd.Series(np.asarray(self.membership.sum(axis=0)).ravel().astype(np.int64),
                         index=pd.Index(self.names, name="segment"), name="size")

    @property
    def activatable(self) -> pd.Series:
        """Whether each segment meets the minimum audience size."""
        return (self.sizes >= self.min_audience).rename("activatable")

    def is_activatable(self, name: str) -> bool:
        return bool(self.sizes.iloc[self.index(name)] >= self.min_audience)

    def index(self, name: str) -> int:
        """Column of segment ``name``; an unknown name raises with close names suggested."""
        try:
            return self._name_index[name]
        except KeyError:
            import difflib

            close = difflib.get_close_matches(name, self.names, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise UnknownNameError(f"unknown segment {name!r}{hint}") from None

    def column(self, name: str) -> np.ndarray:
        """Membership flags of segment ``name`` for every user (bool, n_users)."""
        j = self.index(name)
        return self.membership[:, [j]].toarray().ravel()

    def members(self, name: str) -> np.ndarray:
        """User ids in segment ``name``."""
        return self.users[self.column(name)]

    def segments_of(self, user_id: Any) -> list[str]:
        """Names of the segments ``user_id`` belongs to (empty for an unknown user)."""
        pos = self._rows_of(np.array([user_id], dtype=object))[0]
        if pos < 0:
            return []
        row = self.membership.getrow(pos)
        return [self.names[j] for j in row.indices]

    def overlap(self) -> pd.DataFrame:
        """Users in both segments, for every pair (diagonal: sizes)."""
        M = self.membership.astype(np.int64)
        O = (M.T @ M).toarray()
        return pd.DataFrame(O, index=pd.Index(self.names, name="segment"), columns=self.names)

    def summary(self) -> pd.DataFrame:
        """One row per segment: kind, size, share of users, activatable."""
        sizes = self.sizes
        return pd.DataFrame({
            "kind": list(self.kinds), "size": sizes.to_numpy(),
            "share": sizes.to_numpy() / max(self.n_users, 1),
            "activatable": (sizes >= self.min_audience).to_numpy(),
        }, index=sizes.index)

    def __repr__(self) -> str:
        n_act = int(self.activatable.sum()) if self.n_segments else 0
        return (f"SegmentBook({self.n_users} users, {self.n_segments} segments, {n_act} "
                f"activatable at min_audience={self.min_audience})")

    # ---- OpenRTB -------------------------------------------------------------------------------
    def to_openrtb(self, user_id: Any, *, provider: str = "bta", segtax: int | None = None,
                   segment_ids: Mapping[str, str] | None = None,
                   activatable_only: bool = True) -> list[dict]:
        """The user's segments as OpenRTB 2.6 ``user.data`` objects.

        Returns a list with one ``Data`` object ``{"id", "name", "segment": [{"id", "name"}],
        "ext": {"segtax": segtax}}`` (``ext`` only when ``segtax`` is given, e.g. 4 for the IAB
        Audience Taxonomy 1.1), or an empty list when the user is in no segment. ``segment_ids``
        maps names to taxonomy ids (default: the segment name). Segments below the minimum
        audience are left out unless ``activatable_only=False``.
        """
        names = self.segments_of(user_id)
        if activatable_only:
            names = [n for n in names if self.is_activatable(n)]
        if not names:
            return []
        ids = segment_ids or {}
        data: dict[str, Any] = {
            "id": provider, "name": provider,
            "segment": [{"id": str(ids.get(n, n)), "name": n} for n in names],
        }
        if segtax is not None:
            data["ext"] = {"segtax": int(segtax)}
        return [data]

    # ---- persistence ---------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the book to directory ``path`` (membership.npz, users.parquet, book.json)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        sp.save_npz(path / "membership.npz", self.membership.astype(np.int8), compressed=True)
        pd.DataFrame({"user_id": self.users}).to_parquet(path / "users.parquet", index=False)
        meta = {"format_version": FORMAT_VERSION, "min_audience": int(self.min_audience),
                "segments": [{"name": n, "kind": k, "definition": d}
                             for n, k, d in zip(self.names, self.kinds, self.definitions)]}
        (path / "book.json").write_text(json.dumps(meta, indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path, privacy: PrivacyPolicy | None = None) -> "SegmentBook":
        """Read a book written by :meth:`save`; its definitions are checked against ``privacy``."""
        path = Path(path)
        meta_file = path / "book.json"
        if not meta_file.exists():
            raise SchemaError(f"{path} is not a saved SegmentBook: book.json not found")
        meta = json.loads(meta_file.read_text())
        version = meta.get("format_version")
        if version != FORMAT_VERSION:
            raise SchemaError(f"SegmentBook format_version {version!r} is not supported "
                              f"(this bta reads {FORMAT_VERSION})")
        users = pd.read_parquet(path / "users.parquet")["user_id"].to_numpy()
        M = sp.load_npz(path / "membership.npz").astype(bool)
        segs = meta["segments"]
        return cls(users=users, membership=sp.csr_matrix(M),
                   names=tuple(s["name"] for s in segs), kinds=tuple(s["kind"] for s in segs),
                   definitions=tuple(s["definition"] for s in segs),
                   min_audience=int(meta["min_audience"]), privacy=privacy)
