"""Strict TCF v2 and GPP decoders (bta.privacy.signals).

Layers: tables of bad inputs with the exact error each gives; published example strings with
the decoded values their sources document; a naive reference encoder (fields -> bit string ->
base64url, written here from the specifications) for round-trip and fail-closed properties; a
table of US fields with the restriction each gives.
"""

from __future__ import annotations

import ast
import inspect

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bta.privacy.signals as signals
from bta.errors import BtaError
from bta.privacy.signals import (
    MAX_SIGNAL_LENGTH, GPPString, SignalError, decode_gpp, decode_tcf, gpp_restriction,
)

B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


# ---- naive reference encoder -------------------------------------------------------------------
def bits(value: int, width: int) -> str:
    assert 0 <= value < 1 << width, (value, width)
    return format(value, f"0{width}b") if width else ""


def b64(bitstr: str, pad: str = "6") -> str:
    """base64url of a bit string. pad "6": fewest characters (what the property tests use, so
    every truncation loses a field bit); "24": iabtcf-es / iabgpp-es traditional (a multiple of
    24 bits); "8+6": iabgpp-es compressed (a byte, then a character)."""
    if pad == "24":
        bitstr += "0" * (-len(bitstr) % 24)
    elif pad == "8+6":
        bitstr += "0" * (-len(bitstr) % 8)
    bitstr += "0" * (-len(bitstr) % 6)
    return "".join(B64[int(bitstr[i:i + 6], 2)] for i in range(0, len(bitstr), 6))


def runs(ids) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for v in sorted(ids):
        if out and v == out[-1][1] + 1:
            out[-1] = (out[-1][0], v)
        else:
            out.append((v, v))
    return out


def enc_ranges(entries) -> str:
    s = bits(len(entries), 12)
    for a, b in entries:
        s += ("1" + bits(a, 16) + bits(b, 16)) if a != b else ("0" + bits(a, 16))
    return s


def enc_vendors(max_id: int, ids, ranges=None) -> str:
    """MaxVendorId, IsRangeEncoding, then a bitfield (ranges None) or the range entries."""
    if ranges is None:
        return bits(max_id, 16) + "0" + "".join("1" if v in ids else "0"
                                                 for v in range(1, max_id + 1))
    return bits(max_id, 16) + "1" + enc_ranges(ranges)


def letters(code: str) -> str:
    return bits(ord(code[0]) - 65, 6) + bits(ord(code[1]) - 65, 6)


def id_field(ids, n: int) -> str:
    return "".join("1" if i in ids else "0" for i in range(1, n + 1))


TCF_BASE = dict(
    version=2, created=15800580600, last_updated=16120692600, cmp_id=675, cmp_version=2,
    consent_screen=1, consent_language="EN", vendor_list_version=15, tcf_policy_version=4,
    is_service_specific=False, use_non_standard_texts=False,
    special_feature_opt_ins=frozenset({1}), purposes_consent=frozenset({1, 3, 4}),
    purposes_li=frozenset({2, 7}), purpose_one_treatment=False, publisher_cc="DE",
    vendors=frozenset({1, 2, 755}), vendors_ranges=None, lis=frozenset({2}), lis_ranges=None,
    restrictions=(),
)


def core_bits(f: dict) -> str:
    s = (bits(f["version"], 6) + bits(f["created"], 36) + bits(f["last_updated"], 36)
         + bits(f["cmp_id"], 12) + bits(f["cmp_version"], 12) + bits(f["consent_screen"], 6)
         + letters(f["consent_language"]) + bits(f["vendor_list_version"], 12)
         + bits(f["tcf_policy_version"], 6) + str(int(f["is_service_specific"]))
         + str(int(f["use_non_standard_texts"]))
         + id_field(f["special_feature_opt_ins"], 12) + id_field(f["purposes_consent"], 24)
         + id_field(f["purposes_li"], 24) + str(int(f["purpose_one_treatment"]))
         + letters(f["publisher_cc"]))
    vmax = max(f["vendors"], default=0)
    s += enc_vendors(vmax, f["vendors"], f["vendors_ranges"])
    lmax = max(f["lis"], default=0)
    s += enc_vendors(lmax, f["lis"], f["lis_ranges"])
    s += bits(len(f["restrictions"]), 12)
    for purpose, kind, entries in f["restrictions"]:
        s += bits(purpose, 6) + bits(kind, 2) + enc_ranges(entries)
    return s


def tcf(pad: str = "6", **changes) -> str:
    return b64(core_bits({**TCF_BASE, **changes}), pad)


def check_tcf_fields(tc, f: dict) -> None:
    """The decoded TCString says what the fields dict says."""
    for name in ("version", "created", "last_updated", "cmp_id", "cmp_version", "consent_screen",
                 "consent_language", "vendor_list_version", "tcf_policy_version",
                 "is_service_specific", "use_non_standard_texts", "special_feature_opt_ins",
                 "purposes_consent", "purposes_li", "purpose_one_treatment", "publisher_cc"):
        assert getattr(tc, name) == f[name], name
    assert list(tc.vendor_consents) == sorted(f["vendors"])
    assert list(tc.vendor_legitimate_interests) == sorted(f["lis"])
    assert tc.max_vendor_id == max(f["vendors"], default=0)
    assert tc.vendor_consents.is_range_encoding == (f["vendors_ranges"] is not None)
    for v in range(0, tc.max_vendor_id + 3):
        assert tc.vendor_consent(v) == (v in f["vendors"])
        assert tc.vendor_li(v) == (v in f["lis"])
    got = [(r.purpose_id, r.restriction_type, list(r.vendors)) for r in tc.publisher_restrictions]
    want = [(p, k, sorted({v for a, b in e for v in range(a, b + 1)}))
            for p, k, e in f["restrictions"]]
    assert got == want


def fib(n: int) -> str:
    """Fibonacci code of n >= 1: Zeckendorf bits, smallest Fibonacci number first, then "1"."""
    fibs = [1, 2]
    while fibs[-1] <= n:
        fibs.append(fibs[-1] + fibs[-2])
    out = ["0"] * len(fibs)
    for i in range(len(fibs) - 1, -1, -1):
        if fibs[i] <= n:
            out[i] = "1"
            n -= fibs[i]
    code = "".join(out).rstrip("0")
    return code + "1"


def header(ids, groups=None, pad: str = "6") -> str:
    """GPP header for the sorted ids; ``groups`` splits them into entries (default: runs)."""
    groups = groups if groups is not None else runs(ids)
    s = bits(3, 6) + bits(1, 6) + bits(len(groups), 12)
    last = 0
    for a, b in groups:
        if a == b:
            s += "0" + fib(a - last)
        else:
            s += "1" + fib(a - last) + fib(b - a)
        last = b
    return b64(s, pad)


# Layouts transcribed from the GPP section specifications (Global-Privacy-Platform/Sections,
# field by field as iabgpp-java's segment classes list them), independently of the module.
# (name, n): n values of 2 bits; n = 0: one 2-bit value.
MSPA = [("MspaCoveredTransaction", 0), ("MspaOptOutOptionMode", 0),
        ("MspaServiceProviderMode", 0)]
NAT_HEAD = [(n, 0) for n in (
    "SharingNotice", "SaleOptOutNotice", "SharingOptOutNotice", "TargetedAdvertisingOptOutNotice",
    "SensitiveDataProcessingOptOutNotice", "SensitiveDataLimitUseNotice", "SaleOptOut",
    "SharingOptOut", "TargetedAdvertisingOptOut")]
ST = [(n, 0) for n in ("SaleOptOutNotice", "TargetedAdvertisingOptOutNotice", "SaleOptOut",
                       "TargetedAdvertisingOptOut")]
