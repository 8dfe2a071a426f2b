"""Bundle economics in the database: department take-rate fit, suggestion economics and the admin panel."""
from datetime import datetime, timedelta
from decimal import Decimal as D

import numpy as np
import pandas as pd
import pytest
from django.contrib.auth.models import User
from django.urls import reverse
from django.utils import timezone

from bundling_ml.economics import fit_department_responses, optimise_discount, product_week_frame, sigmoid
from shop_bundles.models import BundleSuggestion, BundleSuggestionItem, Order, OrderLine, Product
from shop_bundles.services.economics import (
    bundle_cost,
    department_responses_fit,
    suggestions_economics_fill,
    suggestions_economics_refresh,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def history():
    """40 products x 3 weeks of imported lines in GROCERY: a plain line and a discounted line per product-week.

    The discounted share of units rises with depth: share = sigmoid(-1 + 6 d) (rounded to whole units of 20).
    Returns the equivalent raw lines frame for an independent fit.
    """
    rng = np.random.default_rng(1)
    products = Product.objects.bulk_create([Product(sku=f"P{i}", price=D("2.00"), department="GROCERY", stock=10)
                                            for i in range(40)])
    start = timezone.make_aware(datetime(2017, 1, 2, 10))
    orders, lines, raw = [], [], []
    n = 0
    for p in products:
        for week in range(3):
            depth = float(rng.choice([0.1, 0.2, 0.3, 0.4, 0.5]))
            disc_units = int(round(20 * sigmoid(-1 + 6 * depth)))
            for qty, disc in ((20 - disc_units, 0.0), (disc_units, depth)):
                if qty <= 0:
                    continue
                n += 1
                orders.append(Order(external_id=f"h{n}", placed_at=start + timedelta(weeks=week)))
                amount = D("2.00") * qty * D(str(disc))
                lines.append((n, p, qty, amount.quantize(D("0.01"))))
                raw.append({"department": "GROCERY", "product_id": p.pk, "week": week, "quantity": float(qty),
                            "shelf_amount": 2.0 * qty, "discount": float(amount.quantize(D("0.01")))})
    created = {o.external_id: o for o in Order.objects.bulk_create(orders)}
    OrderLine.objects.bulk_create([OrderLine(order=created[f"h{k}"], product=p, quantity=q, unit_price=D("2.00"),
                                             discount=d) for k, p, q, d in lines])
    return pd.DataFrame(raw)


def test_department_fit_from_the_database_matches_the_pure_fit(history):
    responses = department_responses_fit()
    expected = fit_department_responses(product_week_frame(history))
    assert responses["GROCERY"].source == "shrunk"
    assert responses["GROCERY"].n_obs == expected["GROCERY"].n_obs == 120
    assert responses["GROCERY"].b == pytest.approx(expected["GROCERY"].b, rel=1e-6)
    assert responses["GROCERY"].b > 3.0  # true slope 6 shrunk towards the prior 3


def test_simulated_orders_do_not_feed_the_fit(history):
    Order.objects.update(source=Order.SOURCE_SIMULATED)
    responses = department_responses_fit()
    assert "GROCERY" not in responses and responses["*"].source == "prior" and responses["*"].n_obs == 0


def _suggestion(products, confidence=0.2):
    s = BundleSuggestion.objects.create(anchor=products[0], signature="+".join(sorted(p.sku for p in products)),
                                        score=0.9, confidence=confidence, expected_attach_rate=confidence)
    for i, p in enumerate(products):
        BundleSuggestionItem.objects.create(suggestion=s, product=p, position=i)
    return s


def test_bundle_cost_uses_known_cost_or_the_department_default_margin(settings):
    settings.SHOP_BUNDLES_DEFAULT_MARGIN_RATES = {"*": 0.30, "DAIRY": 0.20}
    a = Product.objects.create(sku="A", price=D("10.00"), cost=D("6.00"), department="GROCERY")
    b = Product.objects.create(sku="B", price=D("5.00"), department="DAIRY")
    c = Product.objects.create(sku="C", price=D("3.00"), department="PRODUCE")
    assert bundle_cost([a]) == (D("6.00"), "cost")
    assert bundle_cost([b, c]) == (D("6.10"), "default margin")  # 5 * 0.8 + 3 * 0.7
    assert bundle_cost([a, b]) == (D("10.00"), "mixed")


def _priced_pair(settings, *, base_take_rate: float, confidence: float):
    """Products A (6.00, cost 3.00) and B (4.00, cost 2.00) and their pending suggestion; margin floor 5 %."""
    settings.SHOP_BUNDLES_BASE_TAKE_RATE = base_take_rate
    settings.SHOP_BUNDLES_MIN_MARGIN_RATE = 0.05
    a = Product.objects.create(sku="A", price=D("6.00"), cost=D("3.00"), department="GROCERY", stock=5)
    b = Product.objects.create(sku="B", price=D("4.00"), cost=D("2.00"), department="GROCERY", stock=5)
    return a, b, _suggestion([a, b], confidence=confidence)


def test_suggestion_economics_are_the_optimiser_output_and_set_the_discount(settings):
    a, b, s = _priced_pair(settings, base_take_rate=0.05, confidence=0.1)
    from bundling_ml.economics import TakeResponse

    responses = {"*": TakeResponse(a=0.0, b=8.0, n_obs=500, source="shrunk")}
    assert suggestions_economics_fill(candidates=[(s, [a, b])], responses=responses) == 1
    expected = optimise_discount(10.0, 5.0, 0.05, 0.1, responses["*"], min_margin_rate=0.05)
    assert s.economics["discount"] == expected["discount"]
    assert s.economics["incremental_margin"] == pytest.approx(expected["incremental_margin"])
    assert s.economics["cost"] == 5.0 and s.economics["cost_source"] == "cost"
    assert len(s.economics["table"]) == 7
    assert s.suggested_discount_percent == D(str(expected["discount_percent"])).quantize(D("0.01"))


def test_when_no_discount_pays_the_offer_is_at_the_normal_price_and_approval_uses_0_percent(settings, client):
    # shoppers already buy them together (confidence 0.4): discounts mostly give away
    a, b, s = _priced_pair(settings, base_take_rate=0.02, confidence=0.4)
    from bundling_ml.economics import TakeResponse

    responses = {"*": TakeResponse(a=0.0, b=1.0, n_obs=500, source="shrunk")}
    suggestions_economics_fill(candidates=[(s, [a, b])], responses=responses)
    assert s.economics["discount"] == 0.0  # the optimiser gives no discount at all
    positive = [r for r in s.economics["table"] if r["discount"] > 0 and r["allowed"]]
    assert all(r["incremental_margin"] < 0 for r in positive)  # every positive discount loses money
    # The offer is the optimiser's 0 %: take 0.02 * (10.00 - 5.00) = 0.10 margin, 0.02 * 10.00 = 0.20 revenue.
    offer = s.economics["offer"]
    assert offer["discount"] == 0.0 and offer["take_rate"] == 0.02
    assert offer["incremental_margin"] == pytest.approx(0.10) and offer["incremental_revenue"] == pytest.approx(0.20)
    assert "normal price" in offer["note"]
    assert s.suggested_discount_percent == D("0.00")
    s.save()

    from shop_bundles.services.campaigns import suggestion_approve

    admin = User.objects.create_superuser("boss", "b@example.com", "pw-For-tests-1")
    client.force_login(admin)
    html = client.get(reverse("admin:shop_bundles_bundlesuggestion_change", args=[s.pk])).content.decode()
    assert "Discount on approval: <strong>0%</strong>" in html and "normal price" in html
    assert "Default campaign discount" not in html and "Chosen discount" not in html
    assert "incremental margin <strong>$0.1000</strong>" in html
    campaign = suggestion_approve(suggestion=s, user=admin)
    assert campaign.discount_type == "percent" and campaign.discount_value == D("0.00")


def test_a_positive_optimum_is_the_offer_with_the_optimisers_note(settings):
    a, b, s = _priced_pair(settings, base_take_rate=0.05, confidence=0.1)
    from bundling_ml.economics import TakeResponse

    responses = {"*": TakeResponse(a=0.0, b=8.0, n_obs=500, source="shrunk")}
    suggestions_economics_fill(candidates=[(s, [a, b])], responses=responses)
    assert s.economics["discount"] > 0
    assert s.economics["offer"]["discount"] == s.economics["discount"]
    assert s.economics["offer"]["incremental_margin"] == s.economics["incremental_margin"]
    assert s.economics["offer"]["note"].startswith("the optimiser's choice")


def test_no_offer_when_no_discount_respects_the_margin_floor(settings):
    settings.SHOP_BUNDLES_MIN_MARGIN_RATE = 0.05
    a = Product.objects.create(sku="A", price=D("6.00"), cost=D("5.90"), department="GROCERY", stock=5)
    b = Product.objects.create(sku="B", price=D("4.00"), cost=D("3.90"), department="GROCERY", stock=5)
    s = _suggestion([a, b], confidence=0.1)  # floor 9.80 * 1.05 = 10.29 > regular 10.00
    from bundling_ml.economics import TakeResponse

    suggestions_economics_fill(candidates=[(s, [a, b])], responses={"*": TakeResponse(a=0.0, b=3.0, n_obs=0,
                                                                                      source="prior")})
    assert s.economics["feasible"] is False and "offer" not in s.economics


def test_refresh_saves_economics_and_admin_shows_them_with_a_chart(client, history):
    a = Product.objects.get(sku="P0")
    b = Product.objects.get(sku="P1")
    s = _suggestion([a, b], confidence=0.15)
    assert suggestions_economics_refresh() == 1
    s.refresh_from_db()
    assert s.economics["response"]["source"] == "shrunk" and s.economics["cost_source"] == "default margin"
    assert s.economics["cost"] == pytest.approx(2.80)  # 4.00 * (1 - 0.30)
    admin = User.objects.create_superuser("boss", "b@example.com", "pw-For-tests-1")
    client.force_login(admin)
    page = client.get(reverse("admin:shop_bundles_bundlesuggestion_change", args=[s.pk]))
    html = page.content.decode()
    assert page.status_code == 200
    assert "Discount on approval" in html and "<svg" in html and "incremental margin vs discount" in html
    changelist = client.get(reverse("admin:shop_bundles_bundlesuggestion_changelist"))
    shown = (s.economics.get("offer") or s.economics)["incremental_margin"]
    assert f"{shown:.3f}" in changelist.content.decode()
