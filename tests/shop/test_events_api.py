"""Events endpoint limits (``POST /bundles/events/``): every refused value gets a 400 (413 for a too large body)
naming the field and the reason, nothing is written, and an accepted event can always be stored and handled.

Each case here crashed with an HTML 500 / 400, or was accepted with 202 and then failed in its handler
forever, before the endpoint checked it (QA, against a running server on PostgreSQL).
"""
from __future__ import annotations

import json
from decimal import Decimal as D

import pytest

from shop_bundles.api import BODY_MAX_BYTES
from shop_bundles.models import Customer, OfferEvent, Order, OrderEvent, OrderLine, OutboxEvent, Product

from .test_security import post, shop, token  # noqa: F401 - the endpoint's fixtures

pytestmark = [pytest.mark.django_db, pytest.mark.faults]

LINE_A = {"sku": "A", "quantity": 1, "unit_price": "20.00"}
LINE_B = {"sku": "B", "quantity": 1, "unit_price": "5.00"}


def order(lines=(LINE_A,), **data) -> dict:
    """An ``order_placed`` event with ``lines`` and other ``data`` fields."""
    return {"id": "pos-9", "type": "order_placed",
            "data": {"order_id": "POS-9", "customer_id": "C-9", "lines": list(lines), **data}}


def stock(**data) -> dict:
    """A ``stock_changed`` event for Bread (B)."""
    return {"id": "pos-9", "type": "stock_changed", "data": {"sku": "B", **data}}


def offer(campaign_id=None, **data) -> dict:
    """An ``add_to_cart`` offer event for the shop's campaign (``campaign_id`` None) or another id."""
    return {"id": "web-9", "type": "offer_event",
            "data": {"kind": "add_to_cart", "campaign_id": campaign_id, **data}}


def assert_nothing_written():
    assert not OutboxEvent.objects.exists()
    assert not Order.objects.exists() and not OrderLine.objects.exists() and not Customer.objects.exists()
    assert not OfferEvent.objects.exists()
    assert sorted(Product.objects.values_list("sku", "stock", "price")) == [("A", 10, D("20.00")),
                                                                           ("B", 10, D("5.00"))]


