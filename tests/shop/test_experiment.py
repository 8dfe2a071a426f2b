"""Holdout experiment: deterministic assignment, holdout storefront, impressions, intervals, SRM, dashboard, replay."""
import hashlib
import math
from datetime import datetime, timedelta
from io import StringIO
from decimal import Decimal as D

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone
from scipy import stats

from bundling_ml.abtest import (
    Z95,
    difference,
    mean_estimate,
    ratio_estimate,
    relative_uplift,
    sample_ratio_mismatch,
)
from shop_bundles import ml_bridge
from shop_bundles.models import (
    BundleCampaign,
    BundleCampaignItem,
    Customer,
    OfferEvent,
    Order,
    OrderLine,
    Product,
)
from shop_bundles.selectors.experiment import assignment_bucket, assignment_group
from shop_bundles.services.experiment import experiment_results, experiment_results_csv
from shop_bundles.services.impression_buffer import impression_buffer_drain

pytestmark = pytest.mark.django_db


# --- assignment -------------------------------------------------------------------------------

def test_assignment_is_sha256_of_salt_and_identity_and_deterministic():
    digest = hashlib.sha256(b"s1:shopper-42").hexdigest()
    bucket = int(digest[:16], 16) / 2 ** 64
    assert assignment_bucket("shopper-42", salt="s1") == bucket
    expected = "holdout" if bucket < 0.5 else "treatment"
    assert {assignment_group("shopper-42", salt="s1", holdout_share=0.5) for _ in range(5)} == {expected}
    assert assignment_group("shopper-42", salt="s1", holdout_share=0.0) == "treatment"
    assert assignment_group("shopper-42", salt="s1", holdout_share=1.0) == "holdout"


def test_default_share_is_ten_percent_and_salt_reshuffles(settings):
    del settings.SHOP_BUNDLES_HOLDOUT_SHARE  # back to the documented default
    ids = [f"session-{i}" for i in range(20000)]
    groups = [assignment_group(i, salt="a") for i in ids]
    share = groups.count("holdout") / len(ids)
    assert 0.09 < share < 0.11
    other = [assignment_group(i, salt="b") for i in ids]
    assert 0.09 < other.count("holdout") / len(ids) < 0.11
    assert groups != other


# --- storefront ----------------------------------------------------------------------------------

@pytest.fixture
def shop():
    a = Product.objects.create(sku="A", name="Pasta", price=D("20.00"), stock=50, department="GROCERY")
    b = Product.objects.create(sku="B", name="Sauce", price=D("5.00"), stock=50, department="GROCERY")
    campaign = BundleCampaign.objects.create(name="AB", discount_type="percent", discount_value=D("10"),
                                             starts_at=timezone.now() - timedelta(hours=1))
    BundleCampaignItem.objects.create(campaign=campaign, product=a, position=0)
    BundleCampaignItem.objects.create(campaign=campaign, product=b, position=1)
    return a, b, campaign


def _shop_visit(client, a, b):
    page = client.get(reverse("shop_bundles:product_detail", kwargs={"sku": "A"}))
    client.post(reverse("shop_bundles:cart_add", kwargs={"sku": "A"}), {"quantity": 1})
    client.post(reverse("shop_bundles:cart_add", kwargs={"sku": "B"}), {"quantity": 1})
    cart = client.get(reverse("shop_bundles:cart"))
    client.post(reverse("shop_bundles:checkout"), {"customer_id": ""})
    return page, cart


def test_holdout_shopper_sees_no_offer_and_pays_full_price(client, settings, shop):
    settings.SHOP_BUNDLES_HOLDOUT_SHARE = 1.0
    a, b, campaign = shop
    page, cart = _shop_visit(client, a, b)
    assert page.context["offers"] == [] and 'data-campaign=' not in page.content.decode()
    assert cart.context["priced"].discount_total == D("0.00") and cart.context["priced"].total == D("25.00")
    order = Order.objects.get(source=Order.SOURCE_STOREFRONT)
    assert order.experiment_group == "holdout" and order.discount_total == D("0.00") and order.total == D("25.00")
    assert impression_buffer_drain()["inserted"] == 1
    impression = OfferEvent.objects.get(kind="impression")
    assert impression.experiment_group == "holdout" and impression.campaign_id == campaign.pk
    assert client.post(reverse("shop_bundles:bundle_add", kwargs={"campaign_id": campaign.pk})).status_code == 404


