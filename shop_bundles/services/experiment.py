"""Results of the holdout experiment, computed from the offer events and orders (cheap, read-only).

Visitors: distinct (session, group) with at least one impression in the
window — treatment impressions are offers shown, holdout impressions are
offers that would have been shown (hidden), so both groups share one
exposure definition ("ghost impressions"). A visitor's outcomes are the
storefront (or simulated) orders of the same session in the window:

* attached: 1 when one of the visitor's orders holds every product of a
  campaign the visitor was exposed to (a bundle in treatment, the same items
  bought at full price in holdout), else 0;
* orders, revenue (``Order.total``) and margin (line amount − units × unit
  cost; unknown cost = unit price × (1 − department default margin rate)).

Metrics, intervals (delta method, 95 %) and the SRM test are in
``bundling_ml.abtest``. Figures from ``simulate_shoppers`` orders are kept
apart (``simulated=True``) and labelled as simulated wherever shown.
"""
from __future__ import annotations

import csv
import io
from collections import defaultdict
from datetime import datetime

import numpy as np
from django.utils import timezone

from .. import app_settings
from ..models import BundleCampaignItem, OfferEvent, Order, OrderLine
from ..selectors.experiment import GROUPS, HOLDOUT, TREATMENT


def _visitors(*, simulated: bool, campaign_id: int | None, since: datetime | None, until: datetime | None):
    """``{(session_key, group): set(campaign ids seen)}`` from impressions (one query)."""
    qs = OfferEvent.objects.filter(kind=OfferEvent.IMPRESSION, simulated=simulated,
                                   experiment_group__in=GROUPS).exclude(session_key="")
    if campaign_id is not None:
        qs = qs.filter(campaign_id=campaign_id)
    if since is not None:
        qs = qs.filter(created_at__gte=since)
    if until is not None:
        qs = qs.filter(created_at__lt=until)
    seen: dict[tuple[str, str], set[int]] = defaultdict(set)
    for session_key, group, cid in qs.order_by().values_list("session_key", "experiment_group", "campaign_id") \
            .distinct().iterator(chunk_size=20000):
        seen[(session_key, group)].add(cid)
    return seen


def _orders(sessions: set[str], *, simulated: bool, since, until):
    """Orders of these sessions: ``{order_id: (session_key, group, total, placed_at)}`` and their lines."""
    source = Order.SOURCE_SIMULATED if simulated else Order.SOURCE_STOREFRONT
    qs = Order.objects.filter(source=source, session_key__in=list(sessions))
    if since is not None:
        qs = qs.filter(placed_at__gte=since)
    if until is not None:
        qs = qs.filter(placed_at__lt=until)
    orders = {pk: (sk, grp, float(total), placed) for pk, sk, grp, total, placed in
              qs.order_by().values_list("pk", "session_key", "experiment_group", "total", "placed_at")}
    lines = defaultdict(list)
    line_qs = OrderLine.objects.filter(order_id__in=list(orders)).order_by().values_list(
        "order_id", "product_id", "quantity", "unit_price", "discount", "product__cost", "product__department")
    rates: dict[str, float] = {}
    for oid, pid, qty, price, disc, cost, dept in line_qs.iterator(chunk_size=20000):
        if cost is None:
            rate = rates.setdefault(dept, app_settings.margin_rate(dept))
            unit_cost = float(price) * (1 - rate)
        else:
            unit_cost = float(cost)
        margin = qty * float(price) - float(disc) - qty * unit_cost
        lines[oid].append((pid, margin))
    return orders, lines


def _campaign_items(campaign_ids) -> dict[int, frozenset[int]]:
    items = defaultdict(set)
    for cid, pid in BundleCampaignItem.objects.filter(campaign_id__in=list(campaign_ids)).values_list(
            "campaign_id", "product_id"):
        items[cid].add(pid)
    return {cid: frozenset(pids) for cid, pids in items.items()}


