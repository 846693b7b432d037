"""Strict decoders of the consent signals a bid request carries: IAB TCF v2 and IAB GPP.

What is decoded
---------------
- :func:`decode_tcf`: an IAB TCF v2 TC string (the format of TCF v2.0 to v2.2). The core
  segment in full: Version, Created, LastUpdated, CmpId, CmpVersion, ConsentScreen,
  ConsentLanguage, VendorListVersion, TcfPolicyVersion, IsServiceSpecific, UseNonStandardTexts,
  SpecialFeatureOptIns, PurposesConsent, PurposesLITransparency, PurposeOneTreatment,
  PublisherCC, the Vendor Consent section, the Vendor Legitimate Interest section and the
  Publisher Restrictions section. Optional segments after ``"."`` (1 disclosed vendors,
  2 allowed vendors, 3 publisher TC) are parsed to check their layout; only their types are kept.
- :func:`decode_gpp`: an IAB GPP string: the header (Type 3, Version 1, the Fibonacci-coded
  section ids) and each section it lists. Section 2 (TCF EU v2) goes through
  :func:`decode_tcf`; section 6 is the four-character US Privacy string; sections 7 (usnat,
  versions 1 and 2) and 8 to 22 (usca, usva, usco, usut, usct, usfl, usmt, usor, ustx, usde,
  usia, usne, usnh, usnj, ustn, version 1) are decoded field by field, with the optional GPC
  sub-section. Any other section id (1, 3, 4, 5 tcfcav1, 23 and up) or a version we have no
  layout for is kept as opaque text, marked ``known=False``.
- :func:`gpp_restriction`: what a GPP string means for personalised (targeted) advertising.

Malformed (``SignalError``), for every string
---------------------------------------------
Not a ``str``; empty; longer than :data:`MAX_SIGNAL_LENGTH` characters (checked before anything
else is read, so a decode costs time linear in at most that much text); a character outside the
format's alphabet; an empty segment; a segment shorter than its fields say; trailing junk.

Padding rule (both formats): base64url carries 6 bits a character, so a segment's last
character is padded. Padding bits must be zero, and there may be no more of them than complete
the 24-bit base64 group (4 characters) that holds the last field. Stricter rules (at most 7
bits) would refuse strings the IAB reference libraries write: iabtcf-es and iabgpp-es's
"traditional" encoder pad the bit string to a multiple of 24 bits, so a TC string may carry up
to 23 zero bits (the iabgpp-es test string for vendors [1, 173, 722] carries 14). Anything past
that group is junk and refused.

TC string: characters ``A-Z a-z 0-9 - _`` plus ``"."`` between segments; ``"="`` only as the
base64 padding that completes a segment's last 4-character group; Version must be 2; the two
letters of ConsentLanguage and PublisherCC must be A-Z; in the vendor sections a range entry
must have 1 <= start <= end <= MaxVendorId; in the publisher restrictions PurposeId must be 1-24,
RestrictionType 0-2 (3 is undefined) and a range 1 <= start <= end (those vendor ids are not
bounded by MaxVendorId); an optional segment of an unknown type (0, 4-7) or a type given twice.

GPP string: characters ``A-Z a-z 0-9 - _ . ~``; header Type 3 and Version 1; a header that
lists another number of sections than the string has; a Fibonacci code longer than
16 bits; a US section with a sub-section on a section that has none (usva, usut, usfl), a
sub-section type other than 1 (GPC), or two GPC sub-sections. usnat version 1 is read with
the 12/2 layout; a version-1 string whose bits do not fit it (the iabgpp-java/-es encoders of
2024 wrote the 16/3 layout under Version 1, e.g. ``BAAAAAAAAABA``) is read with the version-2
layout.

Values, not layout (kept on the section as ``problems``, judged ``"bad_consent"``): a 2-bit US
field holding 3, MspaCoveredTransaction other than 1 or 2, a US Privacy text other than
``1`` followed by three of ``Y``, ``N``, ``-``.

What each US field means for targeting
--------------------------------------
:func:`gpp_restriction` follows Prebid's default interpretation of the US strings ("Interpreting
USNat Strings", docs.prebid.org/features/mspa-usnat.html, the ``transmitUfpd`` activity: user
first-party data, i.e. behavioral profiles), with the extra restriction of Prebid.js's
``libraries/mspa/activityControls.js`` (consent to a sensitive category without both sensitive
notices). States 8-12 are first mapped onto the usnat fields with Prebid's normalization (its
``gppControl_usstates`` module); its rules for each field are in that function's docstring.

Why fail closed
---------------
A consent string is the user's word. A decoder that guesses at a shape it does not understand
(a lax one reads bits from wherever they happen to be) can turn "no" into "yes". Every doubt
here therefore ends as an error or a restriction, never as consent: a malformed string raises,
a value the specification does not allow restricts, an applicable section we cannot read
restricts.
"""

from __future__ import annotations

import binascii
import re
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, Union

from bta.errors import BtaError

__all__ = [
    "MAX_SIGNAL_LENGTH",
    "GPPSection",
    "GPPString",
    "PublisherRestriction",
    "SignalError",
    "TCString",
    "VendorSet",
    "decode_gpp",
    "decode_tcf",
    "gpp_restriction",
]

#: Longest signal text accepted, in characters (64 KiB). A TC string listing every vendor of
#: today's global vendor list as a bitfield is under 1 KiB; the bound only stops hostile input
#: before any work is done.
MAX_SIGNAL_LENGTH = 64 * 1024

#: Longest Fibonacci code read in a GPP header (values up to 1596): section ids are below 100,
#: and an unbounded code would let a long run of zeros build huge Fibonacci numbers.
_FIB_MAX_BITS = 16

_B64URL = re.compile(r"[A-Za-z0-9_-]+")
_TCF_CHARS = re.compile(r"[A-Za-z0-9_.=-]+")
_GPP_CHARS = re.compile(r"[A-Za-z0-9_.~-]+")
_TO_STD_B64 = str.maketrans("-_", "+/")


class SignalError(BtaError, ValueError):
    """A consent signal is malformed: its shape is not the one its specification defines."""