def test_treatment_shopper_sees_the_offer_and_gets_the_bundle(client, shop):
    a, b, campaign = shop
    page, cart = _shop_visit(client, a, b)
    assert [o.campaign_id for o in page.context["offers"]] == [campaign.pk]
    assert cart.context["priced"].discount_total == D("2.50")
    order = Order.objects.get(source=Order.SOURCE_STOREFRONT)
    assert order.experiment_group == "treatment" and order.total == D("22.50")
    assert impression_buffer_drain()["inserted"] == 1
    assert OfferEvent.objects.get(kind="impression").experiment_group == "treatment"


def test_impressions_are_one_buffer_message_per_page_view_and_no_database_write(client, shop, impression_buffer):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from shop_bundles.services.impression_buffer import redis_client

    client.get(reverse("shop_bundles:product_detail", kwargs={"sku": "A"}))  # creates the session
    with CaptureQueriesContext(connection) as ctx:
        client.get(reverse("shop_bundles:product_detail", kwargs={"sku": "A"}))
    assert not [q for q in ctx.captured_queries if "shop_bundles_offerevent" in q["sql"]]
    assert redis_client().llen(impression_buffer) == 2
    assert not OfferEvent.objects.exists()
    assert impression_buffer_drain()["inserted"] == 2
    assert OfferEvent.objects.filter(kind="impression").count() == 2


# --- intervals: known answers ------------------------------------------------------------------

def test_mean_interval_known_answer():
    x = [1.0, 2.0, 3.0, 4.0, 5.0]
    e = mean_estimate(x)
    se = math.sqrt(2.5 / 5)  # sample variance 2.5, n = 5
    assert e.value == 3.0 and e.se == pytest.approx(se)
    assert (e.low, e.high) == pytest.approx((3 - 1.959964 * se, 3 + 1.959964 * se), rel=1e-6)
    assert Z95 == pytest.approx(stats.norm.ppf(0.975))


def test_ratio_delta_method_known_answer():
    revenue = [10.0, 0.0, 30.0, 20.0]
    orders = [1.0, 0.0, 2.0, 1.0]
    e = ratio_estimate(revenue, orders)
    # By hand: ybar = 15, xbar = 1, R = 15; s_y^2 = 500/3, s_x^2 = 2/3, s_xy = 30/3 = 10.
    r, sy2, sx2, sxy = 15.0, 500 / 3, 2 / 3, 10.0
    var = (sy2 - 2 * r * sxy + r * r * sx2) / (4 * 1.0 ** 2)
    assert e.value == pytest.approx(15.0) and e.se == pytest.approx(math.sqrt(var))
    assert var == pytest.approx(25 / 6)  # (500/3 - 300 + 150) / 4 = (50/3) / 4
    assert e.high - e.value == pytest.approx(1.959964 * math.sqrt(var), rel=1e-6)


def test_ratio_with_one_visitor_gives_the_value_without_interval():
    """One visitor: AOV is that visitor's revenue / orders, with no interval (as mean_estimate)."""
    e = ratio_estimate([25.0], [2.0])
    assert e.value == 12.5
    assert math.isnan(e.low) and math.isnan(e.high) and math.isnan(e.se)
    one = mean_estimate([25.0])
    assert one.value == 25.0 and math.isnan(one.low)
    assert math.isnan(ratio_estimate([], []).value)
    assert math.isnan(ratio_estimate([10.0], [0.0]).value)  # no orders: no AOV
    with pytest.raises(ValueError, match="num has 2 visitors but den has 1"):
        ratio_estimate([1.0, 2.0], [1.0])


def test_uplift_and_relative_uplift_known_answer():
    t, h = mean_estimate([0, 1, 1, 1]), mean_estimate([0, 0, 1, 1])
    d = difference(t, h)
    assert d.value == pytest.approx(0.25)
    assert d.se == pytest.approx(math.sqrt(t.se ** 2 + h.se ** 2))
    rel = relative_uplift(t, h)
    assert rel.value == pytest.approx(0.5)
    s = math.sqrt((t.se / 0.75) ** 2 + (h.se / 0.5) ** 2)
    assert rel.se == pytest.approx(1.5 * s)
    # the interval is formed for log(t/h) and mapped back (Katz): skewed, never below -100 %
    assert (rel.low, rel.high) == (pytest.approx(1.5 * math.exp(-1.959964 * s) - 1, rel=1e-6),
                                   pytest.approx(1.5 * math.exp(1.959964 * s) - 1, rel=1e-6))
    few = relative_uplift(mean_estimate([0, 0, 0, 0, 0, 0, 0, 0, 0, 1]), mean_estimate([1, 0, 1, 0]))  # 10 % vs 50 %
    assert few.value == pytest.approx(-0.8) and -1 < few.low < few.value < few.high
    negative = relative_uplift(mean_estimate([-1.0, -3.0]), mean_estimate([2.0, 4.0]))  # a negative margin
    assert negative.value == pytest.approx(-5 / 3) and negative.high - negative.value == pytest.approx(
        negative.value - negative.low)  # symmetric on the ratio scale