SDP, KC = "SensitiveDataProcessing", "KnownChildSensitiveDataConsents"
ADPC = ("AdditionalDataProcessingConsent", 0)
PN, SN = ("ProcessingNotice", 0), ("SharingNotice", 0)
LAYOUTS = {  # (section id, version) -> (fields, has GPC)
    (7, 1): (NAT_HEAD + [(SDP, 12), (KC, 2), ("PersonalDataConsents", 0)] + MSPA, True),
    (7, 2): (NAT_HEAD + [(SDP, 16), (KC, 3), ("PersonalDataConsents", 0)] + MSPA, True),
    (8, 1): ([("SaleOptOutNotice", 0), ("SharingOptOutNotice", 0),
              ("SensitiveDataLimitUseNotice", 0), ("SaleOptOut", 0), ("SharingOptOut", 0),
              (SDP, 9), (KC, 2), ("PersonalDataConsents", 0)] + MSPA, True),
    (9, 1): ([SN] + ST + [(SDP, 8), (KC, 0)] + MSPA, False),
    (10, 1): ([SN] + ST + [(SDP, 7), (KC, 0)] + MSPA, True),
    (11, 1): ([SN, ("SaleOptOutNotice", 0), ("TargetedAdvertisingOptOutNotice", 0),
               ("SensitiveDataProcessingOptOutNotice", 0), ("SaleOptOut", 0),
               ("TargetedAdvertisingOptOut", 0), (SDP, 8), (KC, 0)] + MSPA, False),
    (12, 1): ([SN] + ST + [(SDP, 8), (KC, 3)] + MSPA, True),
    (13, 1): ([PN] + ST + [(SDP, 8), (KC, 3), ADPC] + MSPA, False),
    (14, 1): ([SN] + ST + [(SDP, 8), (KC, 3), ADPC] + MSPA, True),
    (15, 1): ([PN] + ST + [(SDP, 11), (KC, 3), ADPC] + MSPA, True),
    (16, 1): ([PN] + ST + [(SDP, 8), (KC, 0), ADPC] + MSPA, True),
    (17, 1): ([PN] + ST + [(SDP, 9), (KC, 5), ADPC] + MSPA, True),
    (18, 1): ([PN, ("SaleOptOutNotice", 0), ("TargetedAdvertisingOptOutNotice", 0),
               ("SensitiveDataOptOutNotice", 0), ("SaleOptOut", 0),
               ("TargetedAdvertisingOptOut", 0), (SDP, 8), (KC, 0)] + MSPA, True),
    (19, 1): ([PN] + ST + [(SDP, 8), (KC, 0), ADPC] + MSPA, True),
    (20, 1): ([PN] + ST + [(SDP, 8), (KC, 3), ADPC] + MSPA, True),
    (21, 1): ([PN] + ST + [(SDP, 10), (KC, 5), ADPC] + MSPA, True),
    (22, 1): ([PN] + ST + [(SDP, 8), (KC, 0), ADPC] + MSPA, True),
}


def neutral(sid: int, version: int = 1) -> dict:
    """Fields under which no rule restricts: notices given, nobody opted out, no sensitive data,
    no known child, an MSPA opt-out-mode transaction."""
    out = {}
    for name, n in LAYOUTS[(sid, version)][0]:
        value = {"SaleOptOut": 2, "SharingOptOut": 2, "TargetedAdvertisingOptOut": 2,
                 "MspaCoveredTransaction": 1, "MspaOptOutOptionMode": 1,
                 "MspaServiceProviderMode": 2}.get(name, 1 if name.endswith("Notice") else 0)
        out[name] = (0,) * n if n else value
    return out


def us(sid: int, values: dict, version: int = 1, gpc: int | None = None,
       pad: str = "6") -> str:
    s = bits(version, 6)
    for name, n in LAYOUTS[(sid, version)][0]:
        v = values[name]
        s += "".join(bits(x, 2) for x in v) if n else bits(v, 2)
    text = b64(s, pad)
    return text if gpc is None else text + "." + b64("01" + str(gpc), pad)


def gpp(sections: dict[int, str], groups=None) -> str:
    ids = sorted(sections)
    return "~".join([header(ids, groups)] + [sections[i] for i in ids])


def restriction_of(sid: int, version: int = 1, gpc: int | None = None, **changes) -> str | None:
    text = us(sid, {**neutral(sid, version), **changes}, version, gpc)
    return gpp_restriction(decode_gpp(gpp({sid: text})), [sid])


# ---- the encoder itself agrees with published strings ------------------------------------------
def test_reference_encoder_reproduces_published_headers_and_sections():
    # GPP spec (InteractiveAdvertisingBureau/Global-Privacy-Platform, Consent String
    # Specification, header examples 1-3) and iabgpp-java HeaderV1Test
    assert header([2]) == "DBABM" and header([2], pad="8+6") == "DBABMA"
    assert header([2, 6]) == "DBACNY" and header([2, 6], pad="8+6") == "DBACNYA"
    assert header([5, 6]) == "DBABjw"
    assert header([7], pad="8+6") == "DBABLA" and header([6], pad="8+6") == "DBABTA"
    # iabgpp-java UsNatTest.testEncode3: the usnat v1 fields below encode as "BVVVkkkklWA.YA"
    f = dict(zip([n for n, _ in NAT_HEAD], [1] * 6 + [1, 1, 1]))
    f.update({SDP: (2, 1, 0, 2, 1, 0, 2, 1, 0, 2, 1, 0), KC: (2, 1), "PersonalDataConsents": 1,
              "MspaCoveredTransaction": 1, "MspaOptOutOptionMode": 1,
              "MspaServiceProviderMode": 2})
    assert us(7, f, gpc=1, pad="8+6") == "BVVVkkkklWA.YA"


# ---- bad inputs: exact errors ------------------------------------------------------------------
GOOD_TC = "COtybn4PA_zT4KjACBENAPCIAEBAAECAAIAAAAAAAAAA"  # iabtcf-java TCStringV2Test

