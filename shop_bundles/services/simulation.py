"""Replay held-out order history as shopper sessions through the real storefront (``simulate_shoppers``).

Every request goes through Django's test ``Client`` into the real URLconf,
middleware (database sessions, CSRF, messages), views, session cart, pricing
and ``order_place``; nothing is priced here. Per household (a shopper,
identity ``cj-<household>`` so assignment is the real ``selectors.experiment``
hash) and per basket, in time order:

1. choose the basket's store on the storefront's store page (POST
   ``/store/``, when it differs from the last one), as a shopper of a chain
   with stores does, so the product pages show the offers with the highest
   attach rate in that store; then open the product page of every product in
   the real basket (records the impressions; holdout shoppers get no offer
   block);
2. for each offer shown: accept it (POST "add bundle to cart") when the real
   basket holds all its products, otherwise with probability
   ``take(d)`` of ``bundling_ml.economics`` (department slope fitted from the
   imported lines, anchored at ``SHOP_BUNDLES_BASE_TAKE_RATE``; ``d`` = the
   offer's saving / regular price) drawn from a ``numpy`` RNG seeded with
   ``(seed, customer id, basket id)``, so a basket's draws do not depend on
   which other baskets are replayed, in which process, or on a resumed run;
3. add the rest of the basket's units (POST add-to-cart) and check out with
   the household id and the basket's replay checkout token (POST checkout).
   A checkout the storefront refuses is
   counted with the storefront's own message (``failure_reasons``) and the
   cart is emptied through the cart form, so the next basket starts clean.

Each source basket is placed at most once (idempotent replay): its checkout
posts the deterministic token :func:`replay_checkout_token` (SHA-256 of
:data:`REPLAY_TOKEN_NAMESPACE` and the source basket's id, the imported
order's ``external_id``), which ``order_place`` stores in the unique
``Order.checkout_token``. The run's identity is the replay data set, the
simulated orders since the last ``--reset``: neither the seed nor the window
is part of the token, so a re-run, a retry after a crash or a second replay
started at the same time places no basket twice, whatever its options;
``--reset`` deletes the simulated orders and so frees the tokens. Before
browsing, baskets whose token already placed an order are left out
(``already_replayed``; an order whose marking as simulated was interrupted
is marked then, ``orders_marked_late``); a checkout that a concurrent
replay placed first is refused by the storefront's token check and counted
in ``already_placed``, not as a failure. Replays from before the token
(simulated orders without one) keep the older rule: a household with such
an order in the window counts as replayed whole.

Afterwards the order is marked ``source="simulated"`` and dated at the real
basket's time, and, once the household is done and the impression buffer
drained (``services.impression_buffer``: the product pages RPUSH their
impressions to Redis), the session's offer events are marked ``simulated=True``
and re-dated basket by basket; the replay drains once more at its end, so replay figures never mix with live ones and never feed
training (``ml_bridge`` excludes them).

Assumptions and what is *not* replayed as in a real shop: campaigns live
*now* are the ones offered (the replay does not time-travel campaign
windows); inventory is simulated: before the replay, every product the
replay can sell is topped up once to the most units it can sell plus 2 (one
statement per 1,000 products; ``_stock_needed``: per basket, its own units
or, if more, the units of every bundle it may be shown, since the take model
may accept any of them), so stock never sells out and never auto-pauses a
campaign mid-replay, while the storefront still checks it on every checkout;
products that are not for sale now (inactive, or priced 0.00 such as the
coupon lines of the Complete Journey data) are left out of the baskets (a
basket left empty is not replayed).

Speed (the nine-week replay is ~26,600 baskets, ~257,000 product pages): the
baskets and their products are read once up front; the replay's sessions
are kept in a process-local cache (``SESSION_ENGINE`` ``cache`` on a
dedicated ``LocMemCache``, for the replay only) instead of a SELECT and an
UPDATE of ``django_session`` on every request: a real shop's session store
is a deployment choice, and the views, middleware and session cart are the
same code; the replay's own database connection runs with ``synchronous_commit = off`` (session setting
of that connection only: the replay's commits — sessions, carts, orders —
do not wait for the WAL flush; the replay writes only simulated, re-runnable
data, and a server crash loses at most the last few hundred ms of it, never
corrupts anything); the order is found from the checkout's redirect, not by
a query; the experiment group is computed once per household.
"""
from __future__ import annotations

