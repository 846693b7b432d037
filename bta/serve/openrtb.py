"""OpenRTB 2.6 adapter: a BidRequest in, a BidResponse-like dict out, one decision per impression.

:func:`decide_openrtb` reads what the Engine needs from a bid request:

- ``id``: the request id; each impression's decision gets ``"{id}:{imp.id}"``;
- ``user.id``, else ``user.buyeruid``: the user id (experiment unit and profile key);
- privacy signals, decoded once per request (:func:`bta.privacy.read_consent`; the accepted
  shapes are listed in :mod:`bta.privacy.gate`, anything else fails closed):
  ``user.consent`` (else ``user.ext.consent``): the TCF v2 TC string; ``regs.gdpr`` (else
  ``regs.ext.gdpr``): GDPR applies, consent is then required (absent: see
  :class:`~bta.privacy.PrivacyPolicy`'s ``require_consent_signal``; unreadable: applies);
  ``regs.gpp`` with ``regs.gpp_sid`` (else in ``regs.ext``): the GPP string and its
  applicable sections (TCF EU, US National and state sections); ``regs.ext.gpc``: Global
  Privacy Control, an opt-out; ``regs.us_privacy`` (else ``regs.ext.us_privacy``): ``Y`` as
  third character is an opt-out; ``regs.coppa``: child-directed, never targeted;
  ``device.lmt`` or ``device.dnt`` set, ``device.ext.atts`` 1 or 2 (App Tracking
  Transparency restricted or denied): an opt-out. Flags count in every type (``1``, ``"1"``,
  ``true``);
- ``user.ext.age`` or ``device.ext.age``, else ``user.yob``: the age (a number or numeric
  text); from a year of birth the youngest the user can be (``year of the decision - yob -
  1``); an unreadable age or year is under age;
- ``site.cat``, ``site.content.cat``, ``app.cat``, ``app.content.cat``: content categories,
  passed to the Engine as the ``page_category`` context; ``site.domain`` (else ``site.id``)
  and ``app.bundle`` (else ``app.id``) as ``site`` / ``app``; ``device.geo.country`` as
  ``country``; ``imp[].tagid`` as the ``slot`` of each impression (campaigns can target them:
  ``Campaign(context=...)``);
- ``imp[].bidfloor`` with ``bidfloorcur``: no bid below the floor (compared in the same
  currency only).

At most ``max_imps`` impressions (default :data:`MAX_IMPS`, 64) are decided per request, in
their order; the rest are answered in ``ext.bta.no_bid`` with the reason ``"too_many_imps"``
and not decided, so that a request of 50,000 impressions costs what 64 do. The privacy
signals are read once per request and the same decoded object serves every impression.

The response carries one ``bid`` per impression with ``price`` (CPM), ``adid``/``crid`` (the
creative), ``cid`` (the campaign) and ``ext.bta`` (the decision-log fields). Most bids lose the
auction: with ``Engine(count_on="win")`` spend and frequency caps count only once the exchange's
win notice arrives, ``engine.notify_win(bid["id"], price=clearing_price)`` (a loss notice:
``engine.notify_loss(bid["id"])``; without either the decision expires). Malformed input
never raises: a request that cannot be read gets a no-bid (``nbr`` 2, invalid request) with the
reason in ``ext.bta``; a request without a usable user gets the Engine's untargeted fallback.
"""

from __future__ import annotations

import logging
import math
import time
from datetime import datetime, timezone
from typing import Any, Mapping

from bta.privacy.gate import UNREADABLE, ConsentSignals, read_consent, read_flag, read_number
from bta.errors import ConfigError
from bta.serve.engine import Decision, Engine, Request

__all__ = ["decide_openrtb", "user_data", "NBR_UNKNOWN", "NBR_TECHNICAL_ERROR",
           "NBR_INVALID_REQUEST", "MAX_IMPS"]

logger = logging.getLogger("bta")