TCF_BAD = [
    (123, "TC string must be a str, got int"),
    (None, "TC string must be a str, got NoneType"),
    (b"COtybn4P", "TC string must be a str, got bytes"),
    ("", "TC string is empty"),
    ("A" * (MAX_SIGNAL_LENGTH + 1),
     f"TC string is {MAX_SIGNAL_LENGTH + 1} characters long, more than the "
     f"{MAX_SIGNAL_LENGTH} allowed"),
    (GOOD_TC + "!", "TC string has character '!' at position 44; allowed: A-Z a-z 0-9 - _, "
                    "'.' between segments, '=' ending a segment"),
    ("COtybn4P+A", "TC string has character '+' at position 8; allowed: A-Z a-z 0-9 - _, "
                   "'.' between segments, '=' ending a segment"),
    (" " + GOOD_TC, "TC string has character ' ' at position 0; allowed: A-Z a-z 0-9 - _, "
                    "'.' between segments, '=' ending a segment"),
    (GOOD_TC + ".", "TC string has an empty segment (number 2)"),
    ("." + GOOD_TC, "TC string has an empty segment (number 1)"),
    ("BOtybn4PA_zT4KjACBENAPCIAEBAAECAAIAAAAAAAAAA",
     "TC string core segment has Version 1, expected 2"),
    ("DBABMA~CPXxRfAPXxRfAAfKABENB-CgAAAAAAAAAAYgAAAAAAAA",  # a GPP string is no TC string
     "TC string has character '~' at position 6; allowed: A-Z a-z 0-9 - _, '.' between "
     "segments, '=' ending a segment"),
    (GOOD_TC[:40], "TC string core segment is truncated: vendor legitimate interest section "
                   "MaxVendorId needs 16 bits at bit 230, 10 left"),
    (GOOD_TC[:2], "TC string core segment is truncated: Created needs 36 bits at bit 6, 6 left"),
    (GOOD_TC + "AAAA", "TC string core segment has 29 bits after its last field, more than the 5 "
                       "padding bits that complete its last 24-bit base64 group (trailing junk)"),
    (GOOD_TC[:-1] + "B", "TC string core segment has non-zero padding bits after its last field"),
    (GOOD_TC + "==", "TC string core segment ends in 2 '=', which is not the base64 padding of "
                     "44 characters"),
    ("COtybn4PA_zT=4KjACBENAPCIAEBAAECAAIAAAAAAAAAA",
     "TC string core segment has '=' before its end; '=' may only pad a segment"),
    (GOOD_TC + ".AAAA", "TC string segment 2 has SegmentType 0; known: 1 disclosed vendors, "
                        "2 allowed vendors, 3 publisher TC"),
    (GOOD_TC + ".8AAA", "TC string segment 2 has SegmentType 7; known: 1 disclosed vendors, "
                        "2 allowed vendors, 3 publisher TC"),
    (GOOD_TC + ".IAAA.IAAA", "TC string has an optional segment type twice: [1, 1]"),
    (GOOD_TC + ".IA", "TC string segment 2 is truncated: vendor section MaxVendorId needs 16 "
                      "bits at bit 3, 9 left"),
    (tcf(consent_language="E["), "TC string core segment: ConsentLanguage must be two letters "
                                 "A-Z (codes 0-25), got codes 4 and 26"),
    (tcf(publisher_cc="Z_"), "TC string core segment: PublisherCC must be two letters A-Z "
                             "(codes 0-25), got codes 25 and 30"),
    (tcf(vendors=frozenset({5}), vendors_ranges=[(5, 3)]),
     "TC string core segment: vendor consent section entry 1 is the range 5-3, which ends "
     "before it starts"),
    (tcf(vendors=frozenset({5}), vendors_ranges=[(5, 5), (4, 9)]),
     "TC string core segment: vendor consent section entry 2 reaches vendor 9, above "
     "MaxVendorId 5"),
    (tcf(vendors=frozenset({5}), vendors_ranges=[(0, 5)]),
     "TC string core segment: vendor consent section entry 1 names vendor id 0 (ids start at 1)"),
    (tcf(lis=frozenset({3}), lis_ranges=[(3, 3), (7, 7)]),
     "TC string core segment: vendor legitimate interest section entry 2 reaches vendor 7, "
     "above MaxVendorId 3"),
    (tcf(restrictions=[(0, 1, [(1, 2)])]),
     "TC string core segment: publisher restriction 1 has PurposeId 0, expected 1-24"),
    (tcf(restrictions=[(2, 0, []), (25, 1, [(1, 2)])]),
     "TC string core segment: publisher restriction 2 has PurposeId 25, expected 1-24"),
    (tcf(restrictions=[(3, 3, [(1, 2)])]),
     "TC string core segment: publisher restriction 1 has RestrictionType 3, which is "
     "undefined (0, 1 or 2 expected)"),
    (tcf(restrictions=[(3, 1, [(9, 2)])]),
     "TC string core segment: publisher restriction 1 entry 1 is the range 9-2, which ends "
     "before it starts"),
    (tcf(restrictions=[(3, 1, [(0, 0)])]),
     "TC string core segment: publisher restriction 1 entry 1 names vendor id 0 (ids start "
     "at 1)"),
]


@pytest.mark.parametrize("s, message", TCF_BAD)
def test_decode_tcf_refuses_with_exact_message(s, message):
    with pytest.raises(SignalError) as info:
        decode_tcf(s)
    assert str(info.value) == message


def test_signal_error_is_a_bta_value_error():
    assert issubclass(SignalError, BtaError) and issubclass(SignalError, ValueError)


US_NEUTRAL = us(7, neutral(7))

GPP_BAD = [
    (7, "GPP string must be a str, got int"),
    ("", "GPP string is empty"),
    ("D" * (MAX_SIGNAL_LENGTH + 1),
     f"GPP string is {MAX_SIGNAL_LENGTH + 1} characters long, more than the "
     f"{MAX_SIGNAL_LENGTH} allowed"),
    ("DBABTA~1YNN=", "GPP string has character '=' at position 11; allowed: A-Z a-z 0-9 - _ . ~"),
    ("DBABTA~1Y NN", "GPP string has character ' ' at position 9; allowed: A-Z a-z 0-9 - _ . ~"),
    ("DBABTA.A~1YNN", "GPP header is not base64url: 'DBABTA.A'"),
    ("CBABTA~1YNN", "GPP header has Type 2, expected 3"),
    ("DCABTA~1YNN", "GPP header has Version 2, expected 1"),
    ("DB", "GPP header is truncated: Sections NumEntries needs 12 bits at bit 12, 0 left"),
    ("DBABTA", "GPP header lists more sections than the 0 the string has"),
    ("DBABTA~1YNN~1YNN", "GPP header lists 1 sections [6], the string has 2"),
    ("DBACNYA~~1YNN", "GPP section 2 is empty"),
    ("DBABzw~1YNN", "GPP header lists more sections than the 1 the string has"),
    ("DBABTAAAAA~1YNN", "GPP header has 30 bits after its last field, more than the 18 padding "
                        "bits that complete its last 24-bit base64 group (trailing junk)"),
    ("DBABTB~1YNN", "GPP header has non-zero padding bits after its last field"),
    ("DBABAAAA~1YNN", "GPP header: Fibonacci-coded Sections entry 1 offset is longer than "
                      "16 bits"),
    ("DBABLA~BVVVVVVVV", "GPP section 7 (usnat) core segment is truncated: "
                         "MspaCoveredTransaction needs 2 bits at bit 54, 0 left"),
    ("DBABLA~" + US_NEUTRAL + ".", "GPP section 7 (usnat) has an empty segment (number 2)"),
    ("DBABLA~" + US_NEUTRAL + ".gA", "GPP section 7 (usnat) sub-section 1 has SubsectionType 2;"
                                    " known: 1 (GPC)"),
    ("DBABLA~" + US_NEUTRAL + ".Q.Y", "GPP section 7 (usnat) has two GPC sub-sections"),
    ("DBABLA~" + US_NEUTRAL + ".QAAAAA", "GPP section 7 (usnat) sub-section 1 has 33 bits after "
                                         "its last field, more than the 21 padding bits that "
                                         "complete its last 24-bit base64 group (trailing "
                                         "junk)"),
    ("DBABRg~" + us(9, neutral(9)) + ".Q", "GPP section 9 (usva) has a sub-section, but usva "
                                           "defines none"),
    ("DBABMA~CPXxRfAPXxRfAAfKABENB-CgAAAAAAAAAAYgAAAAAAAAA",
     "GPP section 2 (tcfeuv2): TC string core segment has 11 bits after its last field, more "
     "than the 5 padding bits that complete its last 24-bit base64 group (trailing junk)"),
]


@pytest.mark.parametrize("s, message", GPP_BAD)
def test_decode_gpp_refuses_with_exact_message(s, message):
    with pytest.raises(SignalError) as info:
        decode_gpp(s)
    assert str(info.value) == message


def test_module_is_pure():
    """No pandas, numba or NumPy: only the standard library and bta.errors."""
    tree = ast.parse(inspect.getsource(signals))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= {"__future__", "binascii", "re", "bisect", "collections.abc",
                        "dataclasses", "typing", "bta.errors"}, imported


# ---- published TC strings ----------------------------------------------------------------------
def test_iabtcf_java_core_fields():
    # InteractiveAdvertisingBureau/iabtcf-java, TCStringV2Test
    # .testCanConstructTCModelFromBase64String
    tc = decode_tcf("COtybn4PA_zT4KjACBENAPCIAEBAAECAAIAAAAAAAAAA")
    assert tc.version == 2
    assert tc.created == 15800580600  # 2020-01-26T17:01:00Z in deciseconds
    assert tc.last_updated == 16122852600  # 2021-02-02T17:01:00Z
    assert (tc.cmp_id, tc.cmp_version, tc.consent_screen) == (675, 2, 1)
    assert (tc.vendor_list_version, tc.tcf_policy_version) == (15, 2)
    assert (tc.consent_language, tc.publisher_cc) == ("EN", "AA")
    assert tc.is_service_specific is False and tc.use_non_standard_texts is False
    assert tc.purpose_one_treatment is True
    assert tc.special_feature_opt_ins == {1}
    assert tc.purposes_consent == {2, 10} and tc.purposes_li == {2, 9}
    assert tc.max_vendor_id == 0 and not tc.vendor_consent(1)