REFUSED = [
    # --- a repeated SKU (unique order + product): refused, naming both lines
    pytest.param(order([LINE_A, LINE_B, {"sku": "A", "quantity": 2, "unit_price": "20.00"}]),
                 {"data.lines[2].sku": "repeats SKU 'A' of data.lines[0]; report each product on one line "
                                       "(add up the quantities)."}, id="repeated-sku"),
    pytest.param(order([LINE_B, {"sku": " B ", "quantity": 1, "unit_price": "4.00"}, LINE_A, LINE_B]),
                 {"data.lines[1].sku": "repeats SKU 'B' of data.lines[0]; report each product on one line "
                                       "(add up the quantities).",
                  "data.lines[3].sku": "repeats SKU 'B' of data.lines[0]; report each product on one line "
                                       "(add up the quantities)."}, id="repeated-sku-twice"),
    # --- date-times that are well formed but not real, or outside the accepted years
    pytest.param(order(placed_at="2026-02-30T10:00:00Z"),
                 {"data.placed_at": "is not a valid date-time (day is out of range for month): "
                                    "'2026-02-30T10:00:00Z'."}, id="february-30"),
    pytest.param(order(placed_at="2026-13-45T10:00:00Z"),
                 {"data.placed_at": "is not a valid date-time (month must be in 1..12): '2026-13-45T10:00:00Z'."},
                 id="month-13"),
    pytest.param(order(placed_at="1969-12-31T23:59:59Z"),
                 {"data.placed_at": "must be from 1970-01-01T00:00:00Z up to (not including) 2100-01-01T00:00:00Z, "
                                    "not '1969-12-31T23:59:59Z'."}, id="placed-before-1970"),
    pytest.param(order(placed_at="9999-12-31T23:59:59-05:00"),
                 {"data.placed_at": "must be from 1970-01-01T00:00:00Z up to (not including) 2100-01-01T00:00:00Z, "
                                    "not '9999-12-31T23:59:59-05:00'."}, id="placed-in-9999"),
    pytest.param(offer(occurred_at="2026-02-30T10:00:00Z"),
                 {"data.occurred_at": "is not a valid date-time (day is out of range for month): "
                                      "'2026-02-30T10:00:00Z'."}, id="offer-february-30"),
    pytest.param(offer(occurred_at="2100-01-01T00:00:00Z"),
                 {"data.occurred_at": "must be from 1970-01-01T00:00:00Z up to (not including) "
                                      "2100-01-01T00:00:00Z, not '2100-01-01T00:00:00Z'."}, id="offer-in-2100"),
    # --- numbers too large for their column
    pytest.param(stock(stock=3000000000), {"data.stock": "must be at most 1000000000, not 3000000000."},
                 id="stock-3e9"),
    pytest.param(stock(stock=-3000000000), {"data.stock": "must be at least -1000000000, not -3000000000."},
                 id="stock-minus-3e9"),
    pytest.param(stock(stock=10**23), {"data.stock": "must be at most 1000000000, not 100000000000000000000000."},
                 id="stock-10**23"),
    pytest.param(stock(stock=1e23), {"data.stock": "must be a whole number, not 1e+23."}, id="stock-1e23"),
    pytest.param(order([LINE_A, {"sku": "B", "quantity": 3000000000, "unit_price": "5.00"}]),
                 {"data.lines[1].quantity": "must be at most 1000000, not 3000000000."}, id="quantity-3e9"),
    pytest.param(order([{"sku": "A", "quantity": 1e23, "unit_price": "5.00"}]),
                 {"data.lines[0].quantity": "must be a whole number, not 1e+23."}, id="quantity-1e23"),
    pytest.param(order([{"sku": "A", "quantity": 2147483647, "unit_price": "9999999999.99"}]),
                 {"data.lines[0].quantity": "must be at most 1000000, not 2147483647."}, id="quantity-int-max"),
    pytest.param(order([LINE_B, {"sku": "A", "quantity": 1000000, "unit_price": "9999999999.99"}]),
                 {"data.lines[1]": "quantity x unit_price = 9999999999990000.00 is above the largest line amount, "
                                   "999999999999.99."}, id="line-amount-overflow"),
    pytest.param(order([{"sku": "A", "quantity": 100, "unit_price": "9999999999.99"},
                        {"sku": "B", "quantity": 1, "unit_price": "1.00"}]),
                 {"data.lines": "the order's subtotal (sum of quantity x unit_price) 1000000000000.00 is above the "
                                "largest order amount, 999999999999.99."}, id="order-amount-overflow"),
    pytest.param(stock(price="10000000000.00"),
                 {"data.price": "must be between 0 and 9999999999.99, not '10000000000.00'."}, id="price-1e10"),
    pytest.param(offer(quantity=10**23),
                 {"data.quantity": "must be at most 1000000, not 100000000000000000000000."}, id="offer-10**23"),
    pytest.param(offer(quantity=1e23), {"data.quantity": "must be a whole number, not 1e+23."}, id="offer-1e23"),
    pytest.param(offer(quantity=1000001), {"data.quantity": "must be at most 1000000, not 1000001."},
                 id="offer-quantity-1000001"),
    pytest.param(offer(campaign_id=2**63),
                 {"data.campaign_id": "must be at most 9223372036854775807, not 9223372036854775808."},
                 id="campaign-id-2**63"),
    # --- every error names the real index, a non-object line included
    pytest.param(order([LINE_A, 5, {"sku": "NOPE", "quantity": 1, "unit_price": "1.00"}]),
                 {"data.lines[1]": "must be a JSON object {sku, quantity, unit_price}, not 5.",
                  "data.lines[2].sku": "no product with SKU 'NOPE'."}, id="unknown-sku-after-a-number"),
    pytest.param(order(["A", None, LINE_B, [LINE_A], {"sku": "Z", "quantity": 0, "unit_price": "1"}]),
                 {"data.lines[0]": "must be a JSON object {sku, quantity, unit_price}, not 'A'.",
                  "data.lines[1]": "must be a JSON object {sku, quantity, unit_price}, not None.",
                  "data.lines[3]": "must be a JSON object {sku, quantity, unit_price}, not [{...}].",
                  "data.lines[4].sku": "no product with SKU 'Z'.",
                  "data.lines[4].quantity": "must be at least 1, not 0."}, id="many-non-objects"),
    pytest.param(order([LINE_A, {"sku": "X" * 65, "quantity": 1, "unit_price": "1.00"}]),
                 {"data.lines[1].sku": "must be at most 64 characters."}, id="long-sku-keeps-its-reason"),
    pytest.param(stock(sku="X" * 65, stock=1), {"data.sku": "must be at most 64 characters."},
                 id="long-stock-sku-keeps-its-reason"),
    # --- text PostgreSQL cannot store (NUL, an unpaired surrogate escape)
    pytest.param({**stock(stock=1), "id": "pos-\x00"}, {"id": "must not contain the NUL character (\\u0000)."},
                 id="nul-in-id"),
    pytest.param(stock(sku="B\x00", stock=1), {"data.sku": "must not contain the NUL character (\\u0000)."},
                 id="nul-in-sku"),
    pytest.param(order([{"sku": "A\ud800", "quantity": 1, "unit_price": "1.00"}], order_id="POS-\udfff",
                       customer_id="C\x00"),
                 {"data.order_id": "is not valid Unicode text (unpaired surrogate such as \\ud800).",
                  "data.customer_id": "must not contain the NUL character (\\u0000).",
                  "data.lines[0].sku": "is not valid Unicode text (unpaired surrogate such as \\ud800)."},
                 id="bad-text-in-order"),
    pytest.param(offer(session_key="s\x00"), {"data.session_key": "must not contain the NUL character (\\u0000)."},
                 id="nul-in-session-key"),
    pytest.param(stock(stock="9" * 500),
                 {"data.stock": "must be a whole number, not "
                                "'999999999999999999999999999...9999999999999999999999999999'."},
                 id="huge-value-echoed-short"),
]


