"""``demo_approve --by margin``: the pending suggestions with the highest expected incremental margin go first."""
from decimal import Decimal as D
from io import StringIO

import pytest
from django.core.management import call_command

from shop_bundles.models import BundleCampaign, BundleSuggestion, BundleSuggestionItem, Product

pytestmark = pytest.mark.django_db


def _suggestion(n: int, score: float, margin: float | None) -> BundleSuggestion:
    anchor = Product.objects.create(sku=f"A{n}", price=D("4.00"), stock=10, department="GROCERY")
    companion = Product.objects.create(sku=f"C{n}", price=D("3.00"), stock=10, department="GROCERY")
    economics = {} if margin is None else {"offer": {"discount": 0.1, "take_rate": 0.05,
                                                     "incremental_revenue": 0.3, "incremental_margin": margin}}
    suggestion = BundleSuggestion.objects.create(anchor=anchor, signature=f"s{n}", score=score,
                                                 suggested_discount_percent=D("10.00"), economics=economics)
    for position, product in enumerate((anchor, companion)):
        BundleSuggestionItem.objects.create(suggestion=suggestion, product=product, position=position)
    return suggestion


def test_by_margin_orders_by_expected_incremental_margin_then_score():
    low = _suggestion(1, score=0.9, margin=0.01)
    high = _suggestion(2, score=0.1, margin=0.25)
    mid = _suggestion(3, score=0.5, margin=0.12)
    unknown = _suggestion(4, score=0.99, margin=None)
    call_command("demo_approve", "--top", "2", "--by", "margin", stdout=StringIO())
    assert set(BundleCampaign.objects.values_list("suggestion_id", flat=True)) == {high.pk, mid.pk}
    call_command("demo_approve", "--top", "2", "--by", "margin", stdout=StringIO())
    assert set(BundleCampaign.objects.values_list("suggestion_id", flat=True)) == {high.pk, mid.pk, low.pk,
                                                                                  unknown.pk}


def test_by_score_is_the_default():
    _suggestion(1, score=0.9, margin=0.01)
    _suggestion(2, score=0.1, margin=0.25)
    call_command("demo_approve", "--top", "1", stdout=StringIO())
    assert BundleCampaign.objects.get().suggestion.score == 0.9


def test_negative_expected_margin_is_skipped_and_counted():
    losing = _suggestion(1, score=0.9, margin=-0.02)
    winning = _suggestion(2, score=0.5, margin=0.03)
    zero = _suggestion(3, score=0.4, margin=0.0)
    out = StringIO()
    call_command("demo_approve", "--top", "5", stdout=out)  # by score: the losing one is the best scored
    assert set(BundleCampaign.objects.values_list("suggestion_id", flat=True)) == {winning.pk, zero.pk}
    losing.refresh_from_db()
    assert losing.status == BundleSuggestion.PENDING
    text = out.getvalue()
    assert "approved 2 suggestions" in text
    assert "skipped 1 suggestions whose expected incremental margin per offer shown is negative" in text


def test_offers_per_product_caps_the_bundles_one_product_is_in():
    """Four suggestions share the anchor A1: one bundle per product by default, at most N with --offers-per-product."""
    first = _suggestion(1, score=0.9, margin=0.1)
    anchor = first.anchor
    shared = []
    for n, score in ((2, 0.8), (3, 0.7), (4, 0.6)):
        companion = Product.objects.create(sku=f"C{n}", price=D("3.00"), stock=10, department="GROCERY")
        suggestion = BundleSuggestion.objects.create(anchor=anchor, signature=f"s{n}", score=score,
                                                     suggested_discount_percent=D("0.00"))
        for position, product in enumerate((anchor, companion)):
            BundleSuggestionItem.objects.create(suggestion=suggestion, product=product, position=position)
        shared.append(suggestion)
    call_command("demo_approve", "--top", "5", stdout=StringIO())
    assert list(BundleCampaign.objects.values_list("suggestion_id", flat=True)) == [first.pk]
    call_command("demo_approve", "--top", "5", "--offers-per-product", "2", stdout=StringIO())  # a new run
    assert set(BundleCampaign.objects.values_list("suggestion_id", flat=True)) == {first.pk, shared[0].pk,
                                                                                   shared[1].pk}


def test_a_suggestion_that_looks_like_an_approved_one_is_passed_over():
    """Two SKUs of one name (private label, sizes) make bundles that read the same on a page, which shows only
    one of them: the demo approves the first and passes over the look-alike, saying how many it passed over."""
    first = _suggestion(1, score=0.9, margin=0.1)
    twin = _suggestion(2, score=0.8, margin=0.1)
    other = _suggestion(3, score=0.7, margin=0.1)
    for suggestion in (first, twin):
        for item, name in zip(suggestion.items.order_by("position"), ("Mixers 1 L", "Instant Coffee 6.5 OZ")):
            Product.objects.filter(pk=item.product_id).update(name=name if suggestion is first else name.upper())
    out = StringIO()
    call_command("demo_approve", "--top", "5", stdout=out)
    assert set(BundleCampaign.objects.values_list("suggestion_id", flat=True)) == {first.pk, other.pk}
    assert "approved 2 suggestions" in out.getvalue()
    assert "passed over 1 suggestions that look like one approved above (same product names)" in out.getvalue()