import hashlib
import re
import time as _time
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from html import unescape

import numpy as np
from django.conf import settings
from django.db import connection, connections
from django.db.models import Q
from django.test import Client, override_settings
from django.urls import Resolver404, resolve, reverse
from django.utils import timezone

from .. import app_settings
from ..models import BundleCampaign, BundleCampaignItem, OfferEvent, Order, OrderLine, Product
from ..selectors.experiment import HOLDOUT, SHOPPER_SESSION_KEY, assignment_group
from ..selectors.offers import live_offer
from ..storefront.cart import SESSION_KEY as CART_SESSION_KEY
from .impression_buffer import impression_buffer_drain

OFFER_RE = re.compile(r'data-campaign="(\d+)"')
ERROR_RE = re.compile(r'<li class="msg msg-error">(.*?)</li>', re.S)
DIGITS_RE = re.compile(r"\d+")
TOP_UP_BATCH = 1000
#: Namespace of the replay's checkout tokens (``replay_checkout_token``): the identity of the replay data set.
REPLAY_TOKEN_NAMESPACE = "shop_bundles.simulate_shoppers"
REPLAY_CACHE_ALIAS = "shop_bundles_replay"
# The replay's sessions live in a process-local cache instead of the django_session table (see the module
# docstring); the storefront's views, middleware and cart code are the same.
REPLAY_SESSION_SETTINGS = {
    "SESSION_ENGINE": "django.contrib.sessions.backends.cache",
    "SESSION_CACHE_ALIAS": REPLAY_CACHE_ALIAS,
}


@dataclass
class SimulationReport:
    """Counts of one replay run.

    ``failure_reasons`` maps the storefront's refusal message (numbers replaced
    by ``N``) to how many checkouts it refused; ``skipped_baskets`` counts
    baskets left with no active product; ``seconds`` is the replay's wall time
    (loading, stock top-up and requests; not the take-model fit);
    ``households_not_started`` the households left for a later run by ``stop_after``;
    ``cpu_seconds`` the CPU time of the replaying processes (Python side, not the database server);
    ``request_seconds`` sums the wall time of the requests by kind (``product_page``, ``bundle_add``,
    ``cart_add``, ``checkout``) in all processes.
    ``already_replayed`` counts baskets an earlier run placed (left out before browsing);
    ``already_placed`` baskets whose checkout found its token used by a run working at the same time
    (``orders + failed_checkouts + already_placed == baskets``); ``orders_marked_late`` orders an
    interrupted run placed but did not mark as simulated, marked by this run.
    """

    shoppers: int = 0
    baskets: int = 0
    orders: int = 0
    page_views: int = 0
    requests: int = 0
    offers_seen: int = 0
    bundles_accepted: int = 0
    accepted_by_basket: int = 0
    accepted_by_take_model: int = 0
    failed_checkouts: int = 0
    failure_reasons: dict = field(default_factory=dict)
    skipped_baskets: int = 0
    already_replayed: int = 0
    already_placed: int = 0
    orders_marked_late: int = 0
    households_not_started: int = 0
    cpu_seconds: float = 0.0
    groups: dict = field(default_factory=lambda: {"treatment": 0, "holdout": 0})
    request_seconds: dict = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        """Plain dict of the counts."""
        return dict(self.__dict__)