@pytest.mark.parametrize("body, errors", REFUSED)
def test_values_the_columns_cannot_hold_are_refused_with_a_named_field(token, shop, body, errors,
                                                                       django_capture_on_commit_callbacks):
    if body["type"] == "offer_event" and body["data"]["campaign_id"] is None:
        body["data"]["campaign_id"] = shop["campaign"].pk
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = post(body)  # the test client re-raises any server error
    assert (response.status_code, response["Content-Type"]) == (400, "application/json")
    assert response.json() == {"errors": errors}
    assert callbacks == []
    assert_nothing_written()


def test_the_largest_accepted_order_is_stored_and_handled_exactly(token, shop, django_capture_on_commit_callbacks):
    body = order([{"sku": "A", "quantity": 100, "unit_price": "9999999999.99"},
                  {"sku": "B", "quantity": 1, "unit_price": "0.99"}], placed_at="2099-12-31T23:59:59Z")
    with django_capture_on_commit_callbacks(execute=True):
        response = post(body)
    assert response.status_code == 202, response.content
    placed = Order.objects.get()
    assert (placed.subtotal, placed.total) == (D("999999999999.99"), D("999999999999.99"))
    assert placed.placed_at.isoformat() == "2099-12-31T23:59:59+00:00"
    assert sorted(placed.lines.values_list("product__sku", "quantity", "unit_price")) == [
        ("A", 100, D("9999999999.99")), ("B", 1, D("0.99"))]
    event = OutboxEvent.objects.get()
    assert event.processed_at is not None and event.last_error == ""
    assert OrderEvent.objects.get(order=placed).revenue == D("999999999999.99")


def test_the_largest_accepted_quantities_are_stored_and_handled(token, shop, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        responses = [
            post(stock(stock=1000000000)),
            post({**order([{"sku": "A", "quantity": 1000000, "unit_price": "999999.99"}],
                          placed_at="1970-01-01T00:00:00Z"), "id": "pos-10"}),
            post({**offer(campaign_id=shop["campaign"].pk, quantity=1000000), "id": "web-10"}),
        ]
    assert [r.status_code for r in responses] == [202, 202, 202], [r.content for r in responses]
    assert Product.objects.get(sku="B").stock == 1000000000
    assert Order.objects.get().subtotal == D("999999990000.00")
    assert OfferEvent.objects.get(kind="add_to_cart").quantity == 1000000
    assert not OutboxEvent.objects.filter(processed_at__isnull=True).exists()
    assert set(OutboxEvent.objects.values_list("last_error", flat=True)) == {""}


def _nested(depth: int) -> dict:
    """A valid stock_changed event whose whole body nests exactly ``depth`` levels (``extra`` is ignored)."""
    extra: list = []
    for _ in range(depth - 3):  # envelope (1), data (2), extra (3) ...
        extra = [extra]
    return stock(stock=3, extra=extra)


@pytest.mark.parametrize("raw", [b"[" * 100_000 + b"]" * 100_000, b'{"a": ' * 100_000 + b"1" + b"}" * 100_000,
                                 json.dumps(_nested(21)).encode()], ids=["list-100000", "object-100000", "21"])
def test_deeply_nested_json_gets_a_json_error(token, shop, raw):
    response = post(None, raw=raw)
    assert response.status_code == 400
    assert response.json() == {"errors": {"body": "is nested more than 20 levels deep (an event needs at most 4)."}}
    assert_nothing_written()


def test_json_nested_20_levels_is_accepted(token, shop):
    response = post(_nested(20))
    assert response.status_code == 202, response.content
    assert Product.objects.get(sku="B").stock == 3


def _padded(size: int) -> bytes:
    """A valid stock_changed event of exactly ``size`` bytes (padding in an ignored field)."""
    empty = json.dumps(stock(stock=4, note="")).encode()
    return json.dumps(stock(stock=4, note="x" * (size - len(empty)))).encode()


def test_a_body_over_the_size_limit_gets_a_json_413_naming_the_limit(token, shop):
    assert BODY_MAX_BYTES == 1048576
    for size in (3_000_000, BODY_MAX_BYTES + 1):
        response = post(None, raw=_padded(size))
        assert (response.status_code, response["Content-Type"]) == (413, "application/json")
        assert response.json() == {"errors": {
            "body": f"is {size} bytes; at most 1048576 bytes are accepted (send fewer lines per event)."}}
    assert_nothing_written()
    response = post(None, raw=_padded(BODY_MAX_BYTES))
    assert response.status_code == 202, response.content
    assert Product.objects.get(sku="B").stock == 4


def test_a_smaller_django_upload_limit_is_the_one_named(token, shop, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = post(None, raw=_padded(1001))
    assert response.status_code == 413
    assert response.json() == {"errors": {
        "body": "is 1001 bytes; at most 1000 bytes are accepted (send fewer lines per event)."}}
    assert_nothing_written()
    assert post(None, raw=_padded(1000)).status_code == 202