def experiment_results(*, simulated: bool = False, campaign_id: int | None = None, since: datetime | None = None,
                       until: datetime | None = None) -> dict:
    """Treatment vs holdout for one campaign or overall, with intervals, uplift, SRM and a daily series.

    Args:
        simulated: True reads the ``simulate_shoppers`` replay (orders ``source="simulated"``,
            events ``simulated=True``); False the live storefront.
        campaign_id: restrict visitors to those exposed to this campaign (None: overall).
        since, until: aware datetimes bounding impressions and orders.

    Returns:
        ``bundling_ml.abtest.compare_groups`` output plus ``srm`` (chi-square test
        against SHOP_BUNDLES_HOLDOUT_SHARE), ``holdout_share``, ``simulated``,
        ``campaign_id``, ``method`` (text) and ``daily``: list of ``{"date": "YYYY-MM-DD",
        "group": str, "orders": int, "attached_orders": int, "attach_rate": float, "aov": float}``.
    """
    from bundling_ml.abtest import compare_groups, sample_ratio_mismatch

    seen = _visitors(simulated=simulated, campaign_id=campaign_id, since=since, until=until)
    sessions = {sk for sk, _ in seen}
    orders, lines = _orders(sessions, simulated=simulated, since=since, until=until)
    items = _campaign_items({cid for cids in seen.values() for cid in cids})

    by_visitor = defaultdict(list)
    for oid, (sk, grp, total, placed) in orders.items():
        by_visitor[sk].append(oid)

    per_group = {g: {"attached": [], "orders": [], "revenue": [], "margin": []} for g in GROUPS}
    daily = defaultdict(lambda: [0, 0, 0.0])  # (date, group) -> orders, attached orders, revenue
    for (sk, grp), cids in seen.items():
        bundles = [items[c] for c in cids if c in items]
        attached = 0
        revenue = margin = 0.0
        oids = by_visitor.get(sk, [])
        for oid in oids:
            products = {pid for pid, _ in lines[oid]}
            hit = any(b and b <= products for b in bundles)
            attached = attached or int(hit)
            revenue += orders[oid][2]
            margin += sum(m for _, m in lines[oid])
            entry = daily[(timezone.localtime(orders[oid][3]).date().isoformat(), grp)]
            entry[0] += 1
            entry[1] += int(hit)
            entry[2] += orders[oid][2]
        group = per_group[grp]
        group["attached"].append(attached)
        group["orders"].append(len(oids))
        group["revenue"].append(revenue)
        group["margin"].append(margin)

    share = float(app_settings.get("HOLDOUT_SHARE"))
    result = compare_groups({k: np.asarray(v) for k, v in per_group[TREATMENT].items()},
                            {k: np.asarray(v) for k, v in per_group[HOLDOUT].items()})
    result["srm"] = sample_ratio_mismatch(result["visitors"], {TREATMENT: 1 - share, HOLDOUT: share})
    result.update({
        "holdout_share": share, "simulated": simulated, "campaign_id": campaign_id,
        "method": "95 % normal intervals, delta method (ratio metrics and relative uplift); "
                  "SRM: chi-square goodness of fit, warning at p < 0.001",
        "daily": [{"date": d, "group": g, "orders": n, "attached_orders": a,
                   "attach_rate": a / n if n else 0.0, "aov": rev / n if n else 0.0}
                  for (d, g), (n, a, rev) in sorted(daily.items())],
    })
    return result


def experiment_results_csv(results: list[dict]) -> str:
    """CSV text: one row per (scope, metric, group or uplift) with value, low, high, se.

    Args:
        results: ``experiment_results`` outputs; each may carry a ``"label"`` (campaign name).
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["data", "scope", "metric", "series", "value", "ci95_low", "ci95_high", "se", "visitors"])
    for res in results:
        data = "simulated" if res["simulated"] else "live"
        scope = res.get("label") or ("overall" if res["campaign_id"] is None else f"campaign {res['campaign_id']}")
        for metric in ("attach_rate", "aov", "revenue_per_visitor", "margin_per_visitor"):
            for series in ("treatment", "holdout", "uplift", "relative_uplift"):
                e = res[metric][series]
                visitors = res["visitors"].get(series, "")
                writer.writerow([data, scope, metric, series, *(f"{e[k]:.6f}" for k in ("value", "low", "high",
                                                                                          "se")), visitors])
    return buffer.getvalue()
