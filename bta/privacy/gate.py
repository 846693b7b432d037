"""Reading the consent signals of a request, in every shape their producers use.

:func:`read_consent` turns a request's consent mapping into :class:`ConsentSignals`, decoded
once and independent of any policy; :meth:`bta.privacy.PrivacyPolicy.serving_gate` judges
them against the policy. A caller that decides several times for one request (an OpenRTB
request with several impressions) reads the consent once and passes the
:class:`ConsentSignals` (a mapping too) to every decision.

The accepted shapes of each key (anything else is ``bad_consent``, which means untargeted):

=============  ==================================================================================
key            accepted values
=============  ==================================================================================
``opt_out``    a flag (see below); true: the user opted out of targeting
``gpc``        a flag; true: Global Privacy Control (an opt-out)
``coppa``      a flag; true: child-directed (``under_age``); an unreadable value also counts
``age``        a number or numeric text (``12``, ``"12"``, ``12.0``); a value that is not a
               finite number at least the policy's ``min_age`` (``inf``, ``"1e999"``, NaN,
               ``"twelve"``, a bool) is under age (fail closed)
``gdpr``       a flag; true: GDPR applies (consent is required); an unreadable value counts as 1
``tcf``        a TCF v2 TC string (decoded strictly: see :mod:`bta.privacy.signals`); the
               empty string grants nothing (``no_consent``)
``purposes``   an iterable of purpose numbers (ints 1-24, e.g. ``[1, 3, 4]``), or a mapping
               purpose -> bool (``{3: True, 4: False}``, or the CMP API's ``{"3": true}``;
               0/1 integers count as bools) counting only the true values; text (``"34"``),
               floats, bools as purposes, other values and anything else are ``bad_consent``
``vendors``    vendor consents in the same two shapes (vendor ids >= 1), for a policy with
               ``tcf_vendor_id`` when the caller decoded the TC string itself
``gpp``        an IAB GPP string (header, sections; decoded strictly)
``gpp_sid``    the applicable GPP section ids: an iterable of ints, or text ``"2,7"``
``us_privacy`` the 4-character CCPA string; ``Y`` as third character is an opt-out
=============  ==================================================================================

Flags are OpenRTB's 0/1 integers in any of the types real producers send: ``1``, ``True``,
``"1"``, ``"true"`` (any case, surrounding spaces ignored), ``1.0`` mean set; ``0``, ``False``,
``"0"``, ``"false"``, ``0.0`` mean not set; None means absent. Any other value of a flag is
unreadable: for ``opt_out``/``gpc`` that is ``bad_consent``, for ``coppa`` under age, for
``gdpr`` "applies" — each the closed side. Keys not listed here are ignored.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

__all__ = ["ConsentSignals", "read_consent", "read_flag", "read_number", "UNREADABLE",
           "MAX_CONSENT_CHARS"]

#: Longest consent text decoded (a TCF TC string or a GPP string); longer text is
#: ``bad_consent`` before any decoding. Real strings are a few hundred characters to a few
#: KiB: CMPs keep them in cookies of at most 4 KiB. The bound keeps the decode of a crafted
#: string (many TCF range entries) near a millisecond.
MAX_CONSENT_CHARS = 4_096

#: What :func:`read_flag` and :func:`read_number` return for a value they cannot read.
UNREADABLE = object()

_TRUE = frozenset({"1", "true"})
_FALSE = frozenset({"0", "false"})
_MAX_TEXT = 64  # longest text a flag or a number may be given as
_MAX_PURPOSE = 24
_MAX_VENDOR = 65_535  # TCF vendor ids are 16-bit
_MAX_SET = 65_536  # longest list of purposes or vendors read


def read_flag(x: Any) -> Any:
    """An OpenRTB 0/1 flag in any type: True, False, None (absent) or :data:`UNREADABLE`."""
    if x is None:
        return None
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return bool(x) if int(x) in (0, 1) else UNREADABLE
    if isinstance(x, (float, np.floating)):
        return bool(x) if float(x) in (0.0, 1.0) else UNREADABLE
    if isinstance(x, str) and len(x) <= _MAX_TEXT:
        s = x.strip().lower()
        if s in _TRUE:
            return True
        if s in _FALSE:
            return False
    return UNREADABLE


def read_number(x: Any) -> Any:
    """A number given as a number or as numeric text: a float (possibly inf or NaN), None
    when absent, :data:`UNREADABLE` otherwise (bools are not numbers)."""
    if x is None:
        return None
    if isinstance(x, (bool, np.bool_)):
        return UNREADABLE
    if isinstance(x, (int, np.integer)):
        try:
            return float(x)
        except OverflowError:  # an int beyond float: as large as it gets
            return math.inf if x > 0 else -math.inf
    if isinstance(x, (float, np.floating)):
        return float(x)
    if isinstance(x, str) and len(x) <= _MAX_TEXT:
        try:
            return float(x.strip())
        except ValueError:
            return UNREADABLE
    return UNREADABLE


def _granted(x: Any, lo: int, hi: int) -> frozenset | None:
    """The ids granted by an iterable of ids or a mapping id -> bool; None when the value is
    in no documented shape."""
    if isinstance(x, (str, bytes, bytearray)) or x is None:
        return None
    out: set[int] = set()
    if isinstance(x, Mapping):
        if len(x) > _MAX_SET:
            return None
        for k, v in x.items():
            if isinstance(k, str) and k.isascii() and k.isdigit() and len(k) <= 6:
                k = int(k)
            if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) \
                    or not lo <= int(k) <= hi:
                return None
            # a JSON boolean (or OpenRTB's 0/1 integer); text, floats and null are no answer
            if isinstance(v, (bool, np.bool_)):
                flag = bool(v)
            elif isinstance(v, (int, np.integer)) and int(v) in (0, 1):
                flag = bool(v)
            else:
                return None
            if flag:
                out.add(int(k))
        return frozenset(out)
    if not isinstance(x, Iterable):
        return None
    if hasattr(x, "__len__") and len(x) > _MAX_SET:
        return None
    for i, p in enumerate(x):
        if i >= _MAX_SET or isinstance(p, (bool, np.bool_)) \
                or not isinstance(p, (int, np.integer)) or not lo <= int(p) <= hi:
            return None
        out.add(int(p))
    return frozenset(out)


def _sections(x: Any) -> tuple[int, ...] | None:
    """``gpp_sid`` as a tuple of ints (an iterable of ints, or text such as ``"2,7"`` or
    ``"2_7"``); None when in no documented shape."""
    if isinstance(x, str):
        if len(x) > 1024:
            return None
        parts = [p.strip() for p in x.replace("_", ",").split(",")]
        if not all(p.isascii() and p.isdigit() and len(p) <= 5 for p in parts):
            return None
        return tuple(int(p) for p in parts)
    got = _granted(x, 0, 65_535) if not isinstance(x, Mapping) else None
    if got is None:
        return None
    return tuple(sorted(got))


@dataclass(frozen=True)
class _Decoded:
    opt_out: bool = False
    coppa: bool = False
    age: float | None = None  # NaN: given but unreadable (under age)
    gdpr: bool | None = None
    purposes: frozenset | None = None
    vendor_consent: Callable[[int], bool] | None = None
    gpp_reason: str | None = None
    bad: str | None = None  # why the signals are unreadable ("bad_consent")


class ConsentSignals(Mapping):
    """A request's consent mapping, decoded once (see the module docs for the shapes).

    It is a read-only mapping of the keys given (so it can stand wherever a consent mapping
    can), and carries the decoded signals the serving gate judges. Build it with
    :func:`read_consent`.
    """

    __slots__ = ("_raw", "decoded")

    def __init__(self, raw: Mapping[str, Any], decoded: _Decoded):
        self._raw = raw
        self.decoded = decoded

    def __getitem__(self, key: str) -> Any:
        return self._raw[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)

    def __repr__(self) -> str:
        return f"ConsentSignals({self.decoded!r})"


def read_consent(consent: Any) -> ConsentSignals:
    """Decode a request's consent mapping once; never raises.

    ``None`` reads as no signal at all; a :class:`ConsentSignals` is returned as it is; any
    other value that is not a mapping is ``bad_consent``.
    """
    if isinstance(consent, ConsentSignals):
        return consent
    if consent is None:
        return ConsentSignals({}, _Decoded())
    if not isinstance(consent, Mapping):
        return ConsentSignals({}, _Decoded(bad="bad_consent"))
    try:
        return ConsentSignals(consent, _decode(consent))
    except Exception:  # noqa: BLE001 - a signal that cannot be read fails closed
        return ConsentSignals(consent, _Decoded(bad="bad_consent"))


def _decode(c: Mapping[str, Any]) -> _Decoded:
    from bta.privacy.signals import SignalError, decode_gpp, decode_tcf, gpp_restriction

    get = c.get
    bad = None
    opt_out = False
    for key in ("opt_out", "gpc"):
        f = read_flag(get(key))
        if f is UNREADABLE:
            bad = "bad_consent"
        elif f:
            opt_out = True
    usp = get("us_privacy")
    if usp is not None:
        if isinstance(usp, str) and len(usp) == 4 and usp[0] == "1" \
                and all(ch in "YN-" for ch in usp[1:].upper()):
            opt_out = opt_out or usp[2].upper() == "Y"
        else:
            bad = "bad_consent"
    f = read_flag(get("coppa"))
    coppa = f is UNREADABLE or bool(f)
    age = read_number(get("age"))
    if age is UNREADABLE:
        age = math.nan
    f = read_flag(get("gdpr"))
    gdpr = None if f is None else (True if f is UNREADABLE else f)
    purposes = vendor_consent = None
    for key in ("tcf", "gpp"):
        v = get(key)
        if isinstance(v, str) and len(v) > MAX_CONSENT_CHARS:
            return _Decoded(opt_out=opt_out, coppa=coppa, age=age, gdpr=gdpr, bad="bad_consent")
    tcf = get("tcf")
    if isinstance(tcf, str) and tcf.strip() == "":
        purposes = frozenset()  # an empty TC string (no CMP answer yet): no consent
        vendor_consent = frozenset().__contains__
    elif tcf is not None:
        try:
            tc = decode_tcf(tcf) if not hasattr(tcf, "purposes_consent") else tcf
            purposes, vendor_consent = frozenset(tc.purposes_consent), tc.vendor_consent
        except (SignalError, TypeError, ValueError):
            bad = "bad_consent"
    if get("purposes") is not None:
        got = _granted(get("purposes"), 1, _MAX_PURPOSE)
        if got is None:
            bad = "bad_consent"
        else:  # the caller's decoded purposes stand beside a string: both must grant
            purposes = got if purposes is None else purposes & got
    if get("vendors") is not None:
        got = _granted(get("vendors"), 1, _MAX_VENDOR)
        if got is None:
            bad = "bad_consent"
        elif vendor_consent is None:
            vendor_consent = got.__contains__
        else:
            tc_vendor = vendor_consent
            vendor_consent = lambda v: got.__contains__(v) and tc_vendor(v)  # noqa: E731
    gpp_reason = None
    gpp = get("gpp")
    sid = get("gpp_sid")
    if gpp is not None:
        applicable = None
        if sid is not None:
            applicable = _sections(sid)
            if applicable is None:
                bad = "bad_consent"
        try:
            g = decode_gpp(gpp) if not hasattr(gpp, "section_ids") else gpp
        except (SignalError, TypeError, ValueError):
            g = None
            bad = "bad_consent"
        if g is not None and bad is None:
            gpp_reason = gpp_restriction(g, applicable)
            tc = getattr(g, "tcf", None)
            if tc is not None and (applicable is None or 2 in applicable):
                # the TCF EU section counts like user.consent: both must grant
                p = frozenset(tc.purposes_consent)
                purposes = p if purposes is None else purposes & p
                if vendor_consent is None:
                    vendor_consent = tc.vendor_consent
                else:
                    first = vendor_consent
                    vendor_consent = lambda v: first(v) and tc.vendor_consent(v)  # noqa: E731
    elif sid is not None and _sections(sid) != ():
        bad = "bad_consent"  # sections said to apply, but no string to read them from
    return _Decoded(opt_out=opt_out, coppa=coppa, age=age, gdpr=gdpr, purposes=purposes,
                    vendor_consent=vendor_consent, gpp_reason=gpp_reason, bad=bad)
