"""Files and configuration for the ``bta`` command: tables, feature files, TOML/JSON configs.

- :func:`read_table` / :func:`write_table`: Parquet (``.parquet``, ``.pq``) or CSV (``.csv``,
  ``.csv.gz``) by extension, with one clear error for a missing, unreadable or malformed file.
- :func:`save_features` / :func:`load_features`: a :class:`~bta.features.FeatureMatrix` as a
  long Parquet table (``user_id``, ``feature``, ``value``; stored entries only) whose schema
  metadata keeps the column layout, ``as_of`` and the spec.
- :func:`load_config`: a TOML or JSON file as a dict; :func:`feature_spec` builds a
  :class:`~bta.features.FeatureSpec` from its ``[features]`` table.
- :func:`load_engine` / :func:`engine_from_config`: an :class:`~bta.serve.Engine` from a
  config (format below); :class:`FeatureMatrixStore` serves profiles from a feature file.

Engine config (TOML; JSON with the same structure works too)::

    version = "v1"                  # policy version recorded in every decision
    time_budget_ms = 5.0
    policy = "greedy"               # or {name = "epsilon_greedy", epsilon = 0.1}, softmax
    untargeted_policy = "uniform"

    [profiles]                      # exactly one of features / events (paths are relative
    features = "features.parquet"   #   to the config file)
    # events = "events.parquet"     # folded into online profiles: point-in-time features
    segments = "segments.parquet"   # optional: memberships from `bta segment`, or a
    min_audience = 100              #   SegmentBook directory

    [experiment]
    arms = {control = 0.5, targeted = 0.5}
    control = "control"
    salt = "bta"
    holdout = 0.0

    [privacy]
    min_age = 16
    require_consent_signal = false
    opt_outs = ["u17"]

    [fallback]
    id = "house"
    creatives = [{id = "house-1"}]
    bid = 0.01

    [[campaigns]]
    id = "autos"
    creatives = [{id = "autos-1", category = "autos"}]
    targeting = 'segment("autos_fans")'
    pricing = "cpc"                 # cpm | cpc | cpa
    bid = 0.8
    prior_ctr = 0.004
    budget = 500.0
    caps = [{max_impressions = 3, window = "1d"}]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import scipy.sparse as sp

from bta.errors import BtaError, ConfigError, SchemaError
from bta.ids import canonical_id
from bta.serve.store import BookState, book_rows, id_rows, row_of, segment_flags

__all__ = [
    "read_table", "write_table", "save_features", "load_features", "load_config",
    "feature_spec", "load_engine", "engine_from_config", "FeatureMatrixStore",
    "read_memberships", "FEATURES_FORMAT",
]

#: Version of the feature-file layout written by :func:`save_features`.
FEATURES_FORMAT = 1
_META_KEY = b"bta.features"
_PARQUET = (".parquet", ".pq")
_CSV = (".csv", ".csv.gz")


# ---- tables -----------------------------------------------------------------------------------
def _kind(path: Path, what: str) -> str:
    name = path.name.lower()
    if name.endswith(_PARQUET) or path.is_dir():
        return "parquet"
    if name.endswith(_CSV):
        return "csv"
    raise ConfigError(f"{what} {str(path)!r}: unknown file type; expected .parquet, .pq or .csv")


def read_table(path: str | Path, what: str = "file", *,
               required: tuple[str, ...] = ()) -> pd.DataFrame:
    """A Parquet or CSV file (by extension) as a DataFrame, with ``required`` columns.

    Raises
    ------
    FileNotFoundError
        The path does not exist.
    ConfigError
        The extension is neither Parquet nor CSV.
    SchemaError
        The file cannot be parsed, or lacks a required column (the message names them).
    """
    import pyarrow as pa

    path = Path(path)
    kind = _kind(path, what)
    if not path.exists():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist")
    try:
        if kind == "parquet":
            df = pd.read_parquet(path)
        else:
            df = pd.read_csv(path)
    except (pa.ArrowException, pd.errors.ParserError, pd.errors.EmptyDataError,
            UnicodeDecodeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SchemaError(f"{what} {str(path)!r} is not a readable {kind.upper()} file: "
                          f"{first}") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise SchemaError(f"{what} {str(path)!r} lacks column(s) {missing}; it has "
                          f"{list(map(str, df.columns))[:20]}")
    return df


def write_table(df: pd.DataFrame, path: str | Path, what: str = "output") -> Path:
    """Write ``df`` as Parquet or CSV (by extension), creating the parent folder."""
    path = Path(path)
    kind = _kind(path, what)
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "parquet":
        df.to_parquet(path, index=False)
    else:
        df.to_csv(path, index=False)
    return path


# ---- feature files ----------------------------------------------------------------------------
def save_features(fm: Any, path: str | Path) -> Path:
    """Write a FeatureMatrix as a long table; Parquet keeps its layout in the schema metadata.

    A CSV file holds the same three columns without the metadata; :func:`load_features` then
    rebuilds the layout from the feature names found in the file.
    """
    import dataclasses

    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    kind = _kind(path, "features output")
    long = fm.to_long()
    if kind == "csv":
        return write_table(long, path)
    spec = {}
    for f in dataclasses.fields(fm.spec):
        v = getattr(fm.spec, f.name)
        spec[f.name] = list(v) if isinstance(v, tuple) else dict(v) if isinstance(v, Mapping) \
            else v
    meta = {"format": FEATURES_FORMAT, "feature_names": list(fm.feature_names),
            "nan_absent": [bool(x) for x in fm.nan_absent], "as_of": str(fm.as_of),
            "users": [_json_id(u) for u in fm.users.tolist()], "n_events": int(fm.n_events),
            "n_flagged_excluded": int(fm.n_flagged_excluded), "spec": spec}
    table = pa.Table.from_pandas(long, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                           _META_KEY: json.dumps(meta, default=str).encode()})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def _json_id(u: Any) -> Any:
    return int(u) if isinstance(u, (int, np.integer)) else str(u)


def load_features(path: str | Path) -> Any:
    """A FeatureMatrix from :func:`save_features` output (Parquet or CSV).

    Raises
    ------
    SchemaError
        Missing columns, or a Parquet file whose layout metadata is unreadable.
    """
    import pyarrow.parquet as pq

    from bta.features import FeatureMatrix, FeatureSpec

    path = Path(path)
    df = read_table(path, "features file", required=("user_id", "feature", "value"))
    meta = None
    if _kind(path, "features file") == "parquet":
        raw = (pq.read_schema(path).metadata or {}).get(_META_KEY)
        if raw is not None:
            try:
                meta = json.loads(raw)
            except ValueError:
                raise SchemaError(f"features file {str(path)!r}: its layout metadata is not "
                                  f"JSON") from None
    if meta is not None:
        names = tuple(meta["feature_names"])
        nan_absent = np.asarray(meta["nan_absent"], dtype=bool)
        users = np.asarray(meta["users"], dtype=object if any(
            isinstance(u, str) for u in meta["users"]) else np.int64)
        as_of = pd.Timestamp(meta["as_of"])
        try:
            spec = FeatureSpec(**meta["spec"])
        except (TypeError, BtaError):
            spec = FeatureSpec()
        n_events, n_flagged = int(meta["n_events"]), int(meta["n_flagged_excluded"])
    else:  # CSV: layout from the names present (a feature never stored has no column)
        names = tuple(sorted(df["feature"].astype(str).unique()))
        nan_absent = np.array([n.startswith("recency:") or n in ("rfm:recency_days",
                                                                 "diversity:entropy")
                               for n in names], dtype=bool)
        users = pd.unique(df["user_id"])
        as_of, spec, n_events, n_flagged = pd.NaT, FeatureSpec(), 0, 0
    col = {n: j for j, n in enumerate(names)}
    feat = df["feature"].astype(str)
    unknown = sorted(set(feat) - set(col))
    if unknown:
        raise SchemaError(f"features file {str(path)!r} has features outside its layout: "
                          f"{unknown[:5]}")
    row_of = pd.Index(users)
    rows = row_of.get_indexer(df["user_id"])
    if (rows < 0).any():
        raise SchemaError(f"features file {str(path)!r} has rows for users outside its layout")
    values = pd.to_numeric(df["value"], errors="coerce").to_numpy(np.float64)
    if np.isnan(values).any():
        raise SchemaError(f"features file {str(path)!r}: column 'value' must be numeric")
    X = sp.csr_matrix((values, (rows, feat.map(col).to_numpy(np.int64))),
                      shape=(len(users), len(names)))
    X.sort_indices()
    return FeatureMatrix(X=X, feature_names=names, users=np.asarray(users), as_of=as_of,
                         spec=spec, nan_absent=nan_absent, n_events=n_events,
                         n_flagged_excluded=n_flagged)


# ---- segment memberships ----------------------------------------------------------------------
def read_memberships(path: str | Path, min_audience: int | None = None) -> Any:
    """A SegmentBook from a saved book directory or a long ``user_id, segment`` table."""
    from bta.segment import DEFAULT_MIN_AUDIENCE, Segment, SegmentBook

    path = Path(path)
    if path.is_dir() and (path / "book.json").exists():
        book = SegmentBook.load(path)
        if min_audience is not None:
            from dataclasses import replace

            book = replace(book, min_audience=int(min_audience))
        return book
    df = read_table(path, "segments file", required=("user_id", "segment"))
    users = pd.unique(df["user_id"])
    rows = pd.Index(users).get_indexer(df["user_id"])
    segs = []
    for name, idx in df.groupby(df["segment"].astype(str), sort=True).indices.items():
        members = np.zeros(len(users), dtype=bool)
        members[rows[idx]] = True
        segs.append(Segment(name=name, kind="custom", definition={"file": path.name},
                            members=members))
    return SegmentBook.from_segments(users, segs, min_audience=int(
        DEFAULT_MIN_AUDIENCE if min_audience is None else min_audience))


# ---- configs ----------------------------------------------------------------------------------
def load_config(path: str | Path) -> dict[str, Any]:
    """A ``.toml`` or ``.json`` file as a dict (the top level must be a table/object)."""
    import tomllib

    path = Path(path)
    name = path.name.lower()
    if not name.endswith((".toml", ".json")):
        raise ConfigError(f"config {str(path)!r}: expected a .toml or .json file")
    text = path.read_text(encoding="utf-8")
    try:
        cfg = tomllib.loads(text) if name.endswith(".toml") else json.loads(text)
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        raise ConfigError(f"config {str(path)!r} is not valid "
                          f"{'TOML' if name.endswith('.toml') else 'JSON'}: {exc}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"config {str(path)!r}: the top level must be a table/object")
    return cfg


def _table(cfg: Mapping[str, Any], key: str, where: str, allowed: tuple[str, ...],
           required: bool = False) -> dict[str, Any]:
    v = cfg.get(key)
    if v is None:
        if required:
            raise ConfigError(f"{where}: [{key}] is required")
        return {}
    if not isinstance(v, Mapping):
        raise ConfigError(f"{where}: {key} must be a table, got {type(v).__name__}")
    _keys(v, f"{where} [{key}]", allowed)
    return dict(v)


def _keys(v: Mapping[str, Any], where: str, allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(v) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; expected some of {list(allowed)}")


_SEGMENTS = ("rules", "min_audience", "clusters", "cluster_seed")


def segments_config(cfg: Mapping[str, Any], where: str = "config") -> dict[str, Any]:
    """The ``[segments]`` table of a configuration: ``rules`` (name -> rule text, always
    present), and ``min_audience``, ``clusters``, ``cluster_seed`` where given.

    Raises
    ------
    ConfigError
        When ``[segments]`` or its ``rules`` is not a table, or holds unknown keys.
    """
    seg = cfg.get("segments", {})
    if not isinstance(seg, Mapping) or not isinstance(seg.get("rules", {}), Mapping):
        raise ConfigError(f"{where}: [segments] must be a table with a rules table "
                          f"(name = \"rule\")")
    unknown = sorted(set(seg) - set(_SEGMENTS))
    if unknown:
        raise ConfigError(f"{where} [segments]: unknown key(s) {unknown}; expected "
                          f"{', '.join(_SEGMENTS)}")
    out = {k: seg[k] for k in _SEGMENTS[1:] if k in seg}
    out["rules"] = {str(k): str(v) for k, v in seg.get("rules", {}).items()}
    return out


def _init_keys(cls: Any) -> tuple[str, ...]:
    """The keys a configuration table of ``cls`` accepts: its dataclass constructor fields
    (one definition: a field added to the class is a key of the configuration)."""
    import dataclasses

    return tuple(f.name for f in dataclasses.fields(cls) if f.init)


def feature_spec(options: Mapping[str, Any] | None, where: str = "features") -> Any:
    """A FeatureSpec from a mapping of its parameters (unknown keys are an error)."""
    from bta.features import FeatureSpec

    options = dict(options or {})
    _keys(options, where, _init_keys(FeatureSpec))
    for k in ("windows", "events", "categories", "deny_categories", "ctr_prior"):
        if isinstance(options.get(k), list):
            options[k] = tuple(options[k])
    try:
        return FeatureSpec(**options)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, BtaError):
            raise ConfigError(f"{where}: {exc}") from None
        raise ConfigError(f"{where}: {exc}") from None


class FeatureMatrixStore(BookState):
    """A profile store over a FeatureMatrix snapshot (``bta replay`` with a features file).

    Every lookup returns the user's features as of the matrix's ``as_of``, whatever the
    request time: a snapshot, as a nightly batch export would serve. For point-in-time
    profiles use online profiles built from events instead.
    """

    def __init__(self, fm: Any, book: Any = None):
        self.fm = fm
        self.feature_names = tuple(fm.feature_names)
        self.nan_absent = np.asarray(fm.nan_absent, dtype=bool)
        self._rows = id_rows(fm.users)  # canonical ids: 923 finds user "923"
        self._X = sp.csr_matrix(fm.X)
        self._book_state: tuple = ((), {}, None)
        if book is not None:
            self._book_state = (tuple(book.names), book_rows(book), book)

    def get(self, user_id: Any, as_of_ms: int | None = None) -> Any:
        """The user's profile (None for a user in neither the matrix nor the book)."""
        from bta.serve import Profile

        names, rows, book = self._book_state
        b = row_of(rows, user_id)
        flags = segment_flags(book, b, len(names))
        r = row_of(self._rows, user_id)
        if r is None:
            if b is None:
                return None
            return Profile(np.zeros(0, np.int32), np.zeros(0), flags, names)
        lo, hi = self._X.indptr[r], self._X.indptr[r + 1]
        return Profile(self._X.indices[lo:hi].astype(np.int32),
                       self._X.data[lo:hi].astype(np.float64), flags, names)

    def erase(self, user_id: Any) -> bool:
        """Forget the user in this store (the feature file itself is not changed)."""
        key = canonical_id(user_id)
        found = self._rows.pop(key, None) is not None
        names, rows, book = self._book_state
        if key in rows:
            rows = {k: v for k, v in rows.items() if k != key}
            self._book_state = (names, rows, book)
            found = True
        return found


