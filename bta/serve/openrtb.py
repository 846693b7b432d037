"""OpenRTB 2.6 adapter: a BidRequest in, a BidResponse-like dict out, one decision per impression.

:func:`decide_openrtb` reads what the Engine needs from a bid request:

- ``id``: the request id; each impression's decision gets ``"{id}:{imp.id}"``;
- ``user.id``, else ``user.buyeruid``: the user id (experiment unit and profile key);
- ``user.consent``, else ``user.ext.consent``: the TCF v2 consent string;
- ``regs.gdpr``, else ``regs.ext.gdpr``: GDPR applies (consent is then required); any value
  but an explicit 0 counts as 1;
- ``regs.coppa``: child-directed, never targeted;
- ``regs.us_privacy`` with ``Y`` as third character (opted out of sale), ``device.lmt`` = 1
  (limit ad tracking), ``device.ext.atts`` 1 or 2 (App Tracking Transparency restricted or
  denied): an opt-out;
- ``user.ext.age`` or ``device.ext.age``, else ``user.yob``: the age; from a year of birth the
  youngest the user can be (``year of the decision - yob - 1``);
- ``site.cat``, ``site.content.cat``, ``app.cat``, ``app.content.cat``: content categories,
  passed to the Engine as the ``page_category`` context; ``site.domain`` (else ``site.id``)
  and ``app.bundle`` (else ``app.id``) as ``site`` / ``app``; ``device.geo.country`` as
  ``country``; ``imp[].tagid`` as the ``slot`` of each impression (campaigns can target them:
  ``Campaign(context=...)``);
- ``imp[].bidfloor`` with ``bidfloorcur``: no bid below the floor (compared in the same
  currency only).

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

from bta.serve.engine import Decision, Engine, Request

__all__ = ["decide_openrtb", "user_data", "NBR_UNKNOWN", "NBR_TECHNICAL_ERROR",
           "NBR_INVALID_REQUEST"]

logger = logging.getLogger("bta")

#: OpenRTB no-bid reason codes (List: No-Bid Reason Codes).
NBR_UNKNOWN = 0
NBR_TECHNICAL_ERROR = 1
NBR_INVALID_REQUEST = 2
#: Longest id accepted from a request: ids are log keys, not payloads.
_MAX_ID = 256
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


def _flag(x: Any) -> bool | None:
    """OpenRTB 0/1 integer flag: True, False, or None when absent or unreadable."""
    if isinstance(x, bool):
        return x
    if isinstance(x, (int, float)) and not isinstance(x, bool) and x in (0, 1):
        return bool(x)
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


def _consent(req: Mapping[str, Any], now_ms: int) -> dict[str, Any]:
    """The Engine's consent mapping (see :meth:`PrivacyPolicy.serving_gate`) from the request."""
    user = _obj(req.get("user"))
    regs = _obj(req.get("regs"))
    device = _obj(req.get("device"))
    c: dict[str, Any] = {}
    raw_gdpr = regs.get("gdpr")
    if raw_gdpr is None:
        raw_gdpr = _obj(regs.get("ext")).get("gdpr")
    if raw_gdpr is not None:
        # anything but an explicit 0 means the regulation may apply: fail closed
        c["gdpr"] = 0 if _flag(raw_gdpr) is False else 1
    tcf = user.get("consent")
    if tcf is None:
        tcf = _obj(user.get("ext")).get("consent")
    if tcf is not None:
        # a non-string consent is unreadable: the gate decodes it to no purposes, i.e. no
        # consent, rather than treating it as absent
        c["tcf"] = tcf if isinstance(tcf, str) else ""
    if regs.get("coppa") is not None and _flag(regs.get("coppa")) is not False:
        c["coppa"] = 1  # any value but an explicit 0 fails closed
    usp = regs.get("us_privacy")
    if usp is None:
        usp = _obj(regs.get("ext")).get("us_privacy")
    if isinstance(usp, str) and len(usp) == 4 and usp[2].upper() == "Y":
        c["opt_out"] = True
    if _flag(device.get("lmt")):
        c["opt_out"] = True
    atts = _number(_obj(device.get("ext")).get("atts"))
    if atts in (1.0, 2.0):  # ATT restricted (1) or denied (2)
        c["opt_out"] = True
    age = _number(_obj(user.get("ext")).get("age"))
    if age is None:
        age = _number(_obj(device.get("ext")).get("age"))
    if age is None:
        yob = _number(user.get("yob"))
        if yob is not None:
            year = datetime.fromtimestamp(now_ms / 1000.0, tz=timezone.utc).year
            # born late in yob, the user has not had this year's birthday yet: the youngest
            # possible age, so that the gate errs toward protecting a minor
            age = year - yob - 1
    if age is not None:
        c["age"] = age
    return c


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
                   now_ms: int | None = None) -> dict[str, Any]:
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

    Returns
    -------
    dict
        ``{"id", "cur", "seatbid": [{"seat", "bid": [{"id", "impid", "price", "adid",
        "crid", "cid", "ext": {"bta": {decision fields}}}]}]}``, plus ``ext.bta.no_bid`` for
        impressions not bid on (``{"impid", "reason", ...}``). A request that cannot be read
        gives ``{"id", "seatbid": [], "nbr": 2, "ext": {"bta": {"reason":
        "fallback:bad_request", "detail": ...}}}``; every price below its floor gives ``nbr``
        0 with reason ``"below_floor"``. Never raises.

    Examples
    --------
    >>> decide_openrtb(engine, {"id": "r1", "imp": [{"id": "1"}],
    ...                         "user": {"id": "u42"}})                   # doctest: +SKIP
    {'id': 'r1', 'cur': 'USD', 'seatbid': [{'seat': 'bta', 'bid': [{'id': 'r1:1', ...}]}]}
    """
    try:
        return _decide(engine, bid_request, seat, cur, now_ms)
    except Exception:  # noqa: BLE001 - an exchange must get an answer, never a traceback
        logger.exception("decide_openrtb failed; answering with a no-bid")
        rid = bid_request.get("id") if isinstance(bid_request, Mapping) else None
        return _no_bid(_id(rid), NBR_TECHNICAL_ERROR, "fallback:error", "internal error")


def _decide(engine: Engine, req: Any, seat: str, cur: str, now_ms: int | None
            ) -> dict[str, Any]:
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
    consent = _consent(req, now)
    context = _context(req)
    bids, no_bid = [], []
    seen: set[str] = set()
    for imp in imps:
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
    if not bids:
        invalid = all(n["reason"] == _BAD for n in no_bid)
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