# ---------------------------------------------------------------------------------------------
# the one bit reader


class _BitReader:
    """Big-endian bit fields read left to right from one base64url segment.

    The text is decoded once to bytes (in C); each read costs time proportional to its width,
    so a whole decode is linear in the input.
    """

    __slots__ = ("_bits", "_nbits", "pos", "where")

    def __init__(self, text: str, where: str) -> None:
        # the caller has checked that text is non-empty base64url; the "A"s it is padded with
        # are zero bits past _nbits, which no read reaches
        self.where = where
        self._nbits = 6 * len(text)
        padded = text.translate(_TO_STD_B64) + "A" * (-len(text) % 4)
        data = binascii.a2b_base64(padded)
        # the bits as text "0101...", made once (in C): a field is then one slice and one
        # int(..., 2), about half the time of slicing bytes and shifting
        self._bits = bin(int.from_bytes(data, "big") | (1 << (8 * len(data))))[3:]
        self.pos = 0

    def read(self, n: int, field: str) -> int:
        """The next ``n`` bits as an unsigned integer."""
        pos = self.pos
        end = pos + n
        if end > self._nbits:
            raise SignalError(f"{self.where} is truncated: {field} needs {n} bits at bit "
                              f"{pos}, {self._nbits - pos} left")
        self.pos = end
        return int(self._bits[pos:end], 2) if n else 0

    def flag(self, field: str) -> bool:
        return self.read(1, field) == 1

    def bit_set(self, n: int, field: str) -> frozenset[int]:
        """A bitfield of ``n`` bits as the set of its 1-based positions that are 1."""
        bits = self.read(n, field)
        return frozenset(i + 1 for i in range(n) if bits >> (n - 1 - i) & 1)

    def letters(self, field: str) -> str:
        """Two 6-bit letters, 0 = "A" ... 25 = "Z"."""
        a, b = self.read(6, field), self.read(6, field)
        if a > 25 or b > 25:
            raise SignalError(f"{self.where}: {field} must be two letters A-Z (codes 0-25), "
                              f"got codes {a} and {b}")
        return chr(65 + a) + chr(65 + b)

    def fibonacci(self, field: str) -> int:
        """A Fibonacci-coded positive integer (bit i weighs F(i+2); "11" ends the code)."""
        value, prev, weight, next_weight = 0, 0, 1, 2
        for _ in range(_FIB_MAX_BITS + 1):
            bit = self.read(1, field)
            if bit and prev:
                return value
            value += weight if bit else 0
            prev, weight, next_weight = bit, next_weight, weight + next_weight
        raise SignalError(f"{self.where}: Fibonacci-coded {field} is longer than "
                          f"{_FIB_MAX_BITS} bits")

    def finish(self) -> None:
        """Refuse trailing junk: padding past the last 24-bit group, or non-zero padding."""
        left = self._nbits - self.pos
        allowed = -self.pos % 24
        if left > allowed:
            raise SignalError(f"{self.where} has {left} bits after its last field, more than "
                              f"the {allowed} padding bits that complete its last 24-bit "
                              f"base64 group (trailing junk)")
        if left and self.read(left, "padding"):
            raise SignalError(f"{self.where} has non-zero padding bits after its last field")


def _check_text(s: object, what: str, alphabet: re.Pattern, chars: str) -> str:
    """``s`` as a non-empty str of at most MAX_SIGNAL_LENGTH characters of ``alphabet``."""
    if not isinstance(s, str):
        raise SignalError(f"{what} must be a str, got {type(s).__name__}")
    if not s:
        raise SignalError(f"{what} is empty")
    if len(s) > MAX_SIGNAL_LENGTH:
        raise SignalError(f"{what} is {len(s)} characters long, more than the "
                          f"{MAX_SIGNAL_LENGTH} allowed")
    if not alphabet.fullmatch(s):
        i = next(i for i, c in enumerate(s) if not alphabet.fullmatch(c))
        raise SignalError(f"{what} has character {s[i]!r} at position {i}; allowed: {chars}")
    return s


def _segments(s: str, what: str, sep: str = ".") -> list[str]:
    parts = s.split(sep)
    for i, part in enumerate(parts):
        if not part:
            raise SignalError(f"{what} has an empty segment (number {i + 1})")
    return parts


# ---------------------------------------------------------------------------------------------
# TCF v2


@dataclass(frozen=True, slots=True)
class VendorSet:
    """Vendor ids of one TC string section, stored as encoded (never expanded).

    Attributes
    ----------
    max_vendor_id : int
        The section's MaxVendorId (for a publisher restriction: its largest vendor id).
    is_range_encoding : bool
        Whether the string used range entries (``ranges``) or a bitfield (``bitfield``).
    bitfield : bytes
        Bit ``i`` (most significant first) is vendor ``i + 1``; empty for range encoding.
    ranges : tuple of (int, int)
        Sorted, merged, inclusive ``(start, end)`` ranges; empty for bitfield encoding.

    ``vendor_id in vendors`` costs O(1) for a bitfield and O(log n) for n ranges: a range of
    10,000 vendors is one pair, not 10,000 ids.
    """

    max_vendor_id: int
    is_range_encoding: bool
    bitfield: bytes = b""
    ranges: tuple[tuple[int, int], ...] = ()

    def __contains__(self, vendor_id: object) -> bool:
        if (not isinstance(vendor_id, int) or isinstance(vendor_id, bool)
                or not 1 <= vendor_id <= self.max_vendor_id):
            return False
        if self.is_range_encoding:
            i = bisect_right(self.ranges, (vendor_id, 1 << 17)) - 1
            return i >= 0 and self.ranges[i][1] >= vendor_id
        v = vendor_id - 1
        return bool(self.bitfield[v >> 3] >> (7 - (v & 7)) & 1)

    def __iter__(self) -> Iterator[int]:
        """The vendor ids, ascending."""
        if self.is_range_encoding:
            for start, end in self.ranges:
                yield from range(start, end + 1)
        else:
            for v in range(self.max_vendor_id):
                if self.bitfield[v >> 3] >> (7 - (v & 7)) & 1:
                    yield v + 1

    def __len__(self) -> int:
        if self.is_range_encoding:
            return sum(end - start + 1 for start, end in self.ranges)
        return int.from_bytes(self.bitfield, "big").bit_count()