def test_sample_ratio_mismatch_warns_only_on_drift():
    ok = sample_ratio_mismatch({"treatment": 9030, "holdout": 970}, {"treatment": 0.9, "holdout": 0.1})
    assert ok["mismatch"] is False
    assert ok["p_value"] == pytest.approx(stats.chisquare([9030, 970], [9000, 1000]).pvalue)
    bad = sample_ratio_mismatch({"treatment": 8700, "holdout": 1300}, {"treatment": 0.9, "holdout": 0.1})
    assert bad["mismatch"] is True and bad["p_value"] < 0.001
    assert bad["statistic"] == pytest.approx((300 ** 2) / 9000 + (300 ** 2) / 1000)


# --- results from the tables ---------------------------------------------------------------------

def _visitor(campaign, products, group, session, orders):
    """An impression of ``campaign`` for a session, and its orders [(total, [(product, qty)])]."""
    OfferEvent.objects.create(kind="impression", campaign=campaign, session_key=session, experiment_group=group)
    for k, (total, lines) in enumerate(orders):
        order = Order.objects.create(external_id=f"{session}-{k}", placed_at=timezone.now(),
                                     source=Order.SOURCE_STOREFRONT, session_key=session, experiment_group=group,
                                     total=D(total), subtotal=D(total))
        for product, qty in lines:
            OrderLine.objects.create(order=order, product=product, quantity=qty, unit_price=product.price)


def test_results_per_visitor_with_known_values(settings, shop):
    settings.SHOP_BUNDLES_HOLDOUT_SHARE = 0.5
    a, b, campaign = shop
    _visitor(campaign, (a, b), "treatment", "t1", [("25.00", [(a, 1), (b, 1)])])
    _visitor(campaign, (a, b), "treatment", "t2", [("20.00", [(a, 1)])])
    _visitor(campaign, (a, b), "treatment", "t3", [])
    _visitor(campaign, (a, b), "holdout", "h1", [("5.00", [(b, 1)])])
    _visitor(campaign, (a, b), "holdout", "h2", [])
    res = experiment_results(campaign_id=campaign.pk)
    assert res["visitors"] == {"treatment": 3, "holdout": 2}
    assert res["attach_rate"]["treatment"]["value"] == pytest.approx(1 / 3)
    assert res["attach_rate"]["holdout"]["value"] == 0.0
    assert res["aov"]["treatment"]["value"] == pytest.approx(22.5)
    assert res["revenue_per_visitor"]["treatment"]["value"] == pytest.approx(15.0)
    assert res["revenue_per_visitor"]["uplift"]["value"] == pytest.approx(12.5)
    # margin with the default 30 % margin rate: 0.3 * revenue (no discounts on these lines)
    assert res["margin_per_visitor"]["holdout"]["value"] == pytest.approx(0.75)
    assert res["srm"]["mismatch"] is False
    assert {d["group"] for d in res["daily"]} == {"treatment", "holdout"}
    text = experiment_results_csv([res])
    assert text.splitlines()[0].startswith("data,scope,metric,series,value")
    assert "live,campaign" in text and "revenue_per_visitor,uplift,12.500000" in text


