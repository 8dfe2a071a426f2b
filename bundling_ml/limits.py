"""Largest values an order line may carry, shared by the CSV import (``bundling_ml.ingest``) and the
shop's events endpoint (``shop_bundles.api``). No imports beyond ``decimal``: the web process reads
these without loading pandas.

The limits keep every accepted value inside the shop's database columns:

* ``QUANTITY_MAX``: units on one order line (a quantity above a million units is a typo or a unit
  mix-up; integer columns ``OrderLine.quantity``, ``OfferEvent.quantity``);
* ``MONEY_MAX``: a price, cost or unit price (``numeric(12, 2)`` columns);
* ``LINE_AMOUNT_MAX``: quantity x unit price of one line, and an order's subtotal / total
  (``numeric(14, 2)`` columns).
"""
from decimal import Decimal

QUANTITY_MAX = 1_000_000
MONEY_MAX = Decimal("9999999999.99")
LINE_AMOUNT_MAX = Decimal("999999999999.99")