def test_iabtcf_java_vendor_bitfields_and_optional_segments():
    # iabtcf-java TCStringV2Test: testConstructConsentsFromBitFields,
    # testCanParseDisclosedAndAllowedVendors, testCanParseAllParts
    core = "COrEAV4OrXx94ACABBENAHCIAD-AAAAAAACAAxAAAAgAIAwgAgAAAAEAgQAAAAAEAYQAQAAAACAAAABAAA"
    tc = decode_tcf(core)
    assert tc.purposes_consent == {3, 4, 5, 6, 7, 8, 9}
    assert list(tc.vendor_consents) == [23, 37, 47, 48, 53, 65, 98]
    assert list(tc.vendor_legitimate_interests) == [37, 47, 48, 53, 65, 98, 129]
    assert not tc.vendor_consents.is_range_encoding
    both = decode_tcf(core + ".IBAgAAAgAIAwgAgAAAAEAAAACA.QAagAQAgAIAwgA")
    assert both.segment_types == (1, 2) and both.vendor_consents == tc.vendor_consents
    # the publisher TC segment ends in base64 "=" padding, which is accepted at a segment end
    every = decode_tcf(core + ".IBAgAAAgAIAwgAgAAAAEAAAACA.QAagAQAgAIAwgA.cAAAAAAAITg=")
    assert every.segment_types == (1, 2, 3)


def test_iabtcf_java_range_encodings():
    # iabtcf-java TCStringV2Test.testCanParseRangeEncodedVendorLegitimateInterests, testRange
    tc = decode_tcf("COv__-wOv__-wC2AAAENAPCgAAAAAAAAAAAAA_wAQA_gEBABAEAAAA")
    assert list(tc.vendor_legitimate_interests) == [128]
    assert tc.vendor_legitimate_interests.is_range_encoding
    disclosed = (".IFoEUQQgAIQwgIwQABAEAAAAOIAACAIAAAAQAIAgEAACEAAAAAgAQBAAAAAAAGBAAgAAAAAAAF"
                 "AAECAAAgAAQARAEQAAAAAJAAIAAgAAAYQEAAAQmAgBC3ZAYzUw")
    two = decode_tcf("COwBOpCOwBOpCLqAAAENAPCAAAAAAAAAAAAAFfwAYFfAV-BVkAGBVYFWAAA" + disclosed)
    assert list(two.vendor_consents) == [702, 703] and two.segment_types == (1,)
    one = decode_tcf("COwBOpCOwBOpCLqAAAENAPCAAAAAAAAAAAAAFfwAQFfgUbABAUaAAA" + disclosed)
    assert list(one.vendor_consents) == [703]
    # iabtcf-java TCStringV2Test.testPurposesConsent
    assert {1, 2} <= decode_tcf("COwxsONOwxsONKpAAAENAdCAAMAAAAAAAAAAAAAAAAAA").purposes_consent


def test_go_gdpr_metadata():
    # prebid/go-gdpr vendorconsent/tcf2/metadata_test.go
    tc = decode_tcf("COvcSpYOvcSpYC9AAAENAPCAAAAAAAAAAAAACvwDQABAAIAAYABIAC4AJQAagA9ACEAPgAjIBJ"
                    "oCvAK-AAAAAA")
    assert tc.created // 10 == tc.last_updated // 10 == 1582833109  # 2020-02-27T19:51:49Z
    assert decode_tcf("COyiBqdOyiBqdObAAAENAfCIAP8AAH-AAAAAB4AXQQgEAAAgoAAAAABAIYQUAAAAAAAAAAAA"
                      "AAAIQIQCxIvkgQMAAAABgAIAAAAAAAAAAABAZAkAAA").cmp_id == 923
    assert decode_tcf("COyiCPlOyiCPlKxMIAENAfCAAAAAAAAAAAAAAAAAAAAA").cmp_version == 776
    assert decode_tcf("COyiFYuOyiFYuDKAA4ENAfCAAAAAAAAAAAAAAAAAAAAA").consent_screen == 56
    assert decode_tcf("COyiHgFOyiHgFN4ABABGAPCAAAAAAAAAAAAAAFAAAAoAAAA").consent_language == "BG"
    assert decode_tcf("COyiHgFOyiHgFN4ABASVAPCAAAAAAAAAAAAAAFAAAAoAAAA").consent_language == "SV"
    tc = decode_tcf("COx3XOeOx3XOeLkAAAENAfCIAAAAAHgAAIAAAAAAAAAA")
    assert tc.purpose_one_treatment and tc.special_feature_opt_ins == {1}
    assert tc.purposes_li == {2, 3, 4, 5}


def test_go_gdpr_publisher_restrictions():
    # prebid/go-gdpr vendorconsent/tcf2/pubrestrict_test.go: CheckPubRestriction(purpose,
    # type, vendor)
    tc = decode_tcf("COwAdDhOwAdDhN4ABAENAPCgAAQAAv___wAAAFP_AAp_4AI6ACACAA")
    assert (tc.version, tc.cmp_id, tc.cmp_version, tc.consent_screen) == (2, 888, 1, 0)
    assert (tc.consent_language, tc.vendor_list_version, tc.max_vendor_id) == ("EN", 15, 10)
    rules = {(r.purpose_id, r.restriction_type): r.vendors for r in tc.publisher_restrictions}
    assert 32 in rules[(7, 1)] and 7 not in rules[(7, 1)] and (5, 1) not in rules
    tc = decode_tcf("COxPe2TOxPe2TALABAENAPCgAAAAAAAAAAAAAFAAAAoAAA4IACACAIABgACAFA4ADACAAIygAG"
                    "ADwAQBIAIAIB0AEAEBSACACAA")
    assert not tc.purpose_one_treatment and 3 not in tc.special_feature_opt_ins
    rules = {(r.purpose_id, r.restriction_type): r.vendors for r in tc.publisher_restrictions}
    assert 32 in rules[(1, 0)] and (1, 1) not in rules
    assert all(v in rules[(2, 0)] for v in (32, 5, 11))
    assert 44 not in rules[(2, 0)] and 500 not in rules[(2, 0)]
    assert 32 in rules[(2, 1)] and 42 not in rules[(2, 1)]


def test_iabgpp_es_vendor_consents_with_24_bit_padding():
    # IABTechLab/iabgpp-es GppModel tests ("should decode tcfeuv2 vendor consents ..."): the
    # traditional encoder pads to 24 bits; [1, 173, 722] carries 14 padding bits
    prefix = "DBABMA~CPSG_8APSG_8AAAAAAENAACAAAAAAAAAAAAA"
    for tail, want in [("AOAAAABAAAAA", [28]), ("AOwAQAOgAAAA", [29]),
                       ("FpQAwAAgCtAWkAAAAAAA", [1, 173, 722])]:
        g = decode_gpp(prefix + tail + ".QAAA.IAAA")
        assert list(g.tcf.vendor_consents) == want
        assert g.tcf.segment_types == (2, 1)
    assert decode_gpp(prefix + "FpQAwAAgCtAWkAAAAAAA.QAAA.IAAA").tcf.vendor_consents.ranges == (
        (1, 1), (173, 173), (722, 722))


def test_iabgpp_rs_tcf_with_disclosed_vendors_and_publisher_tc():
    # noirotm/iabgpp-rs tests/data/tcfeuv2_with_all_segments_disclosed_vendors_first.json
    g = decode_gpp("DBABM~COvFyGBOvFyGBAbAAAENAPCAAOAAAAAAAAAAAEEUACCKAAA.IFoEUQQgAIQwgIwQABAEA"
                   "AAAOIAACAIAAAAQAIAgEAACEAAAAAgAQBAAAAAAAGBAAgAAAAAAAFAAECAAAgAAQARAEQAAAAAJ"
                   "AAIAAgAAAYQEAAAQmAgBC3ZAYzUw.ZAAgH9794ulA")
    tc = g.tcf
    assert (tc.cmp_id, tc.cmp_version, tc.vendor_list_version) == (27, 0, 15)
    assert tc.created // 10 == 1582243059 and tc.purposes_consent == {1, 2, 3}
    assert list(tc.vendor_consents) == list(tc.vendor_legitimate_interests) == [2, 6, 8]
    assert tc.segment_types == (1, 3) and tc.publisher_restrictions == ()