@dataclass(frozen=True, slots=True)
class PublisherRestriction:
    """One entry of the Publisher Restrictions section.

    ``restriction_type``: 0 purpose flatly not allowed, 1 require consent, 2 require
    legitimate interest.
    """

    purpose_id: int
    restriction_type: int
    vendors: VendorSet


@dataclass(frozen=True, slots=True)
class TCString:
    """A decoded TCF v2 TC string (see :func:`decode_tcf`). Times are in deciseconds since
    1970-01-01 UTC, as encoded; purpose, special-feature and vendor ids are 1-based."""

    version: int
    created: int
    last_updated: int
    cmp_id: int
    cmp_version: int
    consent_screen: int
    consent_language: str
    vendor_list_version: int
    tcf_policy_version: int
    is_service_specific: bool
    use_non_standard_texts: bool
    special_feature_opt_ins: frozenset[int]
    purposes_consent: frozenset[int]
    purposes_li: frozenset[int]
    purpose_one_treatment: bool
    publisher_cc: str
    vendor_consents: VendorSet
    vendor_legitimate_interests: VendorSet
    publisher_restrictions: tuple[PublisherRestriction, ...]
    #: Types of the optional segments present after the core, in string order
    #: (1 disclosed vendors, 2 allowed vendors, 3 publisher TC).
    segment_types: tuple[int, ...] = ()

    @property
    def max_vendor_id(self) -> int:
        """MaxVendorId of the Vendor Consent section."""
        return self.vendor_consents.max_vendor_id

    def vendor_consent(self, vendor_id: int) -> bool:
        """Whether ``vendor_id`` has the user's consent (False for ids outside 1..max)."""
        return vendor_id in self.vendor_consents

    def vendor_li(self, vendor_id: int) -> bool:
        """Whether ``vendor_id``'s legitimate interest was disclosed and not objected to."""
        return vendor_id in self.vendor_legitimate_interests


def _ranges(r: _BitReader, what: str, max_id: int | None) -> tuple[tuple[int, int], ...]:
    """NumEntries (12 bits) range entries, checked, sorted and merged."""
    n = r.read(12, f"{what} NumEntries")
    out = []
    # field names made once, not per entry (the entry number is added to errors below)
    f_range, f_start, f_end = (f"{what} range entry IsARange",
                               f"{what} range entry StartOrOnlyVendorId",
                               f"{what} range entry EndVendorId")
    read = r.read
    for i in range(1, n + 1):
        is_range = read(1, f_range)
        start = read(16, f_start)
        end = read(16, f_end) if is_range else start
        if start == 0:
            raise SignalError(f"{r.where}: {what} entry {i} names vendor id 0 (ids start at 1)")
        if end < start:
            raise SignalError(f"{r.where}: {what} entry {i} is the range {start}-{end}, "
                              f"which ends before it starts")
        if max_id is not None and end > max_id:
            raise SignalError(f"{r.where}: {what} entry {i} reaches vendor {end}, above "
                              f"MaxVendorId {max_id}")
        out.append((start, end))
    # entries need not be sorted (the spec allows any order); sorting is O(n log n) for
    # n <= 4095 entries, and linear when they come sorted, as encoders write them
    out.sort()
    merged: list[tuple[int, int]] = []
    for start, end in out:
        if merged and start <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return tuple(merged)