#: OpenRTB no-bid reason codes (List: No-Bid Reason Codes).
NBR_UNKNOWN = 0
NBR_TECHNICAL_ERROR = 1
NBR_INVALID_REQUEST = 2
#: Longest id accepted from a request: ids are log keys, not payloads.
_MAX_ID = 256
#: Impressions decided per bid request by default (``decide_openrtb(max_imps=...)``): real
#: requests carry a few (a page's slots, a video pod); each costs a decision.
MAX_IMPS = 64
_TOO_MANY = "too_many_imps"
_BAD = "fallback:bad_request"


def _obj(x: Any) -> Mapping[str, Any]:
    return x if isinstance(x, Mapping) else {}


def _id(x: Any) -> str | None:
    # OpenRTB ids are strings; integers are common in the wild and unambiguous
    if isinstance(x, bool):
        return None
    if isinstance(x, int):
        x = str(x)
    if isinstance(x, str) and 0 < len(x) <= _MAX_ID:
        return x
    return None


def _number(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _categories(req: Mapping[str, Any]) -> list[str]:
    cats: list[str] = []
    for holder in (_obj(req.get("site")), _obj(req.get("app"))):
        for src in (holder.get("cat"), _obj(holder.get("content")).get("cat")):
            if isinstance(src, list):
                cats.extend(c for c in src if isinstance(c, str) and 0 < len(c) <= 64)
    return list(dict.fromkeys(cats))[:64]  # the Engine reads at most 64 values per field


def _context(req: Mapping[str, Any]) -> dict[str, Any]:
    """The Engine's request context (page, site or app, country; the slot is per impression)."""
    ctx: dict[str, Any] = {}
    cats = _categories(req)
    if cats:
        ctx["page_category"] = cats
    site, app = _obj(req.get("site")), _obj(req.get("app"))
    for name, holder, keys in (("site", site, ("domain", "id")), ("app", app, ("bundle", "id"))):
        for k in keys:
            v = _id(holder.get(k))
            if v is not None:
                ctx[name] = v
                break
    country = _obj(_obj(req.get("device")).get("geo")).get("country")
    if isinstance(country, str) and 0 < len(country) <= 8:
        ctx["country"] = country
    return ctx


def _consent(req: Mapping[str, Any], now_ms: int) -> ConsentSignals:
    """The request's privacy signals, decoded once for all its impressions.

    Every flag and number is read in any type producers send (``1``, ``"1"``, ``True``;
    ``"12"`` for an age; see :mod:`bta.privacy.gate`), and every unreadable value fails
    closed.
    """
    user = _obj(req.get("user"))
    regs = _obj(req.get("regs"))
    device = _obj(req.get("device"))
    regs_ext, user_ext, device_ext = (_obj(regs.get("ext")), _obj(user.get("ext")),
                                      _obj(device.get("ext")))
    c: dict[str, Any] = {}
    for key, first, second in (("gdpr", regs, regs_ext), ("us_privacy", regs, regs_ext),
                               ("gpp", regs, regs_ext), ("gpp_sid", regs, regs_ext),
                               ("tcf", user, user_ext)):
        name = "consent" if key == "tcf" else key
        v = first.get(name)
        if v is None:
            v = second.get(name)
        if v is not None:
            c[key] = v
    if regs.get("coppa") is not None:
        c["coppa"] = regs.get("coppa")
    if regs_ext.get("gpc") is not None:
        c["gpc"] = regs_ext.get("gpc")
    # limit ad tracking, do not track: set (or unreadable) means no targeting
    opt_out = any(read_flag(device.get(k)) not in (None, False) for k in ("lmt", "dnt"))
    atts = read_number(device_ext.get("atts"))
    # App Tracking Transparency: 1 restricted, 2 denied (0 not determined, 3 authorized)
    if atts is UNREADABLE or atts in (1.0, 2.0):
        opt_out = True
    if opt_out:
        c["opt_out"] = True
    age = user_ext.get("age")
    if age is None:
        age = device_ext.get("age")
    if age is None and user.get("yob") is not None:
        yob = read_number(user.get("yob"))
        if yob is UNREADABLE or yob != yob:
            age = math.nan  # a year of birth that cannot be read: fail closed
        else:
            year = datetime.fromtimestamp(now_ms / 1000.0, tz=timezone.utc).year
            # born late in yob, the user has not had this year's birthday yet: the youngest
            # possible age, so that the gate errs toward protecting a minor
            age = year - yob - 1
    if age is not None:
        c["age"] = age
    return read_consent(c)


def _no_bid(rid: Any, nbr: int, reason: str, detail: str) -> dict[str, Any]:
    return {"id": rid if isinstance(rid, str) else "", "seatbid": [], "nbr": nbr,
            "ext": {"bta": {"reason": reason, "detail": detail}}}


def _bid(imp_id: str, d: Decision) -> dict[str, Any]:
    fields = d.as_dict()
    fields.pop("user_id")  # the exchange knows its user; the response need not echo it
    return {"id": d.request_id, "impid": imp_id, "price": float(d.price),
            "adid": d.creative_id, "crid": d.creative_id, "cid": d.campaign_id,
            "ext": {"bta": fields}}


def decide_openrtb(engine: Engine, bid_request: Any, *, seat: str = "bta", cur: str = "USD",
                   now_ms: int | None = None, max_imps: int = MAX_IMPS) -> dict[str, Any]:
    """Decisions for every impression of an OpenRTB 2.6 BidRequest, as a BidResponse dict.

    Parameters
    ----------
    engine : Engine
    bid_request : dict
        A parsed BidRequest (see the module docstring for the fields read).
    seat : str, default "bta"
        ``seatbid[0].seat``.
    cur : str, default "USD"
        Currency of the Engine's bids; impressions whose ``bidfloorcur`` differs are bid on
        without a floor check.
    now_ms : int, optional
        Decision time (epoch ms); default now. Replays pass the logged time.
    max_imps : int, default 64 (:data:`MAX_IMPS`)
        Impressions decided, the first ones in the request's order; the others are not
        decided and appear in ``ext.bta.no_bid`` with the reason ``"too_many_imps"``.

    Returns
    -------
    dict
        ``{"id", "cur", "seatbid": [{"seat", "bid": [{"id", "impid", "price", "adid",
        "crid", "cid", "ext": {"bta": {decision fields}}}]}]}``, plus ``ext.bta.no_bid`` for
        impressions not bid on (``{"impid", "reason", ...}``). A request that cannot be read
        gives ``{"id", "seatbid": [], "nbr": 2, "ext": {"bta": {"reason":
        "fallback:bad_request", "detail": ...}}}``; every price below its floor gives ``nbr``
        0 with reason ``"below_floor"``. Never raises on the bid request.

    Raises
    ------
    ConfigError
        ``max_imps`` is not an integer >= 1 (the caller's argument, not request data).

    Examples
    --------
    >>> decide_openrtb(engine, {"id": "r1", "imp": [{"id": "1"}],
    ...                         "user": {"id": "u42"}})                   # doctest: +SKIP
    {'id': 'r1', 'cur': 'USD', 'seatbid': [{'seat': 'bta', 'bid': [{'id': 'r1:1', ...}]}]}
    """
    if isinstance(max_imps, bool) or not isinstance(max_imps, int) or max_imps < 1:
        raise ConfigError(f"max_imps must be an integer >= 1, got {max_imps!r}")
    try:
        return _decide(engine, bid_request, seat, cur, now_ms, max_imps)
    except Exception:  # noqa: BLE001 - an exchange must get an answer, never a traceback
        logger.exception("decide_openrtb failed; answering with a no-bid")
        rid = bid_request.get("id") if isinstance(bid_request, Mapping) else None
        return _no_bid(_id(rid), NBR_TECHNICAL_ERROR, "fallback:error", "internal error")


def _decide(engine: Engine, req: Any, seat: str, cur: str, now_ms: int | None,
            max_imps: int) -> dict[str, Any]:
    if not isinstance(req, Mapping):
        return _no_bid(None, NBR_INVALID_REQUEST, _BAD, "the bid request is not an object")
    rid = _id(req.get("id"))
    if rid is None:
        return _no_bid(None, NBR_INVALID_REQUEST, _BAD, "id is missing or not a string")
    imps = req.get("imp")
    if not isinstance(imps, list) or not imps:
        return _no_bid(rid, NBR_INVALID_REQUEST, _BAD, "imp is missing, empty or not a list")
    now = int(now_ms) if now_ms is not None else time.time_ns() // 1_000_000
    user = _obj(req.get("user"))
    user_id = _id(user.get("id"))
    if user_id is None:
        user_id = _id(user.get("buyeruid"))
    consent = _consent(req, now)  # decoded once: the same object serves every impression
    context = _context(req)
    bids, no_bid = [], []
    seen: set[str] = set()
    for imp in imps[:max_imps]:
        imp = _obj(imp)
        imp_id = _id(imp.get("id"))
        if imp_id is None or imp_id in seen:
            no_bid.append({"impid": imp_id, "reason": _BAD,
                           "detail": "imp.id is missing, invalid or repeated"})
            continue
        seen.add(imp_id)
        # user_id None makes the Engine answer with its untargeted fallback (bad_request)
        slot = _id(imp.get("tagid"))
        d = engine.decide(Request(user_id=user_id, ts=now, request_id=f"{rid}:{imp_id}"[:_MAX_ID],
                                  context=context if slot is None else {**context, "slot": slot},
                                  consent=consent))
        floor = _number(imp.get("bidfloor"))
        floor_cur = imp.get("bidfloorcur", cur)
        if floor is not None and floor_cur == cur and d.price < floor:
            no_bid.append({"impid": imp_id, "reason": "below_floor",
                           "request_id": d.request_id})
            continue
        bids.append(_bid(imp_id, d))
    invalid = all(n["reason"] == _BAD for n in no_bid)  # of the impressions decided
    no_bid.extend(_not_decided(imps[max_imps:]))
    if not bids:
        out = _no_bid(rid, NBR_INVALID_REQUEST if invalid else NBR_UNKNOWN,
                      _BAD if invalid else "below_floor",
                      "no impression could be read" if invalid else
                      "every price is below its floor")
        out["ext"]["bta"]["no_bid"] = no_bid
        return out
    out: dict[str, Any] = {"id": rid, "cur": cur, "seatbid": [{"seat": seat, "bid": bids}]}
    if no_bid:
        out["ext"] = {"bta": {"no_bid": no_bid}}
    return out


def _not_decided(imps: list) -> list[dict[str, Any]]:
    """The ``no_bid`` entries of impressions past ``max_imps``: their ids only, read cheaply."""
    return [{"impid": _id(imp.get("id")) if isinstance(imp, Mapping) else None,
             "reason": _TOO_MANY} for imp in imps]


def user_data(book: Any, user_id: Any, *, segtax: int | None = None, provider: str = "bta",
              segment_ids: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """The user's activatable segments as OpenRTB 2.6 ``user.data`` objects.

    A thin wrapper of :meth:`SegmentBook.to_openrtb` (segments below the minimum audience are
    never exported).

    Parameters
    ----------
    book : SegmentBook
    user_id : str or int
    segtax : int, optional
        Taxonomy of the segment ids in ``ext.segtax`` (e.g. 4: IAB Audience Taxonomy 1.1).
    provider : str, default "bta"
        ``data.id`` and ``data.name``.
    segment_ids : mapping of str to str, optional
        Segment name -> taxonomy id (default: the name).

    Returns
    -------
    list of dict
        ``[{"id", "name", "segment": [{"id", "name"}, ...], "ext": {"segtax"}}]``, or ``[]``.
    """
    return book.to_openrtb(user_id, provider=provider, segtax=segtax, segment_ids=segment_ids,
                           activatable_only=True)