def test_dashboard_page_and_csv_export(client, settings, shop):
    settings.SHOP_BUNDLES_HOLDOUT_SHARE = 0.5
    a, b, campaign = shop
    _visitor(campaign, (a, b), "treatment", "t1", [("25.00", [(a, 1), (b, 1)])])
    _visitor(campaign, (a, b), "holdout", "h1", [("5.00", [(b, 1)])])
    client.force_login(User.objects.create_superuser("boss", "b@example.com", "pw-For-tests-1"))
    index = client.get(reverse("admin:index")).content.decode()
    url = reverse("admin:shop_bundles_experimentdashboard_changelist")
    assert url in index
    page = client.get(url + "?data=live")
    html = page.content.decode()
    assert page.status_code == 200 and "<svg" in html and "daily share of orders holding an offered bundle (%)" in html
    assert "AB (" in html
    assert "SIMULATED" not in html
    csv_response = client.get(url + "?data=live&format=csv")
    assert csv_response["Content-Type"] == "text/csv"
    assert "attach_rate,treatment,1.000000" in csv_response.content.decode()
    # One visitor per group: no interval, said in words; no replay yet: the empty charts say what to run.
    assert "(too few visitors for an interval)" in html
    # AOV like the other metrics: the one visitor's value (25.00 and 5.00, one order each), not "—"
    few = "(too few visitors for an interval)"
    assert (f"<tr><td>AOV</td><td>25.00 {few}</td><td>5.00 {few}</td><td>20.00 {few}</td>"
            f"<td>+400.0% {few}</td></tr>") in html
    simulated = client.get(url + "?data=simulated").content.decode()
    assert "No simulated data yet: run simulate_shoppers." in simulated
    assert "No training curve recorded." not in simulated


def test_a_campaign_table_counts_only_what_happened_while_the_campaign_ran(client, settings, shop):
    """QA: a shopper saw the offer, staff ended the campaign, then the shopper bought both products at shelf
    prices: the ended campaign's table showed 50 % attach, credited by an order placed after its end."""
    from shop_bundles.services.campaigns import campaign_end

    settings.SHOP_BUNDLES_HOLDOUT_SHARE = 0.5
    a, b, campaign = shop
    boss = User.objects.create_superuser("boss", "b@example.com", "pw-For-tests-1")
    _visitor(campaign, (a, b), "treatment", "t1", [])  # saw the offer, bought nothing yet
    _visitor(campaign, (a, b), "holdout", "h1", [])
    campaign_end(campaign=campaign, user=boss)
    order = Order.objects.create(external_id="t1-late", placed_at=timezone.now() + timedelta(seconds=1),
                                 source=Order.SOURCE_STOREFRONT, session_key="t1", experiment_group="treatment",
                                 total=D("25.00"), subtotal=D("25.00"))
    for product in (a, b):
        OrderLine.objects.create(order=order, product=product, quantity=1, unit_price=product.price)
    client.force_login(boss)
    page = client.get(reverse("admin:shop_bundles_experimentdashboard_changelist") + "?data=live")
    overall, table = page.context["tables"][0], page.context["tables"][1]
    campaign.refresh_from_db()
    window = (f"{timezone.localtime(campaign.starts_at):%Y-%m-%d %H:%M} to "
              f"{timezone.localtime(campaign.ends_at):%Y-%m-%d %H:%M}")
    assert table["label"] == f"AB ({window})"
    assert table["rows"][0][:2] == ("attach rate", "0.00% (too few visitors for an interval)")
    # The whole-shop table is not windowed: the visitor did buy both products after seeing the offer.
    assert overall["rows"][0][:2] == ("attach rate", "100.00% (too few visitors for an interval)")


def test_dashboard_drains_the_impression_buffer_before_computing(client, settings, shop):
    """A shopper's page view is still in Redis; the dashboard stores it first, so the visitor is counted."""
    from django.test import Client

    shopper = Client()
    shopper.get(reverse("shop_bundles:product_detail", kwargs={"sku": "A"}))
    assert not OfferEvent.objects.exists()  # buffered, not yet drained
    client.force_login(User.objects.create_superuser("boss", "b@example.com", "pw-For-tests-1"))
    page = client.get(reverse("admin:shop_bundles_experimentdashboard_changelist") + "?data=live")
    assert page.status_code == 200
    assert page.context["overall"]["visitors"] == {"treatment": 1, "holdout": 0}
    assert OfferEvent.objects.get(kind="impression").session_key == shopper.cookies["sessionid"].value


def test_dashboard_still_shows_with_the_impression_buffer_unreachable_and_says_so(client, settings, shop):
    from tests.integration.test_outbox_faults import _free_port

    settings.SHOP_BUNDLES_IMPRESSION_BUFFER_URL = f"redis://127.0.0.1:{_free_port()}/0"  # nobody listens
    client.force_login(User.objects.create_superuser("boss", "b@example.com", "pw-For-tests-1"))
    page = client.get(reverse("admin:shop_bundles_experimentdashboard_changelist") + "?data=live")
    assert page.status_code == 200
    assert [str(m) for m in page.context["messages"]][0].startswith("The impression buffer (Redis) is unreachable")


# --- replay ------------------------------------------------------------------------------------