# ---- published GPP strings ---------------------------------------------------------------------
def test_gpp_spec_examples():
    # InteractiveAdvertisingBureau/Global-Privacy-Platform, Core/Consent String Specification,
    # "GPP String Examples" 1-3
    tcf_eu = "CPXxRfAPXxRfAAfKABENB-CgAAAAAAAAAAYgAAAAAAAA"
    g = decode_gpp("DBABMA~" + tcf_eu)
    assert g.version == 1 and g.section_ids == (2,) and g.sections[0].name == "tcfeuv2"
    # its decoded fields as noirotm/iabgpp-rs tests/data/tcfeuv2_core_only.json lists them
    tc = g.tcf
    assert (tc.cmp_id, tc.cmp_version, tc.consent_screen, tc.vendor_list_version) == (
        31, 640, 1, 126)
    assert (tc.consent_language, tc.publisher_cc, tc.tcf_policy_version) == ("EN", "DE", 2)
    assert tc.created // 10 == tc.last_updated // 10 == 1650492000 and tc.is_service_specific
    assert not (tc.purposes_consent or tc.purposes_li or tc.special_feature_opt_ins)
    assert gpp_restriction(g, None) is None  # section 2 is the caller's to judge
    for s in ("DBACNYA~" + tcf_eu + "~1YNN", "DBACNY~" + tcf_eu + "~1YNN"):
        g = decode_gpp(s)
        assert g.section_ids == (2, 6) and g.tcf.cmp_id == 31
        usp = g.section(6)
        assert (usp.name, usp["Version"], usp["Notice"], usp["OptOutSale"], usp["LspaCovered"]) \
            == ("uspv1", 1, "Y", "N", "N")
        assert gpp_restriction(g, [2, 6]) is None
    # example 3: section 5 (Canadian TCF) is not decoded here: opaque, unknown
    g = decode_gpp("DBABjw~" + tcf_eu + "~1YNN")
    assert g.section_ids == (5, 6) and g.tcf is None
    ca = g.section(5)
    assert (ca.name, ca.known, ca.text) == ("tcfcav1", False, tcf_eu)
    assert gpp_restriction(g, [6]) is None
    assert gpp_restriction(g, [5, 6]) == "bad_consent" == gpp_restriction(g, None)


def test_iabgpp_es_usp_and_usnat_examples():
    # IABTechLab/iabgpp-es GppModel tests: "should decode DBABTA~1YYN", "DBABLA~BVQqAAAAAgA.QA",
    # "DBABLA~BAAAAAAAAQA.QA", "DBABLA~BAAAAAAAAABA.QA", "DBABLA~BAAAAAABEQA.QA",
    # "DBABLA~BAAAAAAAAQRA.QA"
    assert gpp_restriction(decode_gpp("DBABTA~1YYN"), [6]) == "opt_out"
    assert gpp_restriction(decode_gpp("DBABTA~1---"), [6]) is None
    g = decode_gpp("DBABLA~BVQqAAAAAgA.QA")
    nat = g.section(7)
    assert (nat.name, nat.version, nat.gpc) == ("usnat", 1, 0)
    assert [nat[n] for n, _ in NAT_HEAD] == [1, 1, 1, 1, 0, 0, 2, 2, 2]
    assert nat[SDP] == (0,) * 12 and nat[KC] == (0, 0) and nat["PersonalDataConsents"] == 0
    assert (nat["MspaCoveredTransaction"], nat["MspaOptOutOptionMode"],
            nat["MspaServiceProviderMode"]) == (2, 0, 0)
    assert gpp_restriction(g, [7]) is None  # notices given, nobody opted out
    nat = decode_gpp("DBABLA~BAAAAAAAAQA.QA").section(7)
    assert nat[SDP] == (0,) * 12 and nat[KC] == (0, 0) and nat["MspaCoveredTransaction"] == 1
    nat = decode_gpp("DBABLA~BAAAAAABEQA.QA").section(7)
    assert nat[SDP] == (0,) * 11 + (1,) and nat[KC] == (0, 1)
    # iabgpp-es/-java wrote the 16/3 layout under Version 1 for a while: read as written
    nat = decode_gpp("DBABLA~BAAAAAAAAABA.QA").section(7)
    assert nat.version == 1 and nat[SDP] == (0,) * 16 and nat[KC] == (0, 0, 0)
    nat = decode_gpp("DBABLA~BAAAAAAAAQRA.QA").section(7)
    assert nat[SDP] == (0,) * 15 + (1,) and nat[KC] == (0, 0, 1)


def test_iabgpp_java_usnat_decode():
    # IABTechLab/iabgpp-java UsNatTest.testDecode1 / testDecodeWithGpcSegmentExcluded
    for text, gpc in [("BVVVkkkklWA.YA", 1), ("BVVVkkkklWA", None)]:
        nat = decode_gpp("DBABLA~" + text).section(7)
        assert [nat[n] for n, _ in NAT_HEAD] == [1] * 9
        assert nat[SDP] == (2, 1, 0, 2, 1, 0, 2, 1, 0, 2, 1, 0) and nat[KC] == (2, 1)
        assert (nat["PersonalDataConsents"], nat["MspaCoveredTransaction"],
                nat["MspaOptOutOptionMode"], nat["MspaServiceProviderMode"]) == (1, 1, 1, 2)
        assert nat.gpc == gpc


def test_iabgpp_java_every_section_default():
    # iabgpp-java GppModelTest.testEncodeDefaultAll: every section at its defaults
    s = ("DBACOdM~CPSG_8APSG_8AAAAAAENAACAAAAAAAAAAAAAAAAAAAAA.QAAA.IAAA~BPSG_8APSG_8AAAAAAENAACAA"
         "AAAAAAAAAAAAAAAAA.YAAAAAAAAAA~1---~BAAAAAAAAABA.QA~BAAAAABA.QA~BAAAABA~BAAAAEA.QA~BAAAA"
         "AQA~BAAAAAEA.QA~BAAAAABA~BAAAAABA.QA~BAAAAAABAA.QA~BAAAAAQA.QA~BAAAAAABAA.QA~BAAAAAQA"
         ".QA~BAAAAAQA.QA~BAAAAABA.QA~BAAAAAAAQA.QA~BAAAAAQA.QA")
    g = decode_gpp(s)
    assert g.section_ids == (2, 5) + tuple(range(6, 23))
    names = [sec.name for sec in g.sections]
    assert names == ["tcfeuv2", "tcfcav1", "uspv1", "usnat", "usca", "usva", "usco", "usut",
                     "usct", "usfl", "usmt", "usor", "ustx", "usde", "usia", "usne", "usnh",
                     "usnj", "ustn"]
    for sec in g.sections[3:]:
        assert sec.known and sec.version == 1 and not sec.problems
        assert sec["MspaCoveredTransaction"] == 1
        assert sec.gpc == (0 if sec.name not in ("usva", "usut", "usfl") else None)
    assert gpp_restriction(g, range(6, 23)) is None
    assert gpp_restriction(g, None) == "bad_consent"  # section 5 is applicable and unknown