def replay_checkout_token(source_basket: str) -> str:
    """The replay's checkout token of a source basket: 32 hex digits, the same on every run.

    ``sha256("<REPLAY_TOKEN_NAMESPACE>:<source basket id>")``, first 32 hex
    digits (the checkout form's token format). ``source_basket`` is the
    imported order's ``external_id`` (the basket id of the source data).
    """
    return hashlib.sha256(f"{REPLAY_TOKEN_NAMESPACE}:{source_basket}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class _Basket:
    order_id: int
    placed_at: datetime
    lines: tuple[tuple[int, str, int], ...]  # (product id, sku, quantity), products for sale only
    store_id: str = ""
    token: str = ""  # replay_checkout_token of the source basket


def _aware(day: date, *, end: bool = False) -> datetime:
    return timezone.make_aware(datetime.combine(day + timedelta(days=1) if end else day, time.min))


def _placed_tokens(tokens: list[str], chunk: int = 10_000) -> dict[str, tuple[int, str]]:
    """``{token: (order id, source)}`` of the orders already placed with these checkout tokens."""
    placed: dict[str, tuple[int, str]] = {}
    for start in range(0, len(tokens), chunk):
        placed.update((t, (pk, src)) for t, pk, src in Order.objects.filter(
            checkout_token__in=tokens[start:start + chunk]).values_list("checkout_token", "pk", "source"))
    return placed


def _mark_late(order_id: int, placed_at: datetime) -> int:
    """Mark an order a replay placed but did not mark (interrupted) as simulated, dated at its basket's time,
    with its purchase events. Returns 1 when it was still unmarked."""
    changed = Order.objects.filter(pk=order_id).exclude(source=Order.SOURCE_SIMULATED).update(
        source=Order.SOURCE_SIMULATED, placed_at=placed_at)
    OfferEvent.objects.filter(order_id=order_id, simulated=False).update(simulated=True, created_at=placed_at)
    return changed


def _load(date_from: date, date_to: date, limit: int | None):
    """Households in order with their baskets still to replay, read in five queries.

    A basket is already replayed when an order carries its replay checkout
    token (:func:`replay_checkout_token`): re-running the command continues
    with the baskets an earlier run did not place (``--stop-after`` stops
    between households, so a stopped run leaves whole households; a household
    an interrupted run left half done is continued in a new session). An
    order placed with the token but not yet marked simulated (the run stopped
    between the checkout and the marking) is marked here. A household with a
    simulated order without a token in the window (a replay from before the
    tokens) counts as replayed whole, as it did then.

    Returns ``([(customer_id, external_id, [_Basket])], skipped_baskets, already_replayed, marked_late)``.
    """
    orders = Order.objects.filter(source=Order.SOURCE_IMPORT, customer__isnull=False,
                                  placed_at__gte=_aware(date_from), placed_at__lt=_aware(date_to, end=True))
    customers = list(orders.order_by("customer__external_id").values_list("customer_id", "customer__external_id")
                     .distinct())
    if limit is not None:
        customers = customers[:limit]
    wanted = {cid for cid, _ in customers}
    done = set(Order.objects.filter(source=Order.SOURCE_SIMULATED, customer_id__in=wanted, checkout_token__isnull=True,
                                    placed_at__gte=_aware(date_from), placed_at__lt=_aware(date_to, end=True))
               .values_list("customer_id", flat=True).distinct())
    rows = [(pk, cid, placed_at, store, replay_checkout_token(ext)) for pk, cid, placed_at, store, ext in
            orders.filter(customer_id__in=wanted).order_by("placed_at", "pk")
            .values_list("pk", "customer_id", "placed_at", "store_id", "external_id")]
    placed = _placed_tokens([r[4] for r in rows if r[1] not in done])
    marked_late = sum(_mark_late(placed[r[4]][0], r[2]) for r in rows
                      if r[4] in placed and placed[r[4]][1] != Order.SOURCE_SIMULATED)
    already = sum(1 for r in rows if r[1] in done or r[4] in placed)
    rows = [r for r in rows if r[1] not in done and r[4] not in placed]
    lines: dict[int, list[tuple[int, str, int]]] = {}
    line_rows = (OrderLine.objects.filter(order_id__in=[r[0] for r in rows], quantity__gt=0, product__active=True,
                                          product__price__gt=0)
                 .order_by("order_id", "pk").values_list("order_id", "product_id", "product__sku", "quantity"))
    for order_id, pid, sku, qty in line_rows.iterator(chunk_size=20000):
        lines.setdefault(order_id, []).append((pid, sku, qty))
    per_customer: dict[int, list[_Basket]] = {cid: [] for cid in wanted}
    skipped = 0
    for pk, cid, placed_at, store_id, token in rows:
        if pk in lines:
            per_customer[cid].append(_Basket(order_id=pk, placed_at=placed_at, lines=tuple(lines[pk]),
                                             store_id=store_id, token=token))
        else:
            skipped += 1
    households = [(cid, ext, per_customer[cid]) for cid, ext in customers
                  if cid not in done and per_customer[cid]]
    return households, skipped, already, marked_late


def _stock_needed(households, *, holdout_share: float | None = None) -> Counter:
    """The most units of each product the replay of ``households`` can sell: ``{product_id: units}``.

    A basket's cart holds, per product, its own units or, when bundles were
    added, the bundles' units if more (the replay adds only the rest of a
    line after the bundles: ``max(own, added)``). Which bundles are taken
    depends on the take-model draws, so every bundle the basket may be shown
    counts as taken: the campaigns that are active now, in their window and
    with no inactive product, holding any product of the basket (the product
    pages show those, ``offers_for_product``). Holdout households are shown
    none. Per basket and product: ``max(own units, sum of those bundles'
    units)``, summed over baskets. An upper bound, so the replay never runs
    out of stock; exact when every bundle shown is taken.

    Args:
        households: ``_load``'s ``[(customer_id, external_id, [_Basket])]``.
        holdout_share: the experiment's holdout share (None: ``SHOP_BUNDLES_HOLDOUT_SHARE``).

    Returns:
        Counter ``{product_id: units}``.
    """
    now = timezone.now()
    campaigns = (BundleCampaign.objects.filter(status=BundleCampaign.ACTIVE, starts_at__lte=now)
                 .filter(Q(ends_at__isnull=True) | Q(ends_at__gt=now))
                 .exclude(items__product__active=False))
    units: dict[int, Counter] = {}
    by_product: dict[int, list[int]] = {}
    for cid, pid, qty in (BundleCampaignItem.objects.filter(campaign__in=campaigns)
                          .values_list("campaign_id", "product_id", "quantity")):
        units.setdefault(cid, Counter())[pid] += qty
    for cid, items in units.items():
        for pid in items:
            by_product.setdefault(pid, []).append(cid)
    needed: Counter = Counter()
    for _customer_id, external_id, baskets in households:
        shown_offers = assignment_group(f"cj-{external_id}", holdout_share=holdout_share) != HOLDOUT
        for basket in baskets:
            own: Counter = Counter()
            for pid, _sku, qty in basket.lines:
                own[pid] += qty
            bundles: Counter = Counter()
            if shown_offers:
                for cid in {c for pid in own for c in by_product.get(pid, ())}:
                    bundles.update(units[cid])
            for pid in own.keys() | bundles.keys():
                needed[pid] += max(own[pid], bundles[pid])
    return needed


def _top_up_stock(needed: Counter) -> None:
    """Simulated inventory: raise each product's stock to the units the replay can sell (``_stock_needed``), plus 2.

    PostgreSQL: one ``UPDATE ... FROM (VALUES ...)`` per 1,000 products; other databases: one UPDATE per product.
    """
    ids = sorted(needed)
    if connection.vendor != "postgresql":
        for pid in ids:
            Product.objects.filter(pk=pid, stock__lt=needed[pid] + 2).update(stock=needed[pid] + 2)
        return
    table = connection.ops.quote_name(Product._meta.db_table)
    for start in range(0, len(ids), TOP_UP_BATCH):
        batch = ids[start:start + TOP_UP_BATCH]
        values = ", ".join(["(%s::bigint, %s::integer)"] * len(batch))
        params = [x for pid in batch for x in (pid, needed[pid] + 2)]
        with connection.cursor() as cursor:
            cursor.execute(f"UPDATE {table} AS p SET stock = v.need FROM (VALUES {values}) AS v(id, need) "
                           f"WHERE p.id = v.id AND p.stock < v.need", params)


def _failure_reason(client: Client) -> str:
    """The storefront's error message after a refused checkout (read from the cart page), digits as N."""
    page = client.get(reverse("shop_bundles:cart")).content.decode()
    found = [unescape(m.strip()) for m in ERROR_RE.findall(page)]
    return DIGITS_RE.sub("N", found[0]) if found else "no message"


def simulation_reset() -> dict:
    """Delete everything an earlier replay wrote: simulated orders (with their lines, order and offer events)
    and simulated offer events. Live storefront data is not touched.

    Returns:
        ``{"orders": int, "offer_events": int}`` deleted.
    """
    events = OfferEvent.objects.filter(simulated=True).delete()[0]
    orders = Order.objects.filter(source=Order.SOURCE_SIMULATED)
    deleted = orders.count()
    orders.delete()
    return {"orders": deleted, "offer_events": events}


class _Replayer:
    """One process's replay state: take responses, the RNG seed, and a cache of the offers' items and depth."""

    def __init__(self, *, seed: int, responses: dict, base: float, stop_at: float | None = None):
        self.seed, self.responses, self.base, self.stop_at = seed, responses, base, stop_at
        self.offers: dict[int, tuple[dict[int, int], float, str] | None] = {}
        self.product_url = reverse("shop_bundles:product_detail", kwargs={"sku": "SKU"}).replace("SKU", "{}")
        self.store_url = reverse("shop_bundles:store_choose")
        self.cart_add_url = reverse("shop_bundles:cart_add", kwargs={"sku": "SKU"}).replace("SKU", "{}")
        self.checkout_url = reverse("shop_bundles:checkout")
        self.cart_update_url = reverse("shop_bundles:cart_update")

    def _offer(self, cid: int):
        """``({product id: units per bundle}, saving / regular price, first item's department)`` or None."""
        if cid not in self.offers:
            offer = live_offer(cid)
            self.offers[cid] = None if offer is None else (
                {i.product.pk: i.quantity for i in offer.items},
                float(offer.saving / offer.regular_total) if offer.regular_total else 0.0,
                offer.items[0].product.department)
        return self.offers[cid]

    def household(self, household) -> SimulationReport:
        """Replay one household's baskets in time order; returns its counts."""
        from bundling_ml.economics import response_for

        customer_id, external_id, baskets = household
        report = SimulationReport()
        if self.stop_at is not None and _time.time() >= self.stop_at:
            report.households_not_started = 1
            return report
        cpu_started = _time.process_time()
        reasons: Counter = Counter()
        identity = f"cj-{external_id}"
        client = Client()
        session = client.session
        session[SHOPPER_SESSION_KEY] = identity
        session.save()
        client.cookies[settings.SESSION_COOKIE_NAME] = session.session_key
        report.shoppers += 1
        report.groups[assignment_group(identity)] += 1
        spent: Counter = Counter()
        clock = _time.perf_counter
        marks: list[tuple[str, datetime, datetime, datetime, int | None]] = []
        store = ""
        for basket in baskets:
            report.baskets += 1
            started = timezone.now()
            if basket.store_id != store:
                t0 = clock()
                client.post(self.store_url, {"store": basket.store_id})
                spent["store_choose"] += clock() - t0
                report.requests += 1
                store = basket.store_id
            rng = np.random.default_rng([self.seed, int(customer_id), basket.order_id])
            in_basket = {pid for pid, _, _ in basket.lines}
            accepted: set[int] = set()
            added: Counter = Counter()
            for _pid, sku, _qty in basket.lines:
                t0 = clock()
                response = client.get(self.product_url.format(sku))
                spent["product_page"] += clock() - t0
                report.page_views += 1
                report.requests += 1
                for cid in dict.fromkeys(int(c) for c in OFFER_RE.findall(response.content.decode())):
                    report.offers_seen += 1
                    info = None if cid in accepted else self._offer(cid)
                    if info is None:
                        continue
                    items, depth, department = info
                    if items.keys() <= in_basket:
                        take, why = True, "basket"
                    else:
                        take = bool(rng.random() < response_for(self.responses, department).take(depth, self.base))
                        why = "model"
                    if not take:
                        continue
                    t0 = clock()
                    client.post(reverse("shop_bundles:bundle_add", kwargs={"campaign_id": cid}), {"quantity": 1})
                    spent["bundle_add"] += clock() - t0
                    report.requests += 1
                    accepted.add(cid)
                    added.update(items)
                    report.bundles_accepted += 1
                    if why == "basket":
                        report.accepted_by_basket += 1
                    else:
                        report.accepted_by_take_model += 1
            for pid, sku, qty in basket.lines:
                rest = qty - added[pid]
                if rest > 0:
                    t0 = clock()
                    client.post(self.cart_add_url.format(sku), {"quantity": min(rest, 99)})
                    spent["cart_add"] += clock() - t0
                    report.requests += 1
            t0 = clock()
            response = client.post(self.checkout_url, {"customer_id": external_id, "checkout_token": basket.token})
            spent["checkout"] += clock() - t0
            report.requests += 1
            placed_pk = None
            if response.status_code == 302:
                try:
                    match = resolve(response["Location"])
                except Resolver404:
                    match = None
                if match is not None and match.url_name == "order_detail":
                    placed_pk = int(match.kwargs["pk"])
            if placed_pk is None:
                earlier = Order.objects.filter(checkout_token=basket.token).values_list("pk", flat=True).first()
                if earlier is not None:  # a replay running at the same time placed this basket first
                    report.already_placed += 1
                    _failure_reason(client)  # reads (and so clears) the storefront's message
                    _mark_late(earlier, basket.placed_at)
                else:
                    report.failed_checkouts += 1
                    reasons[_failure_reason(client)] += 1
                in_cart = client.session.get(CART_SESSION_KEY) or {}
                client.post(self.cart_update_url, {f"qty_{pid}": 0 for pid in in_cart})  # next basket starts clean
                report.requests += 2
                # The visit's page views are marked simulated like a refused checkout's (never deleted: the
                # impression buffer's drain would store a deleted impression again).
                marks.append((client.cookies[settings.SESSION_COOKIE_NAME].value, started, timezone.now(),
                              basket.placed_at, None))
                continue
            session_key = client.cookies[settings.SESSION_COOKIE_NAME].value
            Order.objects.filter(pk=placed_pk).update(source=Order.SOURCE_SIMULATED, placed_at=basket.placed_at)
            marks.append((session_key, started, timezone.now(), basket.placed_at, placed_pk))
            report.orders += 1
        _mark_simulated(marks)
        client.session.delete()  # the household is done: free its session
        report.failure_reasons = dict(reasons)
        report.request_seconds = dict(spent)
        report.cpu_seconds = _time.process_time() - cpu_started
        return report


def _mark_simulated(marks) -> None:
    """Mark a household's offer events as simulated and date them at their real basket's time.

    The product pages buffer their impressions in Redis
    (``services.impression_buffer``), so the buffer is drained first
    (synchronously, in this process): then every impression of the household
    is a row. ``marks`` holds per basket ``(session key, started, ended,
    basket time, order id or None)``; a basket's events are the session's
    events created in ``[started, ended)`` and the order's purchase events.
    """
    if not marks:
        return
    impression_buffer_drain()
    for session_key, started, ended, placed_at, order_id in marks:
        which = Q(session_key=session_key, created_at__gte=started, created_at__lt=ended)
        if order_id is not None:
            which |= Q(order_id=order_id)
        OfferEvent.objects.filter(which).update(simulated=True, created_at=placed_at)


def _merge(total: SimulationReport, part: SimulationReport) -> None:
    for key, value in part.__dict__.items():
        if key == "failure_reasons":
            for reason, n in value.items():
                total.failure_reasons[reason] = total.failure_reasons.get(reason, 0) + n
        elif key in ("groups", "request_seconds"):
            into = getattr(total, key)
            for name, n in value.items():
                into[name] = into.get(name, 0) + n
        elif key not in ("seconds", "cpu_seconds"):
            setattr(total, key, getattr(total, key) + value)
    total.cpu_seconds += part.cpu_seconds


def _durability_off() -> None:
    """``SET synchronous_commit TO off`` on this process's replay connection (see the module docstring)."""
    if connection.vendor == "postgresql" and not connection.in_atomic_block:
        connection.ensure_connection()
        with connection.cursor() as cursor:
            cursor.execute("SET synchronous_commit TO off")


_worker: _Replayer | None = None


def _worker_init(seed: int, responses: dict, base: float, stop_at: float | None) -> None:
    global _worker
    _worker = _Replayer(seed=seed, responses=responses, base=base, stop_at=stop_at)
    _durability_off()


def _worker_household(household) -> SimulationReport:
    return _worker.household(household)


def shoppers_simulate(*, date_from: date, date_to: date, limit: int | None = None, seed: int = 0,
                      progress: bool = False, responses: dict | None = None, workers: int = 1,
                      stop_after: float | None = None) -> SimulationReport:
    """Replay the imported baskets placed from ``date_from`` to ``date_to`` (inclusive) as shopper sessions.

    Args:
        date_from, date_to: local dates bounding ``Order.placed_at`` of imported orders with a customer.
        limit: replay at most this many households (shoppers), in household-id order.
        seed: seed of the RNG drawing take-model acceptances (combined with each customer's and
            basket's id, so the result does not depend on ``workers`` or on resuming).
        progress: show a tqdm bar (baskets) on stderr.
        responses: department take responses (default: ``services.economics.department_responses_fit()``).
        workers: processes replaying households in parallel (forked, each with its own database
            connection and test client; 1 = in this process). Households are independent: each has
            its own session and RNG, and stock is topped up for all of them before the replay.
        stop_after: seconds after which no new household is started (the ones under way finish);
            the rest are counted in ``households_not_started`` and a later run replays them.

    Returns:
        ``SimulationReport``; ``orders + failed_checkouts + already_placed == baskets``.

    Raises:
        ValueError: ``workers`` < 1, ``limit`` < 1 (None replays every household), ``seed`` < 0 or
            ``stop_after`` < 0, before anything is read.
    """
    from .economics import department_responses_fit

    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 (None = every household), got {limit}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if stop_after is not None and not stop_after >= 0:
        raise ValueError(f"stop_after must be >= 0 seconds, got {stop_after}")
    responses = department_responses_fit() if responses is None else responses
    started_at = _time.perf_counter()
    base = float(app_settings.get("BASE_TAKE_RATE"))
    households, skipped, already, marked_late = _load(date_from, date_to, limit)
    _top_up_stock(_stock_needed(households))

    caches_setting = {**settings.CACHES, REPLAY_CACHE_ALIAS: {
        "BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": REPLAY_CACHE_ALIAS,
        "TIMEOUT": None, "OPTIONS": {"MAX_ENTRIES": 1_000_000}}}
    # The replay checks out as the basket's household (the checkout's customer id), which the storefront
    # accepts only with SHOP_BUNDLES_CHECKOUT_CUSTOMER_FIELD on: on for the replay only (forked workers inherit).
    with override_settings(CACHES=caches_setting, SHOP_BUNDLES_CHECKOUT_CUSTOMER_FIELD=True,
                           **REPLAY_SESSION_SETTINGS):
        stop_at = None if stop_after is None else _time.time() + stop_after
        report = _replay(households, seed=seed, responses=responses, base=base, progress=progress, workers=workers,
                         stop_at=stop_at)
    impression_buffer_drain()  # every impression of the replay is a row before anyone computes results
    report.skipped_baskets = skipped
    report.already_replayed = already
    report.orders_marked_late = marked_late
    report.failure_reasons = dict(sorted(report.failure_reasons.items(), key=lambda kv: -kv[1]))
    report.seconds = round(_time.perf_counter() - started_at, 1)
    report.request_seconds = {k: round(v, 1) for k, v in sorted(report.request_seconds.items())}
    report.cpu_seconds = round(report.cpu_seconds, 1)
    return report


def _replay(households, *, seed: int, responses: dict, base: float, progress: bool, workers: int,
            stop_at: float | None) -> SimulationReport:
    """Run the households in this process or in ``workers`` forked processes; returns the merged counts."""
    report = SimulationReport()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(len(b) for _, _, b in households), desc="simulate_shoppers", unit="basket")
    try:
        if workers == 1:
            replayer = _Replayer(seed=seed, responses=responses, base=base, stop_at=stop_at)
            _durability_off()
            parts = (replayer.household(h) for h in households)
            try:
                for part in parts:
                    _merge(report, part)
                    if bar is not None:
                        bar.update(part.baskets)
            finally:
                if connection.vendor == "postgresql" and connection.connection is not None \
                        and not connection.in_atomic_block:
                    with connection.cursor() as cursor:
                        cursor.execute("RESET synchronous_commit")
        else:
            import multiprocessing

            connections.close_all()  # each forked worker opens its own connection
            ctx = multiprocessing.get_context("fork")
            with ctx.Pool(workers, initializer=_worker_init, initargs=(seed, responses, base, stop_at)) as pool:
                for part in pool.imap_unordered(_worker_household, households, chunksize=2):
                    _merge(report, part)
                    if bar is not None:
                        bar.update(part.baskets)
    finally:
        if bar is not None:
            bar.close()
    return report