@pytest.fixture
def history(shop):
    """Imported baskets of 6 households in the held-out window; some hold A + B, some only A."""
    a, b, campaign = shop
    c = Product.objects.create(sku="C", name="Milk", price=D("1.50"), stock=0, department="DAIRY")
    start = timezone.make_aware(datetime(2017, 11, 1, 12))
    n = 0
    for h in range(6):
        customer = Customer.objects.create(external_id=f"hh{h}")
        for k, lines in enumerate([[(a, 1), (b, 1), (c, 2)], [(a, 2)]]):
            n += 1
            order = Order.objects.create(external_id=f"cj{n}", customer=customer, source=Order.SOURCE_IMPORT,
                                         placed_at=start + timedelta(days=7 * k + h), store_id=f"s{(h + k) % 3}")
            for product, qty in lines:
                OrderLine.objects.create(order=order, product=product, quantity=qty, unit_price=product.price)
    Order.objects.create(external_id="old", customer=Customer.objects.get(external_id="hh0"),
                         source=Order.SOURCE_IMPORT, placed_at=start - timedelta(days=60))
    return campaign


def test_simulate_shoppers_replays_baskets_through_the_storefront(settings, history, client):
    settings.SHOP_BUNDLES_HOLDOUT_SHARE = 0.5
    settings.SHOP_BUNDLES_EXPERIMENT_SALT = "replay-test"
    call_command("simulate_shoppers", "--from", "2017-10-30", "--to", "2017-12-31", "--limit", "5",
                 "--no-progress")
    simulated = Order.objects.filter(source=Order.SOURCE_SIMULATED).select_related("customer")
    assert simulated.count() == 10  # 5 households x 2 baskets
    imported = {(o.customer.external_id, o.placed_at) for o in Order.objects.filter(
        source=Order.SOURCE_IMPORT, placed_at__year=2017, placed_at__month__gte=11).select_related("customer")}
    imported_store = {(o.customer.external_id, o.placed_at): o.store_id for o in Order.objects.filter(
        source=Order.SOURCE_IMPORT).select_related("customer")}
    for order in simulated:
        assert (order.customer.external_id, order.placed_at) in imported
        # the replayed shopper chose the basket's store on the store page, and the checkout recorded it
        assert order.store_id == imported_store[(order.customer.external_id, order.placed_at)] != ""
        group = assignment_group(f"cj-{order.customer.external_id}")
        assert order.experiment_group == group
        skus = sorted(order.lines.values_list("product__sku", flat=True))
        if group == "holdout":
            assert order.discount_total == D("0.00")
        elif skus == ["A", "B", "C"]:  # the real basket holds the bundle: accepted
            assert order.discount_total == D("2.50")
    assert not Order.objects.filter(source=Order.SOURCE_STOREFRONT).exists()
    assert OfferEvent.objects.filter(simulated=False).count() == 0
    assert OfferEvent.objects.filter(kind="impression", simulated=True).count() > 0
    frame = ml_bridge.lines_frame()
    assert not set(frame["basket_id"]) & set(simulated.values_list("external_id", flat=True))
    res = experiment_results(simulated=True)
    groups = {assignment_group(f"cj-hh{h}") for h in range(5)}
    assert sum(res["visitors"].values()) == 5 and {g for g, n in res["visitors"].items() if n} == groups
    client.force_login(User.objects.create_superuser("boss", "b@example.com", "pw-For-tests-1"))
    html = client.get(reverse("admin:shop_bundles_experimentdashboard_changelist")).content.decode()
    assert "SIMULATED" in html


def test_simulate_shoppers_says_whether_the_active_model_saw_the_replayed_weeks(settings, history):
    from shop_bundles.models import ModelVersion

    version = ModelVersion.objects.create(label="v-full", artifact_path="/tmp/v-full", is_active=True,
                                          data_end=timezone.make_aware(datetime(2017, 12, 31, 20)))
    out = StringIO()
    call_command("simulate_shoppers", "--from", "2017-10-30", "--to", "2017-12-31", "--limit", "1", "--no-progress",
                 stdout=out)
    assert ("IN-SAMPLE: the active model v-full (and the offers' scores and attach rates) learnt from order lines "
            "up to 2017-12-31, inside the replayed window") in out.getvalue()
    ModelVersion.objects.filter(pk=version.pk).update(data_end=timezone.make_aware(datetime(2017, 10, 29, 22)))
    out = StringIO()
    call_command("simulate_shoppers", "--from", "2017-10-30", "--to", "2017-12-31", "--limit", "1", "--no-progress",
                 stdout=out)
    assert "out of sample: the active model v-full learnt from order lines up to 2017-10-29, before 2017-10-30" \
        in out.getvalue()