IABGPP_RS = [  # noirotm/iabgpp-rs tests/data/*.json: string, section id, fields, gpc, restriction
    ("DBABLA~BVVVVVVVVWA", 7, {SDP: (1,) * 12, KC: (1, 1), "PersonalDataConsents": 1,
                               "SaleOptOut": 1, "MspaCoveredTransaction": 1}, None, "opt_out"),
    ("DBABLA~BVVVVVVVVWA.YA", 7, {"SharingOptOut": 1}, 1, "opt_out"),
    ("DBABLA~BAAAAAAAAQA", 7, {SDP: (0,) * 12, "SaleOptOutNotice": 0}, None, None),
    ("DBABLA~CAAAAAAAAAWA.Q", 7, {"Version": 2, SDP: (0,) * 16, KC: (0, 0, 1),
                                  "PersonalDataConsents": 1, "MspaCoveredTransaction": 2}, 0,
     "no_consent"),  # usnat v2: the 16-17 year old did not consent
    ("DBABBg~BVVVVVVY", 8, {SDP: (1,) * 9, KC: (1, 1), "SaleOptOut": 1, "SharingOptOut": 1,
                            "MspaOptOutOptionMode": 1, "MspaServiceProviderMode": 2}, None,
     "opt_out"),
    ("DBABBg~BVqqqqpY.YA", 8, {SDP: (2,) * 9, KC: (2, 2), "PersonalDataConsents": 2,
                               "SaleOptOut": 2}, 1, "bad_consent"),  # PersonalDataConsents=2
    ("DBABRg~BVVVVWY", 9, {SDP: (1,) * 8, KC: 1, "MspaCoveredTransaction": 2,
                           "TargetedAdvertisingOptOut": 1}, None, "opt_out"),
    ("DBABJg~BVVVVVg.YA", 10, {SDP: (1,) * 7, KC: 1, "MspaCoveredTransaction": 1}, 1, "opt_out"),
    ("DBABFg~BVVVVVmA", 11, {SDP: (1,) * 8, KC: 1, "SensitiveDataProcessingOptOutNotice": 1,
                             "MspaCoveredTransaction": 2}, None, "opt_out"),
    ("DBABVg~BVVVVVVg.YA", 12, {SDP: (1,) * 8, KC: (1, 1, 1)}, 1, "opt_out"),
]


@pytest.mark.parametrize("s, sid, fields, gpc, restriction", IABGPP_RS)
def test_iabgpp_rs_us_sections(s, sid, fields, gpc, restriction):
    g = decode_gpp(s)
    sec = g.section(sid)
    assert g.section_ids == (sid,) and sec.known and not sec.problems
    for name, value in fields.items():
        assert sec[name] == value, name
    assert sec.gpc == gpc
    assert gpp_restriction(g, [sid]) == restriction


def test_liveramp_fixture_with_mspa_covered_zero_is_bad_consent():
    # LiveRamp's iabconsent Go tests use "DBABzw~1YNN~BVVqAAEABAA.QA" (sections 6 and 7): its
    # usnat MspaCoveredTransaction is 0, which the spec does not allow (1 yes, 2 no)
    g = decode_gpp("DBABzw~1YNN~BVVqAAEABAA.QA")
    assert g.section_ids == (6, 7)
    assert g.section(7).problems == ("MspaCoveredTransaction = 0, allowed 1, 2",)
    assert gpp_restriction(g, [6]) is None
    assert gpp_restriction(g, [6, 7]) == "bad_consent"


# ---- gpp_restriction: one row per rule ---------------------------------------------------------
RULES = [  # (section id, version, gpc, changes, restriction)
    (7, 1, None, {}, None),
    (7, 1, 0, {}, None),
    (7, 1, 1, {}, "opt_out"),
    (7, 1, None, {"SaleOptOut": 1}, "opt_out"),
    (7, 1, None, {"SharingOptOut": 1}, "opt_out"),
    (7, 1, None, {"TargetedAdvertisingOptOut": 1}, "opt_out"),
    (7, 1, None, {"SaleOptOut": 0, "SaleOptOutNotice": 0}, None),
    (7, 1, None, {"MspaServiceProviderMode": 1}, "no_consent"),
    (7, 1, None, {"MspaCoveredTransaction": 2, "MspaOptOutOptionMode": 0}, None),
    (7, 1, None, {"SaleOptOutNotice": 2}, "no_consent"),
    (7, 1, None, {"SharingNotice": 2}, "no_consent"),
    (7, 1, None, {"SharingOptOutNotice": 2}, "no_consent"),
    (7, 1, None, {"TargetedAdvertisingOptOutNotice": 2}, "no_consent"),
    (7, 1, None, {"SensitiveDataProcessingOptOutNotice": 2}, "no_consent"),
    (7, 1, None, {"SensitiveDataLimitUseNotice": 2}, "no_consent"),
    (7, 1, None, {SDP: (1,) + (0,) * 11}, "no_consent"),
    (7, 1, None, {SDP: (0,) * 10 + (1, 0)}, "no_consent"),  # union membership
    (7, 1, None, {SDP: (0,) * 7 + (1,) + (0,) * 4}, None),  # precise geo: transmitGeo, not UFPD
    (7, 1, None, {SDP: (0,) * 5 + (2,) + (0,) * 6}, "no_consent"),  # genetic, even consented
    (7, 1, None, {SDP: (0,) * 11 + (1,)}, "no_consent"),  # mail contents
    (7, 1, None, {SDP: (2,) + (0,) * 11}, None),  # consented, both sensitive notices given
    (7, 1, None, {SDP: (2,) + (0,) * 11, "SensitiveDataLimitUseNotice": 0}, "bad_consent"),
    (7, 1, None, {SDP: (0,) * 7 + (2,) + (0,) * 4,
                  "SensitiveDataProcessingOptOutNotice": 0}, "bad_consent"),
    (7, 1, None, {KC: (1, 0)}, "no_consent"),
    (7, 1, None, {KC: (2, 0)}, None),  # 13-16 consented
    (7, 1, None, {KC: (0, 2)}, "no_consent"),  # under 13: no consent counts
    (7, 1, None, {KC: (0, 1)}, "no_consent"),
    (7, 1, None, {"SaleOptOutNotice": 0}, "bad_consent"),  # no notice needed, yet opted in
    (7, 1, None, {"SharingNotice": 0}, "bad_consent"),
    (7, 1, None, {"SharingOptOutNotice": 0}, "bad_consent"),
    (7, 1, None, {"TargetedAdvertisingOptOutNotice": 0}, "bad_consent"),
    (7, 1, None, {"PersonalDataConsents": 2}, "bad_consent"),
    (7, 1, None, {"PersonalDataConsents": 1}, None),
    (7, 1, None, {"SaleOptOut": 3}, "bad_consent"),
    (7, 1, None, {"MspaCoveredTransaction": 0}, "bad_consent"),
    (7, 1, None, {"MspaCoveredTransaction": 3}, "bad_consent"),
    (7, 1, None, {SDP: (0,) * 4 + (3,) + (0,) * 7}, "bad_consent"),
    (7, 1, None, {"SaleOptOut": 1, "PersonalDataConsents": 2}, "bad_consent"),  # precedence
    (7, 1, 1, {"MspaServiceProviderMode": 1}, "opt_out"),
    (7, 2, None, {}, None),
    (7, 2, None, {SDP: (0,) * 12 + (1, 0, 0, 0)}, "no_consent"),  # general health data
    (7, 2, None, {SDP: (0,) * 15 + (2,)}, None),
    (7, 2, None, {KC: (0, 0, 1)}, "no_consent"),  # 16-17 personal data: no consent
    (7, 2, None, {KC: (0, 0, 2)}, None),
    (8, 1, None, {}, None),
    (8, 1, 1, {}, "opt_out"),
    (8, 1, None, {SDP: (1,) + (0,) * 8}, "no_consent"),  # CA 1 -> usnat 9 (ids)
    (8, 1, None, {SDP: (0, 0, 1) + (0,) * 6}, None),  # CA 3 -> usnat 8 (precise geo)
    (8, 1, None, {SDP: (0,) * 7 + (1, 0)}, "no_consent"),  # CA 8 -> usnat 3 (health)
    (8, 1, None, {SDP: (0, 0, 2) + (0,) * 6}, "no_consent"),  # no SDP opt-out notice in CA
    (8, 1, None, {KC: (0, 2)}, "no_consent"),
    (9, 1, None, {}, None),
    (9, 1, None, {KC: 2}, "no_consent"),  # VA does not tell 13-16 from under 13
    (9, 1, None, {SDP: (2,) + (0,) * 7}, "no_consent"),  # no sensitive notices in VA
    (9, 1, None, {"TargetedAdvertisingOptOut": 1}, "opt_out"),
    (10, 1, None, {SDP: (0,) * 5 + (1, 0)}, "no_consent"),  # CO 6 genetic
    (11, 1, None, {SDP: (0, 0, 1) + (0,) * 5}, "no_consent"),  # UT 3 -> usnat 4
    (11, 1, None, {"SensitiveDataProcessingOptOutNotice": 2}, "no_consent"),
    (12, 1, None, {}, None),
    (12, 1, None, {KC: (0, 2, 2)}, "no_consent"),  # CT 13-16 consent; under 13 never counts
    (12, 1, None, {KC: (1, 0, 0)}, "no_consent"),
    (13, 1, None, {}, None),
    (13, 1, None, {"ProcessingNotice": 2}, "no_consent"),
    (13, 1, None, {ADPC[0]: 2}, "bad_consent"),
    (14, 1, None, {"SharingNotice": 0, "SaleOptOut": 1}, "opt_out"),
    (15, 1, None, {SDP: (0,) * 10 + (2,)}, "no_consent"),
    (16, 1, None, {SDP: (0,) * 7 + (1,)}, "no_consent"),
    (16, 1, 1, {}, "opt_out"),
    (17, 1, None, {KC: (0, 0, 0, 0, 1)}, "no_consent"),
    (18, 1, None, {"SensitiveDataOptOutNotice": 2}, "no_consent"),
    (19, 1, None, {"TargetedAdvertisingOptOutNotice": 0}, "bad_consent"),
    (20, 1, None, {"MspaServiceProviderMode": 1}, "no_consent"),
    (21, 1, None, {SDP: (0,) * 9 + (3,)}, "bad_consent"),
    (22, 1, None, {}, None),
    (22, 1, None, {KC: 1}, "no_consent"),
]