def _vendor_section(r: _BitReader, what: str) -> VendorSet:
    max_id = r.read(16, f"{what} MaxVendorId")
    if r.flag(f"{what} IsRangeEncoding"):
        return VendorSet(max_id, True, b"", _ranges(r, what, max_id))
    bits = r.read(max_id, f"{what} BitField") if max_id else 0
    # left-align so vendor 1 is the most significant bit of byte 0
    return VendorSet(max_id, False, (bits << (-max_id % 8)).to_bytes((max_id + 7) // 8, "big"))


def _publisher_restrictions(r: _BitReader) -> tuple[PublisherRestriction, ...]:
    n = r.read(12, "NumPubRestrictions")
    out = []
    for i in range(1, n + 1):
        purpose = r.read(6, f"publisher restriction {i} PurposeId")
        kind = r.read(2, f"publisher restriction {i} RestrictionType")
        if not 1 <= purpose <= 24:
            raise SignalError(f"{r.where}: publisher restriction {i} has PurposeId {purpose}, "
                              f"expected 1-24")
        if kind == 3:
            raise SignalError(f"{r.where}: publisher restriction {i} has RestrictionType 3, "
                              f"which is undefined (0, 1 or 2 expected)")
        ranges = _ranges(r, f"publisher restriction {i}", None)
        vendors = VendorSet(ranges[-1][1] if ranges else 0, True, b"", ranges)
        out.append(PublisherRestriction(purpose, kind, vendors))
    return tuple(out)


def _strip_b64_padding(seg: str, where: str) -> str:
    body = seg.rstrip("=")
    pad = len(seg) - len(body)
    if pad and (not body or (len(body) + pad) % 4 or pad > 2 or len(body) % 4 + pad != 4):
        raise SignalError(f"{where} ends in {pad} '=', which is not the base64 padding of "
                          f"{len(body)} characters")
    if "=" in body or not _B64URL.fullmatch(body):
        raise SignalError(f"{where} has '=' before its end; '=' may only pad a segment")
    return body


def _optional_tcf_segment(seg: str, i: int) -> int:
    where = f"TC string segment {i + 1}"
    r = _BitReader(_strip_b64_padding(seg, where), where)
    kind = r.read(3, "SegmentType")
    if kind in (1, 2):  # disclosed vendors / allowed vendors: MaxVendorId + bitfield or ranges
        _vendor_section(r, "vendor section")
    elif kind == 3:  # publisher TC
        r.read(24, "PubPurposesConsent")
        r.read(24, "PubPurposesLITransparency")
        n = r.read(6, "NumCustomPurposes")
        r.read(n, "CustomPurposesConsent")
        r.read(n, "CustomPurposesLITransparency")
    else:
        raise SignalError(f"{where} has SegmentType {kind}; known: 1 disclosed vendors, "
                          f"2 allowed vendors, 3 publisher TC")
    r.finish()
    return kind


def decode_tcf(s: str) -> TCString:
    """Decode an IAB TCF v2 TC string, refusing anything that is not exactly one.

    Parameters
    ----------
    s : str
        The TC string (``regs.ext.gdpr`` consent of a bid request, the ``euconsent-v2``
        cookie, or section 2 of a GPP string). At most :data:`MAX_SIGNAL_LENGTH` characters.

    Returns
    -------
    TCString
        Every core-segment field, the vendor consent and legitimate-interest sets and the
        publisher restrictions; the types of the optional segments present.

    Raises
    ------
    SignalError
        When ``s`` is malformed; the message says what is wrong (see the module docstring for
        the exact rules). Never returns a partial result.

    Notes
    -----
    The layout is the "TC string format" of the IAB TCF v2 specification: Version 6 bits,
    Created 36, LastUpdated 36, CmpId 12, CmpVersion 12, ConsentScreen 6, ConsentLanguage 12,
    VendorListVersion 12, TcfPolicyVersion 6, IsServiceSpecific 1, UseNonStandardTexts 1,
    SpecialFeatureOptIns 12, PurposesConsent 24, PurposesLITransparency 24,
    PurposeOneTreatment 1, PublisherCC 12; then the vendor consent and vendor legitimate
    interest sections (MaxVendorId 16, IsRangeEncoding 1, then a MaxVendorId-bit field or
    NumEntries 12 and entries IsARange 1, StartOrOnlyVendorId 16, [EndVendorId 16]); then
    NumPubRestrictions 12 and per restriction PurposeId 6, RestrictionType 2 and a range list.
    Cost is linear in ``len(s)`` (range lists are sorted: O(n log n) for n <= 4095 entries).

    Examples
    --------
    >>> tc = decode_tcf("COtybn4PA_zT4KjACBENAPCIAEBAAECAAIAAAAAAAAAA")
    >>> tc.cmp_id, sorted(tc.purposes_consent), tc.consent_language
    (675, [2, 10], 'EN')
    >>> try:  # one character of junk appended
    ...     decode_tcf("COtybn4PA_zT4KjACBENAPCIAEBAAECAAIAAAAAAAAAAB")
    ... except SignalError as exc:
    ...     print(str(exc)[:61])
    TC string core segment has 11 bits after its last field, more
    """
    _check_text(s, "TC string", _TCF_CHARS, "A-Z a-z 0-9 - _, '.' between segments, "
                "'=' ending a segment")
    segments = _segments(s, "TC string")
    where = "TC string core segment"
    r = _BitReader(_strip_b64_padding(segments[0], where), where)
    version = r.read(6, "Version")
    if version != 2:
        raise SignalError(f"{where} has Version {version}, expected 2")
    created = r.read(36, "Created")
    last_updated = r.read(36, "LastUpdated")
    cmp_id = r.read(12, "CmpId")
    cmp_version = r.read(12, "CmpVersion")
    consent_screen = r.read(6, "ConsentScreen")
    consent_language = r.letters("ConsentLanguage")
    vendor_list_version = r.read(12, "VendorListVersion")
    tcf_policy_version = r.read(6, "TcfPolicyVersion")
    is_service_specific = r.flag("IsServiceSpecific")
    use_non_standard_texts = r.flag("UseNonStandardTexts")
    special_features = r.bit_set(12, "SpecialFeatureOptIns")
    purposes = r.bit_set(24, "PurposesConsent")
    purposes_li = r.bit_set(24, "PurposesLITransparency")
    purpose_one_treatment = r.flag("PurposeOneTreatment")
    publisher_cc = r.letters("PublisherCC")
    consents = _vendor_section(r, "vendor consent section")
    lis = _vendor_section(r, "vendor legitimate interest section")
    restrictions = _publisher_restrictions(r)
    r.finish()
    kinds = tuple(_optional_tcf_segment(seg, i) for i, seg in enumerate(segments[1:], 1))
    if len(set(kinds)) != len(kinds):
        raise SignalError(f"TC string has an optional segment type twice: {list(kinds)}")
    return TCString(version, created, last_updated, cmp_id, cmp_version, consent_screen,
                    consent_language, vendor_list_version, tcf_policy_version,
                    is_service_specific, use_non_standard_texts, special_features, purposes,
                    purposes_li, purpose_one_treatment, publisher_cc, consents, lis,
                    restrictions, kinds)


# ---------------------------------------------------------------------------------------------
# GPP

FieldValue = Union[int, str, tuple[int, ...]]

_MSPA = (("MspaCoveredTransaction", 0), ("MspaOptOutOptionMode", 0),
         ("MspaServiceProviderMode", 0))


def _layout(*fields: str | tuple[str, int]) -> tuple[tuple[str, int], ...]:
    """Field names in string order; ``(name, n)`` is a list of n 2-bit values, a bare name
    one 2-bit value. Every US layout ends with the three MSPA fields."""
    return tuple(f if isinstance(f, tuple) else (f, 0) for f in fields) + _MSPA


_STATE_HEAD = ("SaleOptOutNotice", "TargetedAdvertisingOptOutNotice", "SaleOptOut",
               "TargetedAdvertisingOptOut")
_USNAT_HEAD = ("SharingNotice", "SaleOptOutNotice", "SharingOptOutNotice",
               "TargetedAdvertisingOptOutNotice", "SensitiveDataProcessingOptOutNotice",
               "SensitiveDataLimitUseNotice", "SaleOptOut", "SharingOptOut",
               "TargetedAdvertisingOptOut")
_SDP, _KC = "SensitiveDataProcessing", "KnownChildSensitiveDataConsents"
_ADPC = "AdditionalDataProcessingConsent"

#: section id -> (API prefix, has a GPC sub-section, {version: layout}). Field lists and
#: widths from the GPP section specifications (Global-Privacy-Platform/Sections), checked
#: against iabgpp-java's segment classes.
_US_SECTIONS: dict[int, tuple[str, bool, dict[int, tuple[tuple[str, int], ...]]]] = {
    7: ("usnat", True, {
        1: _layout(*_USNAT_HEAD, (_SDP, 12), (_KC, 2), "PersonalDataConsents"),
        2: _layout(*_USNAT_HEAD, (_SDP, 16), (_KC, 3), "PersonalDataConsents")}),
    8: ("usca", True, {1: _layout(
        "SaleOptOutNotice", "SharingOptOutNotice", "SensitiveDataLimitUseNotice", "SaleOptOut",
        "SharingOptOut", (_SDP, 9), (_KC, 2), "PersonalDataConsents")}),
    9: ("usva", False, {1: _layout("SharingNotice", *_STATE_HEAD, (_SDP, 8), _KC)}),
    10: ("usco", True, {1: _layout("SharingNotice", *_STATE_HEAD, (_SDP, 7), _KC)}),
    11: ("usut", False, {1: _layout(
        "SharingNotice", "SaleOptOutNotice", "TargetedAdvertisingOptOutNotice",
        "SensitiveDataProcessingOptOutNotice", "SaleOptOut", "TargetedAdvertisingOptOut",
        (_SDP, 8), _KC)}),
    12: ("usct", True, {1: _layout("SharingNotice", *_STATE_HEAD, (_SDP, 8), (_KC, 3))}),
    13: ("usfl", False, {1: _layout("ProcessingNotice", *_STATE_HEAD, (_SDP, 8), (_KC, 3),
                                    _ADPC)}),
    14: ("usmt", True, {1: _layout("SharingNotice", *_STATE_HEAD, (_SDP, 8), (_KC, 3), _ADPC)}),
    15: ("usor", True, {1: _layout("ProcessingNotice", *_STATE_HEAD, (_SDP, 11), (_KC, 3),
                                   _ADPC)}),
    16: ("ustx", True, {1: _layout("ProcessingNotice", *_STATE_HEAD, (_SDP, 8), _KC, _ADPC)}),
    17: ("usde", True, {1: _layout("ProcessingNotice", *_STATE_HEAD, (_SDP, 9), (_KC, 5),
                                   _ADPC)}),
    18: ("usia", True, {1: _layout(
        "ProcessingNotice", "SaleOptOutNotice", "TargetedAdvertisingOptOutNotice",
        "SensitiveDataOptOutNotice", "SaleOptOut", "TargetedAdvertisingOptOut", (_SDP, 8),
        _KC)}),
    19: ("usne", True, {1: _layout("ProcessingNotice", *_STATE_HEAD, (_SDP, 8), _KC, _ADPC)}),
    20: ("usnh", True, {1: _layout("ProcessingNotice", *_STATE_HEAD, (_SDP, 8), (_KC, 3),
                                   _ADPC)}),
    21: ("usnj", True, {1: _layout("ProcessingNotice", *_STATE_HEAD, (_SDP, 10), (_KC, 5),
                                   _ADPC)}),
    22: ("ustn", True, {1: _layout("ProcessingNotice", *_STATE_HEAD, (_SDP, 8), _KC, _ADPC)}),
}

#: API prefixes of the sections kept opaque (Global-Privacy-Platform "Section Information").
_OTHER_NAMES = {1: "tcfeuv1", 2: "tcfeuv2", 3: "header", 4: "signalintegrity", 5: "tcfcav1",
                6: "uspv1"}
_USP = re.compile(r"1[YN-]{3}")


@dataclass(frozen=True, slots=True)
class GPPSection:
    """One section of a GPP string.

    Attributes
    ----------
    section_id : int
    name : str
        Client-side API prefix ("tcfeuv2", "uspv1", "usnat", "usca", ...); "" when unknown.
    text : str
        The section as it appears in the string.
    known : bool
        Whether it was decoded. False for ids and versions without a layout here: such a
        section is kept as text and restricts targeting whenever it applies.
    version : int or None
    fields : tuple of (str, value)
        The decoded fields in string order, named as in the specification. US sections: ints,
        tuples of ints for N-bitfields; section 6: Version, Notice, OptOutSale, LspaCovered as
        text. Empty for section 2 (see :attr:`GPPString.tcf`) and unknown sections.
    gpc : int or None
        The Gpc bit of the GPC sub-section; None when the section has none.
    problems : tuple of str
        Values the specification does not allow; any makes the section ``"bad_consent"``.
    """

    section_id: int
    name: str
    text: str
    known: bool
    version: int | None = None
    fields: tuple[tuple[str, FieldValue], ...] = ()
    gpc: int | None = None
    problems: tuple[str, ...] = ()

    def __getitem__(self, name: str) -> FieldValue:
        for key, value in self.fields:
            if key == name:
                return value
        raise KeyError(f"GPP section {self.section_id} ({self.name or 'unknown'}) has no "
                       f"field {name!r}")

    def get(self, name: str, default: object = None) -> object:
        try:
            return self[name]
        except KeyError:
            return default


@dataclass(frozen=True, slots=True)
class GPPString:
    """A decoded GPP string (see :func:`decode_gpp`).

    ``section_ids`` lists the header's ids in string order; ``sections`` the sections in the
    same order; ``tcf`` the decoded section 2 (TCF EU v2) when present, which
    :func:`gpp_restriction` leaves to the caller's TCF rules.
    """

    version: int
    section_ids: tuple[int, ...]
    sections: tuple[GPPSection, ...]
    tcf: TCString | None = None

    def section(self, section_id: int) -> GPPSection | None:
        """The section with this id, or None when the string has none."""
        for sec in self.sections:
            if sec.section_id == section_id:
                return sec
        return None


def _section_ids(r: _BitReader, n_sections: int) -> tuple[int, ...]:
    """The header's Fibonacci range; more ids than ``n_sections`` is refused before the ids
    are listed, so a hostile range cannot make the list long."""
    n = r.read(12, "Sections NumEntries")
    ids: list[int] = []
    last = 0
    for i in range(1, n + 1):
        if r.flag(f"Sections entry {i} IsRange"):
            start = last + r.fibonacci(f"Sections entry {i} start offset")
            last = start + r.fibonacci(f"Sections entry {i} length")
        else:
            start = last = last + r.fibonacci(f"Sections entry {i} offset")
        if len(ids) + last - start + 1 > n_sections:
            raise SignalError(f"GPP header lists more sections than the {n_sections} the "
                              f"string has")
        ids.extend(range(start, last + 1))
    return tuple(ids)


def _read_us_core(text: str, where: str, layout: tuple[tuple[str, int], ...]
                  ) -> tuple[tuple[str, FieldValue], ...]:
    r = _BitReader(text, where)
    fields: list[tuple[str, FieldValue]] = [("Version", r.read(6, "Version"))]
    for name, n in layout:
        if n:
            fields.append((name, tuple(r.read(2, f"{name}[{j + 1}]") for j in range(n))))
        else:
            fields.append((name, r.read(2, name)))
    r.finish()
    return tuple(fields)


def _us_problems(fields: tuple[tuple[str, FieldValue], ...]) -> tuple[str, ...]:
    out = []
    for name, value in fields[1:]:
        values = value if isinstance(value, tuple) else (value,)
        allowed = (1, 2) if name == "MspaCoveredTransaction" else (0, 1, 2)
        for j, v in enumerate(values):
            if v not in allowed:
                at = f"{name}[{j + 1}]" if isinstance(value, tuple) else name
                out.append(f"{at} = {v}, allowed {', '.join(map(str, allowed))}")
    return tuple(out)


def _us_section(sid: int, text: str) -> GPPSection:
    name, has_gpc, layouts = _US_SECTIONS[sid]
    where = f"GPP section {sid} ({name})"
    parts = _segments(text, where)
    for part in parts:
        if not _B64URL.fullmatch(part):
            raise SignalError(f"{where} is not base64url: {part!r}")
    version = _BitReader(parts[0], f"{where} core segment").read(6, "Version")
    if version not in layouts:
        return GPPSection(sid, name, text, False, version)
    try:
        fields = _read_us_core(parts[0], f"{where} core segment", layouts[version])
    except SignalError as first:
        if sid != 7 or version != 1:
            raise
        # iabgpp-java/-es wrote usnat's version-2 layout (16 sensitive-data fields, 3 child
        # consents) under Version 1 for a while; such a string has bits where the version-1
        # layout ends, so it never parses as version 1 and is read as what was written
        try:
            fields = _read_us_core(parts[0], f"{where} core segment", layouts[2])
        except SignalError:
            raise first from None
    gpc = None
    for i, part in enumerate(parts[1:], 2):
        sub = f"{where} sub-section {i - 1}"
        if not has_gpc:
            raise SignalError(f"{where} has a sub-section, but {name} defines none")
        r = _BitReader(part, sub)
        kind = r.read(2, "SubsectionType")
        if kind != 1:
            raise SignalError(f"{sub} has SubsectionType {kind}; known: 1 (GPC)")
        if gpc is not None:
            raise SignalError(f"{where} has two GPC sub-sections")
        gpc = r.read(1, "Gpc")
        r.finish()
    return GPPSection(sid, name, text, True, version, fields, gpc, _us_problems(fields))


def _usp_section(text: str) -> GPPSection:
    if not _USP.fullmatch(text):
        return GPPSection(6, "uspv1", text, True, None, (), None, (
            f"US Privacy string {text!r} is not '1' followed by three of Y, N, -",))
    fields = (("Version", 1), ("Notice", text[1]), ("OptOutSale", text[2]),
              ("LspaCovered", text[3]))
    return GPPSection(6, "uspv1", text, True, 1, fields)


def decode_gpp(s: str) -> GPPString:
    """Decode an IAB GPP string, refusing anything that is not exactly one.

    Parameters
    ----------
    s : str
        The GPP string (OpenRTB ``regs.gpp``). At most :data:`MAX_SIGNAL_LENGTH` characters.

    Returns
    -------
    GPPString
        The header's section ids and each section: TCF EU v2 (id 2) decoded by
        :func:`decode_tcf` into ``.tcf``; US Privacy (6); US National (7, versions 1 and 2)
        and the US states 8-22 field by field; any other id kept as text (``known=False``).

    Raises
    ------
    SignalError
        When the string is malformed: the header or a section of a known layout does not
        parse, or the header lists another number of sections than the string has. Field
        values out of their range do not raise: they are kept in the section's ``problems``
        and make :func:`gpp_restriction` answer ``"bad_consent"``.

    Notes
    -----
    Header: Type 6 bits (3), Version 6 bits (1), then the section ids as a Fibonacci range:
    NumEntries 12 bits, then per entry IsRange 1 bit and the Fibonacci-coded offset from the
    previous id (for a range, then the Fibonacci-coded length: end = start + length). Sections
    follow the header, separated by ``"~"``, in the header's order. Cost is linear in ``len(s)``.

    Examples
    --------
    >>> gpp = decode_gpp("DBACNYA~CPXxRfAPXxRfAAfKABENB-CgAAAAAAAAAAYgAAAAAAAA~1YNN")
    >>> gpp.section_ids, gpp.tcf.cmp_id, gpp.section(6)["OptOutSale"]
    ((2, 6), 31, 'N')
    """
    _check_text(s, "GPP string", _GPP_CHARS, "A-Z a-z 0-9 - _ . ~")
    parts = s.split("~")
    if not _B64URL.fullmatch(parts[0]):
        raise SignalError(f"GPP header is not base64url: {parts[0]!r}")
    r = _BitReader(parts[0], "GPP header")
    kind = r.read(6, "Type")
    if kind != 3:
        raise SignalError(f"GPP header has Type {kind}, expected 3")
    version = r.read(6, "Version")
    if version != 1:
        raise SignalError(f"GPP header has Version {version}, expected 1")
    ids = _section_ids(r, len(parts) - 1)
    r.finish()
    if len(ids) != len(parts) - 1:
        raise SignalError(f"GPP header lists {len(ids)} sections {list(ids)}, the string has "
                          f"{len(parts) - 1}")
    sections = []
    tcf = None
    for sid, text in zip(ids, parts[1:]):
        if not text:
            raise SignalError(f"GPP section {sid} is empty")
        if sid == 2:
            try:
                tcf = decode_tcf(text)
            except SignalError as exc:
                raise SignalError(f"GPP section 2 (tcfeuv2): {exc}") from None
            sections.append(GPPSection(2, "tcfeuv2", text, True, tcf.version))
        elif sid == 6:
            sections.append(_usp_section(text))
        elif sid in _US_SECTIONS:
            sections.append(_us_section(sid, text))
        else:
            sections.append(GPPSection(sid, _OTHER_NAMES.get(sid, ""), text, False))
    return GPPString(version, ids, tuple(sections), tcf)


# ---------------------------------------------------------------------------------------------
# policy: personalised advertising under the GPP sections

Restriction = Literal["opt_out", "no_consent", "bad_consent"]
_SEVERITY = {None: 0, "no_consent": 1, "opt_out": 2, "bad_consent": 3}

#: Prebid's normalization of the state strings onto usnat's SensitiveDataProcessing (1-based
#: state index -> usnat indices), from Prebid.js modules/gppControl_usstates.js.
_SDP_MOVES = {
    8: {1: (9,), 2: (10,), 3: (8,), 4: (1, 2), 5: (12,), 6: (6,), 7: (7,), 8: (3,), 9: (4,)},
    11: {1: (1,), 2: (2,), 3: (4,), 4: (5,), 5: (3,), 6: (6,), 7: (7,), 8: (8,)},
}
#: usnat categories whose "no consent" (1) restricts: Prebid's 1-5 and 11; 13-16 (general
#: health, crime victim, national origin, transgender status: added in usnat version 2, after
#: Prebid's table) are treated alike.
_NO_CONSENT_RESTRICTS = (1, 2, 3, 4, 5, 11, 13, 14, 15, 16)
#: usnat categories that must be absent (0) with ads at all: genetic, biometric, government
#: ids, account log-ins, mail contents (Prebid: "should never be present in ad calls").
_MUST_BE_ABSENT = (6, 7, 9, 10, 12)


def _as_usnat(sec: GPPSection) -> tuple[dict, list, list, list]:
    """The section's fields in usnat's terms: (scalars, SensitiveDataProcessing by usnat
    index 1-16 with None where the state has no counterpart, KnownChild consents [13-16,
    under 13, 16-17], state sensitive-data values with no usnat index)."""
    f = dict(sec.fields)
    scalars = {k: f.get(k) for k in (
        "SharingNotice", "SaleOptOutNotice", "SharingOptOutNotice",
        "TargetedAdvertisingOptOutNotice", "SensitiveDataProcessingOptOutNotice",
        "SensitiveDataLimitUseNotice", "SaleOptOut", "SharingOptOut",
        "TargetedAdvertisingOptOut", "PersonalDataConsents", "MspaServiceProviderMode")}
    sdp: list = [None] * 16
    unplaced: list = []
    sid = sec.section_id
    state_sdp = f[_SDP]
    kc_raw = f[_KC]
    kc_all = kc_raw if isinstance(kc_raw, tuple) else (kc_raw,)
    # Prebid: a state that does not tell 13-16 from under-13 never yields a child's consent
    kc = [0, 0, None] if not any(kc_all) else [1, 1, None]
    if sid == 7:
        sdp[:len(state_sdp)] = state_sdp
        kc = list(kc_all) + [None] * (3 - len(kc_all))
    elif sid in _SDP_MOVES:
        for j, v in enumerate(state_sdp, 1):
            for dest in _SDP_MOVES[sid][j]:
                sdp[dest - 1] = v
    elif sid in (9, 10, 12):
        sdp[:len(state_sdp)] = state_sdp
        if sid == 12 and any(kc_all):
            # Connecticut's ages align with usnat: 13-16 may consent, under 13 never counts
            kc = [2, 1, None] if kc_all[1] == 2 and kc_all[2] == 2 else [1, 1, None]
    else:
        # 13-22 have no Prebid normalization: the same-named fields map as named, the rest by
        # meaning; their sensitive categories are not placed on usnat's indices, so every one
        # restricts unless absent (see gpp_restriction)
        if scalars["SharingNotice"] is None:
            scalars["SharingNotice"] = f.get("ProcessingNotice")
        scalars["SensitiveDataProcessingOptOutNotice"] = f.get("SensitiveDataOptOutNotice")
        scalars["PersonalDataConsents"] = f.get(_ADPC)
        unplaced = list(state_sdp)
    return scalars, sdp, kc, unplaced


def _judge_us(sec: GPPSection) -> Restriction | None:
    n, sdp, kc, unplaced = _as_usnat(sec)
    sensitive_notices = (n["SensitiveDataProcessingOptOutNotice"],
                         n["SensitiveDataLimitUseNotice"])
    consents = any(v == 2 for v in sdp) or any(v == 2 for v in unplaced)
    # bad_consent: the CMP says two things that cannot both hold
    if ((n["SaleOptOut"] == 2 and n["SaleOptOutNotice"] == 0)
            or (n["SharingOptOut"] == 2 and 0 in (n["SharingNotice"], n["SharingOptOutNotice"]))
            or (n["TargetedAdvertisingOptOut"] == 2
                and n["TargetedAdvertisingOptOutNotice"] == 0)
            or n["PersonalDataConsents"] == 2
            or (consents and 0 in sensitive_notices)):
        return "bad_consent"
    if sec.gpc == 1 or 1 in (n["SaleOptOut"], n["SharingOptOut"],
                             n["TargetedAdvertisingOptOut"]):
        return "opt_out"
    if (n["MspaServiceProviderMode"] == 1
            or 2 in (n["SaleOptOutNotice"], n["SharingNotice"], n["SharingOptOutNotice"],
                     n["TargetedAdvertisingOptOutNotice"])
            or 2 in sensitive_notices
            or (consents and sensitive_notices != (1, 1))
            or any(sdp[i - 1] == 1 for i in _NO_CONSENT_RESTRICTS)
            or any(sdp[i - 1] not in (None, 0) for i in _MUST_BE_ABSENT)
            or any(v != 0 for v in unplaced)
            or kc[0] == 1 or kc[1] != 0 or kc[2] == 1):
        return "no_consent"
    return None


def _judge(sec: GPPSection) -> Restriction | None:
    if sec.problems:
        return "bad_consent"
    if sec.section_id == 6:
        return "opt_out" if sec["OptOutSale"] == "Y" else None
    return _judge_us(sec)


def gpp_restriction(gpp: GPPString, applicable: Sequence[int] | None) -> Restriction | None:
    """What the US sections of a GPP string require of personalised (targeted) advertising.

    Parameters
    ----------
    gpp : GPPString
        From :func:`decode_gpp`.
    applicable : sequence of int or None
        The applicable section ids (OpenRTB ``regs.gpp_sid``); only those are judged. None
        judges every section of the string.

    Returns
    -------
    None, "opt_out", "no_consent" or "bad_consent"
        ``None``: no judged section restricts targeting. Otherwise the most severe finding
        over the judged sections, ``"bad_consent"`` > ``"opt_out"`` > ``"no_consent"``; each
        of them means: serve no personalised ad.

    Notes
    -----
    Section 2 (TCF EU) is not judged here: the caller applies its TCF rules to ``gpp.tcf``.
    Every other judged section answers as follows; rules are read on the usnat fields (the
    state sections are first mapped onto them, below); 1-based indices.

    ``"bad_consent"``
        - ``applicable`` is not a sequence of ints; an applicable section is missing from the
          string (section 2 included); an applicable section is one we cannot decode
          (``known=False``: an unknown id or version).
        - a field holds a value the specification does not allow (``problems``).
        - US Privacy (6): text other than ``1`` and three of ``Y``/``N``/``-``.
        - (Prebid: "the CMP claims that notice was not needed, but at the same time claims
          consent was given") SaleOptOut=2 with SaleOptOutNotice=0; SharingOptOut=2 with
          SharingNotice=0 or SharingOptOutNotice=0; TargetedAdvertisingOptOut=2 with
          TargetedAdvertisingOptOutNotice=0; a SensitiveDataProcessing value 2 with
          SensitiveDataProcessingOptOutNotice=0 or SensitiveDataLimitUseNotice=0.
        - (Prebid: "a logical impossibility and invalid CMP response") PersonalDataConsents=2.

    ``"opt_out"``
        - SaleOptOut=1, SharingOptOut=1 or TargetedAdvertisingOptOut=1 (1 = opted out).
        - the GPC sub-section has Gpc=1.
        - US Privacy (6): third character ``Y`` (opted out of sale).

    ``"no_consent"``
        - MspaServiceProviderMode=1 (the publisher declared it does no targeted advertising).
        - a notice not provided: SaleOptOutNotice, SharingNotice, SharingOptOutNotice,
          TargetedAdvertisingOptOutNotice, SensitiveDataProcessingOptOutNotice or
          SensitiveDataLimitUseNotice = 2.
        - (Prebid.js activityControls) a SensitiveDataProcessing value 2 (consent) unless both
          SensitiveDataProcessingOptOutNotice and SensitiveDataLimitUseNotice are 1: consent
          to a sensitive category needs both notices (a state without them never has it).
        - SensitiveDataProcessing[1-5, 11] = 1 (no consent); 13-16 (usnat v2) likewise.
        - SensitiveDataProcessing[6, 7, 9, 10, 12] not 0 (genetic, biometric, government ids,
          account log-ins, mail contents: never with ads, consented or not).
        - KnownChildSensitiveDataConsents[1] (13-16) = 1; [2] (under 13) not 0 (no consent
          from under 13 counts); [3] (usnat v2, personal data of 16-17) = 1.

    State sections, mapped onto usnat (Prebid's normalization): fields a state lacks are
    absent and never match. CA (8) sensitive data 1->9, 2->10, 3->8, 4->1 and 2, 5->12, 6->6, 7->7,
    8->3, 9->4; UT (11) 3->4, 4->5, 5->3, others in place; VA, CO, CT (9, 10, 12) in place. Known
    children: all 0 -> not a child; otherwise both usnat child consents 1 (no consent), except
    CT when its 13-16 consents ([2] and [3]) are both 2 -> 13-16 consent, under-13 no consent.
    Sections 13-22 (no Prebid normalization; ours): ProcessingNotice acts as SharingNotice,
    SensitiveDataOptOutNotice (IA) as SensitiveDataProcessingOptOutNotice,
    AdditionalDataProcessingConsent as PersonalDataConsents; any sensitive-data value other
    than 0 gives "no_consent" (1 is no consent; 2 lacks the sensitive notices), and known
    children map as for VA.

    MspaCoveredTransaction and MspaOptOutOptionMode never restrict by themselves (Prebid
    treats covered and uncovered transactions alike).

    Examples
    --------
    >>> gpp_restriction(decode_gpp("DBABLA~BVVVVVVVVWA"), [7])
    'opt_out'
    >>> print(gpp_restriction(decode_gpp("DBABTA~1YNN"), None))
    None
    """
    if not isinstance(gpp, GPPString):
        raise TypeError(f"gpp must be a GPPString from decode_gpp, got {type(gpp).__name__}")
    if applicable is None:
        ids: Sequence[object] = gpp.section_ids
    elif isinstance(applicable, (str, bytes)) or not isinstance(applicable, Sequence):
        return "bad_consent"  # gpp_sid in a shape we do not understand
    else:
        ids = applicable
    worst: Restriction | None = None
    for sid in ids:
        if not isinstance(sid, int) or isinstance(sid, bool):
            return "bad_consent"
        sec = gpp.section(sid)
        if sec is None or not sec.known:
            return "bad_consent"
        if sid == 2:
            continue
        found = _judge(sec)
        if _SEVERITY[found] > _SEVERITY[worst]:
            worst = found
            if worst == "bad_consent":
                break
    return worst