def test_simulate_shoppers_resumes_without_replaying_twice_and_reset_starts_over(settings, history):
    from shop_bundles.services.simulation import shoppers_simulate, simulation_reset

    first = shoppers_simulate(date_from=datetime(2017, 10, 30).date(), date_to=datetime(2017, 12, 31).date(),
                              limit=3, responses={})
    assert (first.shoppers, first.baskets, first.orders, first.failed_checkouts) == (3, 6, 6, 0)
    assert first.orders + first.failed_checkouts == first.baskets and first.page_views == 3 * (3 + 1)
    again = shoppers_simulate(date_from=datetime(2017, 10, 30).date(), date_to=datetime(2017, 12, 31).date(),
                              limit=4, responses={})
    assert (again.already_replayed, again.baskets, again.orders) == (6, 2, 2)  # only household 4 is new
    assert Order.objects.filter(source=Order.SOURCE_SIMULATED).count() == 8
    assert simulation_reset()["orders"] == 8
    assert not Order.objects.filter(source=Order.SOURCE_SIMULATED).exists()
    assert not OfferEvent.objects.filter(simulated=True).exists()


def test_simulate_shoppers_counts_a_refused_checkout_with_the_storefront_message(settings, history):
    """A product withdrawn while the first shopper is at the checkout: the storefront refuses, the replay says why."""
    from django.core.signals import request_started

    from shop_bundles.services.simulation import shoppers_simulate

    def withdraw_pasta(sender, environ, **kwargs):
        if environ.get("PATH_INFO") == reverse("shop_bundles:checkout"):
            Product.objects.filter(sku="A").update(active=False)

    request_started.connect(withdraw_pasta)
    try:
        report = shoppers_simulate(date_from=datetime(2017, 10, 30).date(),
                                   date_to=datetime(2017, 12, 31).date(), limit=1, responses={})
    finally:
        request_started.disconnect(withdraw_pasta)
    # Household hh0: basket 1 (A, B, C) is refused at checkout; basket 2 holds only A, now inactive, so it
    # was read before the withdrawal and its checkout is refused too (the cart is empty).
    assert report.baskets == 2 and report.orders == 0 and report.failed_checkouts == 2
    assert report.failure_reasons == {"Pasta is no longer available.": 1, "Your cart is empty.": 1}
    assert not Order.objects.filter(source__in=[Order.SOURCE_SIMULATED, Order.SOURCE_STOREFRONT]).exists()


def test_replay_leaves_out_products_priced_0_00(history):
    """Complete Journey baskets hold coupon lines priced 0.00, which the storefront does not sell: the replay
    leaves those lines out (like inactive products) instead of having the checkout refuse the basket."""
    from shop_bundles.services.simulation import shoppers_simulate

    Product.objects.filter(sku="C").update(price=D("0.00"))
    report = shoppers_simulate(date_from=datetime(2017, 10, 30).date(), date_to=datetime(2017, 12, 31).date(),
                               limit=2, responses={})
    assert (report.baskets, report.orders, report.failed_checkouts) == (4, 4, 0)
    simulated = OrderLine.objects.filter(order__source=Order.SOURCE_SIMULATED)
    assert not simulated.filter(product__sku="C").exists() and simulated.filter(product__sku="A").exists()


def test_simulate_shoppers_stop_after_leaves_households_for_the_next_run(settings, history):
    from shop_bundles.services.simulation import shoppers_simulate

    window = dict(date_from=datetime(2017, 10, 30).date(), date_to=datetime(2017, 12, 31).date())
    stopped = shoppers_simulate(limit=2, responses={}, stop_after=0, **window)
    assert (stopped.households_not_started, stopped.shoppers, stopped.orders) == (2, 0, 0)
    assert not OfferEvent.objects.exists()
    done = shoppers_simulate(limit=2, responses={}, **window)
    assert (done.shoppers, done.orders, done.households_not_started) == (2, 4, 0) and done.cpu_seconds > 0