@pytest.mark.parametrize("sid, version, gpc, changes, want", RULES)
def test_gpp_restriction_rules(sid, version, gpc, changes, want):
    assert restriction_of(sid, version, gpc, **changes) == want


def test_gpp_restriction_applicable_sections():
    nat_out = us(7, {**neutral(7), "SaleOptOut": 1})
    g = decode_gpp(gpp({6: "1YNN", 7: nat_out}))
    assert gpp_restriction(g, None) == "opt_out"
    assert gpp_restriction(g, [6]) is None
    assert gpp_restriction(g, [7]) == gpp_restriction(g, (6, 7)) == "opt_out"
    assert gpp_restriction(g, []) is None  # nothing applies
    assert gpp_restriction(g, [6, 8]) == "bad_consent"  # applicable, yet missing
    assert gpp_restriction(g, [2]) == "bad_consent"  # TCF EU applicable, no TC string
    for bad in ("7", b"7", 7, [7.0], [True], [None], {7: 1}):
        assert gpp_restriction(g, bad) == "bad_consent"
    with_tcf = decode_gpp(gpp({2: GOOD_TC, 6: "1YYN"}))
    assert with_tcf.tcf == decode_tcf(GOOD_TC)
    assert gpp_restriction(with_tcf, [2]) is None  # the caller judges the TC string
    assert gpp_restriction(with_tcf, None) == "opt_out"
    with pytest.raises(TypeError, match="gpp must be a GPPString"):
        gpp_restriction("DBABTA~1YNN", None)


def test_severity_across_sections():
    out = us(7, {**neutral(7), "SaleOptOut": 1})
    none_ = us(8, {**neutral(8), "SharingOptOutNotice": 2})
    bad = us(9, {**neutral(9), "SaleOptOut": 3})
    g = decode_gpp(gpp({7: out, 8: none_, 9: bad}))
    assert gpp_restriction(g, [8]) == "no_consent"
    assert gpp_restriction(g, [7, 8]) == "opt_out"
    assert gpp_restriction(g, None) == "bad_consent"


@pytest.mark.parametrize("text", ["1YN", "1YNNN", "2YNN", "1ynn", "1YNX", "Y", "BVVV"])
def test_malformed_us_privacy_is_bad_consent(text):
    g = decode_gpp("DBABTA~" + text)
    assert g.section(6).problems and gpp_restriction(g, [6]) == "bad_consent"


def test_unknown_version_is_opaque_and_bad_when_applicable():
    text = us(8, neutral(8), version=1)
    text = B64[2] + text[1:]  # Version 2 of usca: no layout here
    g = decode_gpp(gpp({8: text, 6: "1NNN"}))
    sec = g.section(8)
    assert (sec.known, sec.version, sec.fields, sec.text) == (False, 2, (), text)
    assert gpp_restriction(g, [6]) is None
    assert gpp_restriction(g, [8]) == "bad_consent"


def test_unknown_section_ids_are_opaque():
    g = decode_gpp(gpp({1: "anything", 4: "x", 23: "B-", 6: "1YNN"}))
    assert [(s.section_id, s.name, s.known) for s in g.sections] == [
        (1, "tcfeuv1", False), (4, "signalintegrity", False), (6, "uspv1", True), (23, "", False)]
    assert gpp_restriction(g, [6]) is None
    for sid in (1, 4, 23):
        assert gpp_restriction(g, [sid]) == "bad_consent"


def test_ranges_are_stored_compactly_and_the_limit_holds():
    tc = decode_tcf(tcf(vendors=frozenset(range(1, 10001)), vendors_ranges=[(1, 10000)]))
    assert tc.vendor_consents.ranges == ((1, 10000),) and tc.vendor_consents.bitfield == b""
    assert tc.vendor_consent(1) and tc.vendor_consent(10000) and not tc.vendor_consent(10001)
    assert len(tc.vendor_consents) == 10000
    # overlapping and unsorted entries (the spec allows any order) merge into one range
    tc = decode_tcf(tcf(vendors=frozenset({9}), vendors_ranges=[(5, 9), (1, 3), (2, 6)]))
    assert tc.vendor_consents.ranges == ((1, 9),)
    # a near-maximal string (5 restrictions of 4095 single-vendor entries, 58 KiB) decodes;
    # one character past the limit is refused unread
    entries = [(2 * i + 1, 2 * i + 1) for i in range(4095)]
    big = tcf(restrictions=[(p, 1, entries) for p in range(1, 6)])
    assert 50_000 < len(big) <= MAX_SIGNAL_LENGTH
    assert [len(r.vendors) for r in decode_tcf(big).publisher_restrictions] == [4095] * 5
    with pytest.raises(SignalError, match="characters long, more than the 65536 allowed"):
        decode_tcf(GOOD_TC + "A" * MAX_SIGNAL_LENGTH)


# ---- properties: round trip and fail closed ----------------------------------------------------
ids_24 = st.frozensets(st.integers(1, 24))
letters_st = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=2, max_size=2)


@st.composite
def vendor_sets(draw):
    """(ids, ranges or None): a bitfield, or range entries in any order."""
    ids = draw(st.frozensets(st.integers(1, 300), max_size=40))
    if not draw(st.booleans()) or not ids:
        return ids, None
    entries = runs(ids)
    return ids, draw(st.permutations(entries))


@st.composite
def tcf_fields(draw):
    vendors, vranges = draw(vendor_sets())
    lis, lranges = draw(vendor_sets())
    restrictions = draw(st.lists(st.tuples(
        st.integers(1, 24), st.integers(0, 2),
        st.frozensets(st.integers(1, 500), max_size=6).map(runs)), max_size=3))
    return dict(
        version=2, created=draw(st.integers(0, 2**36 - 1)),
        last_updated=draw(st.integers(0, 2**36 - 1)), cmp_id=draw(st.integers(0, 4095)),
        cmp_version=draw(st.integers(0, 4095)), consent_screen=draw(st.integers(0, 63)),
        consent_language=draw(letters_st), vendor_list_version=draw(st.integers(0, 4095)),
        tcf_policy_version=draw(st.integers(0, 63)), is_service_specific=draw(st.booleans()),
        use_non_standard_texts=draw(st.booleans()),
        special_feature_opt_ins=draw(st.frozensets(st.integers(1, 12))),
        purposes_consent=draw(ids_24), purposes_li=draw(ids_24),
        purpose_one_treatment=draw(st.booleans()), publisher_cc=draw(letters_st),
        vendors=vendors, vendors_ranges=vranges, lis=lis, lis_ranges=lranges,
        restrictions=restrictions)


