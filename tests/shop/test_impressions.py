"""Offer impressions: recorded through the product page and the template tag, durable setting scoped to the insert."""
from datetime import timedelta
from decimal import Decimal as D

import pytest
from django.db import connection, transaction
from django.template import Context, Template
from django.test import RequestFactory
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from shop_bundles.models import BundleCampaign, BundleCampaignItem, OfferEvent, Product
from shop_bundles.selectors.experiment import assignment_group
from shop_bundles.services.events import offer_impressions_record


@pytest.fixture
def offer():
    a = Product.objects.create(sku="IA", name="Pasta", price=D("20.00"), stock=50, department="GROCERY")
    b = Product.objects.create(sku="IB", name="Sauce", price=D("5.00"), stock=50, department="GROCERY")
    campaign = BundleCampaign.objects.create(name="Pasta night", discount_type="percent", discount_value=D("10"),
                                             starts_at=timezone.now() - timedelta(hours=1))
    BundleCampaignItem.objects.create(campaign=campaign, product=a, position=0)
    BundleCampaignItem.objects.create(campaign=campaign, product=b, position=1)
    return a, b, campaign


def _synchronous_commit() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        return cursor.fetchone()[0]


@pytest.mark.django_db(transaction=True)
def test_product_page_commits_impressions_with_campaign_session_and_group(client, offer, settings):
    """Real commits (no test transaction): the page's impression is in the database afterwards."""
    settings.SHOP_BUNDLES_HOLDOUT_SHARE = 0.5
    a, _, campaign = offer
    durable = _synchronous_commit()
    with CaptureQueriesContext(connection) as ctx:
        page = client.get(reverse("shop_bundles:product_detail", kwargs={"sku": a.sku}))
    assert page.status_code == 200
    session_key = client.cookies["sessionid"].value
    group = assignment_group(session_key)
    event = OfferEvent.objects.get(kind=OfferEvent.IMPRESSION)
    assert (event.campaign_id, event.session_key, event.experiment_group) == (campaign.pk, session_key, group)
    assert not event.simulated and event.order_id is None
    assert ('data-campaign="%d"' % campaign.pk in page.content.decode()) == (group == "treatment")
    sql = [q["sql"] for q in ctx.captured_queries]
    insert = next(i for i, s in enumerate(sql) if "INSERT INTO \"shop_bundles_offerevent\"" in s)
    assert sql[insert].startswith("SET LOCAL synchronous_commit TO off; INSERT INTO")
    assert sum("shop_bundles_offerevent" in q for q in sql) == 1  # one round trip, no BEGIN/COMMIT around it
    assert not any("SET LOCAL can only be used" in n for n in connection.connection.notices)  # it took effect
    # LOCAL: the connection is back to the server's durable setting for everything after (orders, carts).
    assert _synchronous_commit() == durable == "on"


@pytest.mark.django_db(transaction=True)
def test_set_local_in_the_same_query_string_applies_to_that_implicit_transaction_only():
    """The PostgreSQL behaviour the one-round-trip write relies on (a lone SET LOCAL would do nothing)."""
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL synchronous_commit TO off; SHOW synchronous_commit")
        assert cursor.fetchone()[0] == "off"
    assert _synchronous_commit() == "on"


@pytest.mark.django_db(transaction=True)
def test_record_outside_a_transaction_commits_and_restores_durability(offer):
    _, _, campaign = offer
    assert offer_impressions_record(campaign_ids=[campaign.pk, campaign.pk], session_key="s-1",
                                    experiment_group="holdout") == 2
    assert _synchronous_commit() == "on"
    assert list(OfferEvent.objects.values_list("campaign_id", "session_key", "experiment_group")) == [
        (campaign.pk, "s-1", "holdout")] * 2
    assert offer_impressions_record(campaign_ids=[], session_key="s-1", experiment_group="holdout") == 0


@pytest.mark.django_db(transaction=True)
def test_record_inside_an_outer_transaction_leaves_its_durability_alone(offer):
    _, _, campaign = offer
    with transaction.atomic():
        with CaptureQueriesContext(connection) as ctx:
            offer_impressions_record(campaign_ids=[campaign.pk], session_key="s-2", experiment_group="treatment")
        assert _synchronous_commit() == "on"
    assert not any("synchronous_commit" in q["sql"] for q in ctx.captured_queries)
    assert OfferEvent.objects.filter(session_key="s-2").count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize("share,shown", [(0.0, True), (1.0, False)])
def test_template_tag_records_impressions_and_hides_offers_from_holdout(offer, settings, share, shown):
    """A shop's own page using ``{% bundle_offers product %}`` records impressions like the storefront view."""
    from django.contrib.sessions.backends.db import SessionStore

    settings.SHOP_BUNDLES_HOLDOUT_SHARE = share
    a, _, campaign = offer
    request = RequestFactory().get("/own-page/")
    request.session = SessionStore()
    html = Template("{% load shop_bundles_storefront %}{% bundle_offers product %}").render(
        Context({"product": a, "request": request}))
    assert ('data-campaign="%d"' % campaign.pk in html) is shown
    event = OfferEvent.objects.get(kind=OfferEvent.IMPRESSION)
    assert event.campaign_id == campaign.pk and event.session_key == request.session.session_key
    assert event.experiment_group == ("treatment" if shown else "holdout")