@pytest.fixture
def take_model_exhausts_stock(shop):
    """Household hh0 buys only Pasta (A) in three baskets, hh1 then buys 5 Sauce (B), both with 1 unit in stock.

    The A + B bundle is shown on both product pages and (take rate 1) accepted each time from the take model,
    so every basket also takes a B the baskets alone never asked for.
    """
    a, b, campaign = shop
    Product.objects.filter(pk__in=[a.pk, b.pk]).update(stock=1)
    start = timezone.make_aware(datetime(2017, 11, 1, 12))
    for h, baskets in enumerate([[[(a, 1)], [(a, 1)], [(a, 1)]], [[(b, 5)]]]):
        customer = Customer.objects.create(external_id=f"hh{h}")
        for k, lines in enumerate(baskets):
            order = Order.objects.create(external_id=f"cj{h}-{k}", customer=customer, source=Order.SOURCE_IMPORT,
                                         placed_at=start + timedelta(days=k, hours=h))
            for product, qty in lines:
                OrderLine.objects.create(order=order, product=product, quantity=qty, unit_price=product.price)
    return a, b, campaign


def test_replay_top_up_reserves_the_units_of_bundles_the_take_model_may_accept(take_model_exhausts_stock):
    """The top-up used to count only the baskets' own units (A: 3 + 2, B: 5 + 2), so the three A + B bundles
    taken by hh0 left 4 Sauce for hh1's 5 and its checkout was refused ("Only 4 of Sauce in stock"). Now each
    basket reserves, per product, max(its own units, the units of every bundle it may be shown):
    A: 3 x max(1, 1) + max(0, 1) = 4, B: 3 x max(0, 1) + max(5, 1) = 8, each + 2."""
    from bundling_ml.economics import TakeResponse
    from shop_bundles.services.simulation import shoppers_simulate

    a, b, campaign = take_model_exhausts_stock
    always = {"*": TakeResponse(a=0.0, b=1000.0)}  # take(d = 0.10) = sigmoid(logit(0.02) + 100) = 1.0
    report = shoppers_simulate(date_from=datetime(2017, 10, 30).date(), date_to=datetime(2017, 12, 31).date(),
                               responses=always)
    assert (report.baskets, report.orders, report.failed_checkouts, report.failure_reasons) == (4, 4, 0, {})
    assert (report.accepted_by_take_model, report.accepted_by_basket) == (4, 0)
    units = {sku: sum(OrderLine.objects.filter(order__source=Order.SOURCE_SIMULATED, product__sku=sku)
                      .values_list("quantity", flat=True)) for sku in "AB"}
    assert units == {"A": 4, "B": 8}
    assert dict(Product.objects.filter(sku__in="AB").values_list("sku", "stock")) == {"A": 2, "B": 2}
    campaign.refresh_from_db()
    assert campaign.status == BundleCampaign.ACTIVE  # nothing sold out, nothing auto-paused
    assert Order.objects.filter(source=Order.SOURCE_SIMULATED, discount_total=D("2.50")).count() == 4


def test_replay_top_up_keeps_stock_a_real_constraint(take_model_exhausts_stock):
    """Holdout shoppers are shown no bundle, so only their baskets' own units are reserved; stock is never
    raised beyond what the replay can sell plus 2."""
    from shop_bundles.services.simulation import _load, _stock_needed

    households, *_ = _load(datetime(2017, 10, 30).date(), datetime(2017, 12, 31).date(), None)
    a, b, _ = take_model_exhausts_stock
    assert _stock_needed(households, holdout_share=0.0) == {a.pk: 4, b.pk: 8}
    assert _stock_needed(households, holdout_share=1.0) == {a.pk: 3, b.pk: 5}


# --- replay idempotency: one checkout token per source basket -------------------------------------------

REPLAY_WINDOW = dict(date_from=datetime(2017, 10, 30).date(), date_to=datetime(2017, 12, 31).date())