@settings(max_examples=80, deadline=None)
@given(tcf_fields(), st.sampled_from(["6", "8+6", "24"]))
def test_tcf_round_trip(f, pad):
    check_tcf_fields(decode_tcf(b64(core_bits(f), pad)), f)


@settings(max_examples=40, deadline=None)
@given(tcf_fields())
def test_tcf_every_truncation_and_junk_fails(f):
    nbits = len(core_bits(f))
    s = b64(core_bits(f))  # fewest characters: every prefix loses a field bit
    for k in range(len(s)):
        with pytest.raises(SignalError):
            decode_tcf(s[:k])
    for c in B64 + "!+/ ~\x00é":
        if c == "A" and 6 * (len(s) + 1) - nbits <= -nbits % 24:
            # one more zero character that stays inside the last 24-bit group is padding
            assert decode_tcf(s + c) == decode_tcf(s)
        else:
            with pytest.raises(SignalError):
                decode_tcf(s + c)
    if len(s) % 4 == 3:  # "=" completing the last base64 group is padding
        assert decode_tcf(s + "=") == decode_tcf(s)
    else:
        with pytest.raises(SignalError):
            decode_tcf(s + "=")


@settings(max_examples=40, deadline=None)
@given(tcf_fields(), st.integers(0, 63).filter(lambda v: v != 2))
def test_tcf_every_other_version_fails(f, version):
    with pytest.raises(SignalError, match=f"has Version {version}, expected 2"):
        decode_tcf(b64(core_bits({**f, "version": version})))


@settings(max_examples=40, deadline=None)
@given(tcf_fields(), st.data())
def test_tcf_any_set_padding_bit_fails(f, data):
    core = core_bits(f)
    pad = -len(core) % 24
    if pad:
        i = data.draw(st.integers(0, pad - 1))
        junk = ["0"] * pad
        junk[i] = "1"
        with pytest.raises(SignalError, match="non-zero padding"):
            decode_tcf(b64(core + "".join(junk)))


@settings(max_examples=30, deadline=None)
@given(tcf_fields(), st.lists(st.sampled_from([1, 2, 3]), min_size=1, max_size=3, unique=True))
def test_tcf_optional_segments_parse_and_truncations_inside_them_fail(f, kinds):
    segs = {1: "001" + enc_vendors(9, {2, 9}), 2: "010" + enc_vendors(3, set(), [(1, 3)]),
            3: "011" + id_field({1}, 24) + id_field({24}, 24) + bits(2, 6) + "01" + "11"}
    s = b64(core_bits(f)) + "".join("." + b64(segs[k]) for k in kinds)
    tc = decode_tcf(s)
    assert tc.segment_types == tuple(kinds)
    check_tcf_fields(tc, f)
    for k in range(len(s)):
        if s[k] != "." and s[k - 1] != ".":  # dropping a whole optional segment is allowed
            with pytest.raises(SignalError):
                decode_tcf(s[:k])


@st.composite
def us_sections(draw, sid=None, valid=True):
    sid = draw(st.sampled_from(sorted({k[0] for k in LAYOUTS}))) if sid is None else sid
    version = draw(st.sampled_from([v for s_, v in LAYOUTS if s_ == sid]))
    fields, has_gpc = LAYOUTS[(sid, version)]
    values = {}
    for name, n in fields:
        lo = 1 if name == "MspaCoveredTransaction" else 0
        draw_v = st.integers(lo, 2) if valid else st.integers(0, 3)
        values[name] = tuple(draw(draw_v) for _ in range(n)) if n else draw(draw_v)
    gpc = draw(st.sampled_from([None, 0, 1])) if has_gpc else None
    return sid, version, values, gpc


@st.composite
def gpp_inputs(draw):
    """Sections by id, drawn sorted; and how the header groups the ids into entries."""
    ids = sorted(draw(st.sets(st.sampled_from([2, 6] + list(range(7, 23))), min_size=1,
                              max_size=6)))
    sections = {}
    for sid in ids:
        if sid == 2:
            sections[sid] = ("tcf", draw(tcf_fields()))
        elif sid == 6:
            sections[sid] = ("usp", "1" + "".join(draw(st.sampled_from("YN-")) for _ in "abc"))
        else:
            sections[sid] = ("us", draw(us_sections(sid)))
    groups = []
    for a, b in runs(ids):
        # split each run of consecutive ids at random into single ids and ranges
        start = a
        while start <= b:
            end = draw(st.integers(start, b))
            groups.append((start, end))
            start = end + 1
    return sections, groups


def encode_sections(sections) -> dict[int, str]:
    out = {}
    for sid, (kind, payload) in sections.items():
        if kind == "tcf":
            out[sid] = b64(core_bits(payload))
        elif kind == "usp":
            out[sid] = payload
        else:
            _, version, values, gpc = payload
            out[sid] = us(sid, values, version, gpc)
    return out


@settings(max_examples=80, deadline=None)
@given(gpp_inputs())
def test_gpp_round_trip(inputs):
    sections, groups = inputs
    s = gpp(encode_sections(sections), groups)
    g = decode_gpp(s)
    assert isinstance(g, GPPString) and g.section_ids == tuple(sorted(sections))
    for sid, (kind, payload) in sections.items():
        sec = g.section(sid)
        assert sec.known and not sec.problems
        if kind == "tcf":
            check_tcf_fields(g.tcf, payload)
        elif kind == "usp":
            assert "".join(str(sec[n]) for n in ("Version", "Notice", "OptOutSale",
                                                 "LspaCovered")) == payload
        else:
            _, version, values, gpc = payload
            assert sec.version == version and sec.gpc == gpc
            assert dict(sec.fields) == {"Version": version, **values}
    assert gpp_restriction(g, None) in (None, "opt_out", "no_consent", "bad_consent")


@settings(max_examples=40, deadline=None)
@given(gpp_inputs())
def test_gpp_every_truncation_is_refused_or_bad_consent(inputs):
    sections, groups = inputs
    s = gpp(encode_sections(sections), groups)
    for k in range(len(s)):
        if s[k] == ".":
            continue  # an optional sub-section or segment may be left out whole
        try:
            g = decode_gpp(s[:k])
        except SignalError:
            continue
        assert gpp_restriction(g, None) == "bad_consent", s[:k]


@settings(max_examples=60, deadline=None)
@given(us_sections(valid=False))
def test_gpp_out_of_range_values_are_bad_consent(section):
    sid, version, values, gpc = section
    g = decode_gpp(gpp({sid: us(sid, values, version, gpc)}))
    allowed = [(n, v) for n, v in values.items()
               if all(x in ((1, 2) if n == "MspaCoveredTransaction" else (0, 1, 2))
                      for x in (v if isinstance(v, tuple) else (v,)))]
    if len(allowed) < len(values):
        assert g.section(sid).problems
        assert gpp_restriction(g, [sid]) == "bad_consent"
    else:
        assert not g.section(sid).problems


@settings(max_examples=60, deadline=None)
@given(us_sections(), st.sampled_from(["6", "8+6", "24"]))
def test_gpp_us_sections_accept_every_reference_padding(section, pad):
    sid, version, values, gpc = section
    g = decode_gpp(gpp({sid: us(sid, values, version, gpc, pad)}))
    assert dict(g.section(sid).fields) == {"Version": version, **values}


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=B64 + ".~", max_size=60))
def test_gpp_decode_either_refuses_or_yields_a_verdict(s):
    """Arbitrary text in the GPP alphabet: SignalError, or a GPPString gpp_restriction judges."""
    try:
        g = decode_gpp("DBAB" + s)
    except SignalError:
        return
    assert gpp_restriction(g, None) in (None, "opt_out", "no_consent", "bad_consent")