_TOP = ("version", "time_budget_ms", "policy", "untargeted_policy", "profiles", "experiment",
        "privacy", "fallback", "campaigns")


def _build(where: str, cls: Any, *args: Any, **kwargs: Any) -> Any:
    """``cls(*args, **kwargs)`` with its configuration errors prefixed by where they are."""
    try:
        return cls(*args, **kwargs)
    except (BtaError, TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _policy(v: Any, where: str) -> Any:
    from bta.serve import EpsilonGreedy, Greedy, Softmax, Uniform

    kinds = {"greedy": Greedy, "epsilon_greedy": EpsilonGreedy, "softmax": Softmax,
             "uniform": Uniform}
    opts = {"name": v} if isinstance(v, str) else dict(v) if isinstance(v, Mapping) else None
    if opts is None or opts.get("name") not in kinds:
        raise ConfigError(f"{where} must be one of {list(kinds)} or a table with name = one of "
                          f"them, got {v!r}")
    cls = kinds[opts.pop("name")]
    try:
        return cls(**opts)
    except TypeError:
        raise ConfigError(f"{where}: {cls.__name__} does not take {sorted(opts)}") from None


def _campaign(c: Any, where: str) -> Any:
    from bta.serve import Campaign, Creative, FrequencyCap

    if not isinstance(c, Mapping):
        raise ConfigError(f"{where} must be a table, got {c!r}")
    _keys(c, where, _init_keys(Campaign))
    c = dict(c)
    if "id" not in c:
        raise ConfigError(f"{where}: id is required")
    where = f"{where} (id {c['id']!r})"
    cre = c.get("creatives")
    if not isinstance(cre, list) or not cre:
        raise ConfigError(f"{where}: creatives must be a non-empty list of tables like "
                          f"{{id = \"...\", category = \"...\"}}")
    out = []
    for cr in cre:
        if not isinstance(cr, Mapping):
            raise ConfigError(f"{where}: each creative must be a table, got {cr!r}")
        _keys(cr, f"{where} creative", _init_keys(Creative))
        if "id" not in cr:
            raise ConfigError(f"{where}: each creative needs an id")
        out.append(_build(where, Creative, **cr))
    c["creatives"] = tuple(out)
    caps = c.get("caps", [])
    if not isinstance(caps, list):
        raise ConfigError(f"{where}: caps must be a list of tables")
    built = []
    for cap in caps:
        if not isinstance(cap, Mapping):
            raise ConfigError(f"{where}: each cap must be a table, got {cap!r}")
        _keys(cap, f"{where} cap", _init_keys(FrequencyCap))
        built.append(_build(f"{where} cap", FrequencyCap, **cap))
    c["caps"] = tuple(built)
    return _build(where, Campaign, **c)


def engine_from_config(cfg: Mapping[str, Any], base_dir: str | Path = ".",
                       where: str = "config") -> Any:
    """An Engine from a config mapping (see the module docstring); not warmed up.

    Raises
    ------
    ConfigError
        Unknown keys, missing sections, invalid campaigns, targeting that does not compile
        against the profiles' features and segments.
    FileNotFoundError, SchemaError
        The profile or segment files.
    """
    from bta.privacy import OptOutRegistry, PrivacyPolicy
    from bta.serve import Engine, Experiment, MemoryProfileStore

    _keys(cfg, where, _TOP)
    base = Path(base_dir)
    prof = _table(cfg, "profiles", where, ("features", "events", "segments", "min_audience",
                                          "spec"), required=True)
    if ("features" in prof) == ("events" in prof):
        raise ConfigError(f"{where} [profiles]: give exactly one of features or events")
    book = None
    if "segments" in prof:
        book = read_memberships(base / prof["segments"], prof.get("min_audience"))
    if "features" in prof:
        store: Any = FeatureMatrixStore(load_features(base / prof["features"]), book)
    else:
        from bta.events import EventLog
        from bta.features import OnlineProfiles

        events = read_table(base / prof["events"], "events file",
                            required=("user_id", "ts", "event"))
        log = EventLog.from_pandas(events, errors="quarantine", flag_bots=None)
        profiles = OnlineProfiles(feature_spec(prof.get("spec"), f"{where} [profiles.spec]"),
                                  categories=log.categories, grow_categories=False)
        profiles.update(log)
        store = MemoryProfileStore(profiles, book)
    exp = _table(cfg, "experiment", where, ("arms", "control", "salt", "holdout"))
    priv = _table(cfg, "privacy", where, ("min_age", "require_consent_signal", "opt_outs",
                                          "required_purposes", "sensitive_categories",
                                          "allowed_sensitive", "tcf_vendor_id"))
    if "opt_outs" in priv:
        priv["opt_outs"] = OptOutRegistry(priv["opt_outs"])
    for k in ("required_purposes", "sensitive_categories", "allowed_sensitive"):
        if k in priv:
            priv[k] = frozenset(priv[k])
    campaigns = cfg.get("campaigns", [])
    if not isinstance(campaigns, list):
        raise ConfigError(f"{where}: campaigns must be a list of tables ([[campaigns]])")
    from bta.serve import Campaign

    fallback = _table(cfg, "fallback", where, _init_keys(Campaign), required=True)
    kwargs: dict[str, Any] = {}
    if "policy" in cfg:
        kwargs["policy"] = _policy(cfg["policy"], f"{where}: policy")
    if "untargeted_policy" in cfg:
        kwargs["untargeted_policy"] = _policy(cfg["untargeted_policy"],
                                              f"{where}: untargeted_policy")
    for k in ("version", "time_budget_ms"):
        if k in cfg:
            kwargs[k] = cfg[k]
    experiment = _build(f"{where} [experiment]", Experiment, **exp) if exp else None
    privacy = _build(f"{where} [privacy]", PrivacyPolicy, **priv)
    built = [_campaign(c, f"{where}: campaigns[{i}]") for i, c in enumerate(campaigns)]
    house = _campaign(fallback, f"{where} [fallback]")
    # the Engine's own messages name the campaign and what is wrong (targeting, scorers)
    return _build(where, Engine, built, fallback=house, store=store, experiment=experiment,
                  privacy=privacy, **kwargs)


def load_engine(path: str | Path) -> Any:
    """An Engine from a TOML/JSON config file; relative paths are relative to the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config {str(path)!r} does not exist")
    return engine_from_config(load_config(path), path.parent, f"config {path.name}")