def test_replay_checks_out_each_source_basket_with_its_own_token_and_places_it_once(history):
    """Household hh0 holds baskets cj1 and cj2, hh1 cj3 and cj4. The token is sha256 of the namespace and the
    source basket id, so a second run (even with another seed) places nothing, and a run that was interrupted
    (cj3 placed but not marked simulated, cj4 never placed) is continued without placing cj3 twice."""
    from shop_bundles.services.simulation import replay_checkout_token, shoppers_simulate

    token = replay_checkout_token
    assert token("cj1") == hashlib.sha256(b"shop_bundles.simulate_shoppers:cj1").hexdigest()[:32]
    assert token("cj2") == hashlib.sha256(b"shop_bundles.simulate_shoppers:cj2").hexdigest()[:32] != token("cj1")
    first = shoppers_simulate(limit=2, responses={}, **REPLAY_WINDOW)
    assert (first.baskets, first.orders, first.failed_checkouts, first.already_replayed, first.already_placed) == (
        4, 4, 0, 0, 0)
    simulated = Order.objects.filter(source=Order.SOURCE_SIMULATED)
    sources = {token(f"cj{n}"): Order.objects.get(external_id=f"cj{n}") for n in range(1, 5)}
    assert set(simulated.values_list("checkout_token", flat=True)) == set(sources)
    for order in simulated:  # each order is its source basket's: same household, same time
        assert (order.customer_id, order.placed_at) == (sources[order.checkout_token].customer_id,
                                                        sources[order.checkout_token].placed_at)

    again = shoppers_simulate(limit=2, responses={}, seed=7, **REPLAY_WINDOW)
    assert (again.shoppers, again.baskets, again.orders, again.already_replayed) == (0, 0, 0, 4)
    assert simulated.count() == 4

    Order.objects.get(checkout_token=token("cj4")).delete()
    Order.objects.filter(checkout_token=token("cj3")).update(source=Order.SOURCE_STOREFRONT, placed_at=timezone.now())
    resumed = shoppers_simulate(limit=2, responses={}, **REPLAY_WINDOW)
    assert (resumed.shoppers, resumed.baskets, resumed.orders, resumed.already_replayed,
            resumed.orders_marked_late) == (1, 1, 1, 3, 1)
    assert simulated.count() == 4 and not Order.objects.filter(source=Order.SOURCE_STOREFRONT).exists()
    assert Order.objects.get(checkout_token=token("cj3")).placed_at == sources[token("cj3")].placed_at
    assert Order.objects.get(checkout_token=token("cj4")).customer.external_id == "hh1"


def test_replay_before_tokens_still_counts_its_households_as_replayed(history):
    """A simulated order without a token (a replay from before the tokens) keeps its household out, as then."""
    from shop_bundles.services.simulation import shoppers_simulate

    Order.objects.create(external_id="web-legacy", customer=Customer.objects.get(external_id="hh0"),
                         source=Order.SOURCE_SIMULATED, placed_at=timezone.make_aware(datetime(2017, 11, 1, 12)))
    report = shoppers_simulate(limit=2, responses={}, **REPLAY_WINDOW)
    assert (report.shoppers, report.orders, report.already_replayed) == (1, 2, 2)
    assert set(Order.objects.filter(source=Order.SOURCE_SIMULATED).values_list("customer__external_id", flat=True)) \
        == {"hh0", "hh1"}


def test_a_basket_another_replay_placed_first_is_placed_once_and_not_counted_as_a_failure(settings, history):
    """Two replays at once: when this one checks out cj1, the other has just placed it with the same token. The
    storefront refuses the second order; the replay counts the basket in already_placed (not a failed checkout)
    and marks the other run's order simulated; its own page views of cj1 are marked simulated, as a refused
    checkout's are."""
    from django.core.signals import request_started

    from shop_bundles.services.orders import order_place
    from shop_bundles.services.simulation import replay_checkout_token, shoppers_simulate

    settings.SHOP_BUNDLES_HOLDOUT_SHARE = 0.0
    token = replay_checkout_token("cj1")
    pasta = Product.objects.get(sku="A")

    def other_replay_checks_out_first(sender, environ, **kwargs):
        if environ.get("PATH_INFO") == reverse("shop_bundles:checkout") and \
                not Order.objects.filter(checkout_token=token).exists():
            order_place(cart={pasta.pk: 1}, session_key="other-replay", checkout_token=token)

    request_started.connect(other_replay_checks_out_first)
    try:
        report = shoppers_simulate(limit=1, responses={}, **REPLAY_WINDOW)
    finally:
        request_started.disconnect(other_replay_checks_out_first)
    assert (report.baskets, report.orders, report.failed_checkouts, report.already_placed, report.failure_reasons) \
        == (2, 1, 0, 1, {})
    assert report.orders + report.failed_checkouts + report.already_placed == report.baskets
    placed = Order.objects.get(checkout_token=token)
    cj1, cj2 = Order.objects.get(external_id="cj1"), Order.objects.get(external_id="cj2")
    assert (placed.session_key, placed.source, placed.placed_at) == ("other-replay", Order.SOURCE_SIMULATED,
                                                                     cj1.placed_at)
    assert Order.objects.filter(source=Order.SOURCE_SIMULATED).count() == 2
    for basket in (cj1, cj2):
        assert OfferEvent.objects.filter(kind="impression", simulated=True, created_at=basket.placed_at).exists()
    assert not OfferEvent.objects.filter(simulated=False).exists()
