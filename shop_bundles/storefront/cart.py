"""The session cart and its pricing against the catalogue.

The session stores only product ids and quantities
(``session["shop_bundles_cart"] = {"<product id>": <int quantity>}``).
Prices and bundles are never stored: every view re-prices the cart from the
catalogue with ``cart_price``, so a changed price, an ended campaign or an
edited quantity shows at once, and a request can never set a price.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Mapping

from ..models import BundleCampaign, Product
from ..selectors.offers import campaign_spec, live_campaigns_within
from .pricing import BundleLine, CartItem, PricedLine, PricingResult, price_cart

SESSION_KEY = "shop_bundles_cart"
MAX_QUANTITY = 99


class SessionCart:
    """A cart kept in the Django session: ``{product_id: quantity}``, nothing else.

    Args:
        session: ``request.session`` (any mapping-like session object).
    """

    def __init__(self, session):
        self.session = session
        raw = session.get(SESSION_KEY) or {}
        self._lines: dict[int, int] = {}
        for key, qty in raw.items():
            try:
                pid, quantity = int(key), int(qty)
            except (TypeError, ValueError):
                continue
            if quantity > 0:
                self._lines[pid] = min(quantity, MAX_QUANTITY)

    def _save(self) -> None:
        self.session[SESSION_KEY] = {str(pid): qty for pid, qty in self._lines.items()}
        self.session.modified = True

    def quantities(self) -> dict[int, int]:
        """Copy of the cart as ``{product_id: quantity}`` (quantities >= 1)."""
        return dict(self._lines)

    def add(self, product_id: int, quantity: int = 1) -> int:
        """Add units of a product; returns the line's new quantity (capped at ``MAX_QUANTITY``)."""
        if quantity <= 0:
            return self._lines.get(product_id, 0)
        self._lines[product_id] = min(self._lines.get(product_id, 0) + quantity, MAX_QUANTITY)
        self._save()
        return self._lines[product_id]

    def room(self, product_id: int) -> int:
        """Units of a product that can still be added before the line reaches ``MAX_QUANTITY``."""
        return max(MAX_QUANTITY - self._lines.get(product_id, 0), 0)

    def set(self, product_id: int, quantity: int) -> None:
        """Set a line's quantity; 0 or less removes the line."""
        if quantity <= 0:
            self._lines.pop(product_id, None)
        else:
            self._lines[product_id] = min(quantity, MAX_QUANTITY)
        self._save()

    def remove(self, product_id: int) -> None:
        """Remove a product from the cart (no error when absent)."""
        self.set(product_id, 0)

    def clear(self) -> None:
        """Empty the cart."""
        self._lines = {}
        self._save()

    def count(self) -> int:
        """Total units in the cart."""
        return sum(self._lines.values())

    def __len__(self) -> int:
        return len(self._lines)

    def __bool__(self) -> bool:
        return bool(self._lines)


@dataclass(frozen=True)
class CartRow:
    """A cart line for display: the product, its priced line, and whether it can be bought."""

    product: Product
    line: PricedLine

    @property
    def available(self) -> bool:
        """True when the product is active, priced above 0.00 and holds enough stock for the line."""
        return self.product.active and self.product.price > 0 and self.product.stock >= self.line.quantity


@dataclass(frozen=True)
class PricedCart:
    """A priced cart with the loaded products and campaigns.

    Attributes:
        rows: ``CartRow`` per product, in cart order (unknown product ids dropped).
        bundles: ``(BundleLine, BundleCampaign)`` pairs for the bundles formed.
        pricing: the engine's ``PricingResult`` (subtotal, discount_total, total in Decimal).
    """

    rows: tuple[CartRow, ...]
    bundles: tuple[tuple[BundleLine, BundleCampaign], ...]
    pricing: PricingResult

    @property
    def subtotal(self) -> Decimal:
        """Sum of regular line amounts (Decimal)."""
        return self.pricing.subtotal

    @property
    def discount_total(self) -> Decimal:
        """Sum of bundle discounts (Decimal)."""
        return self.pricing.discount_total

    @property
    def total(self) -> Decimal:
        """What the shopper pays (Decimal)."""
        return self.pricing.total

    @property
    def is_empty(self) -> bool:
        """True when no line is left."""
        return not self.rows


def cart_price(quantities: Mapping[int, int], *, products: Mapping[int, Product] | None = None,
               now: datetime | None = None, with_offers: bool = True, store_id: str | None = None) -> PricedCart:
    """Price a cart from the catalogue with the campaigns live at ``now``.

    Three queries: the products (unless given), the live campaigns whose
    products are all in the cart, and their items.

    Args:
        quantities: ``{product_id: quantity}``; non-positive quantities are ignored.
        products: already-loaded products by id (e.g. rows locked with
            ``select_for_update`` at checkout); None loads them.
        now: aware datetime for campaign windows; None means now.
        with_offers: False prices at shelf prices without forming bundles (the
            holdout group of the experiment); no campaign query is run.
        store_id: the shopper's store: campaigns limited to other stores do
            not price the cart ("" = no store chosen: only campaigns without
            store limits; None = any store).

    Returns:
        ``PricedCart``. Unit prices are ``Product.price``; product ids that no
        longer exist are dropped. Bundle discounts follow the money rule of
        ``storefront.pricing`` (one half-up rounding per bundle line).
    """
    wanted = {int(pid): int(qty) for pid, qty in quantities.items() if int(qty) > 0}
    if products is None:
        products = Product.objects.in_bulk(list(wanted))
    order = [pid for pid in wanted if pid in products]
    items = [CartItem(product_id=pid, quantity=wanted[pid], unit_price=products[pid].price) for pid in order]
    campaigns = live_campaigns_within(order, now=now, store_id=store_id) if order and with_offers else []
    by_id = {c.pk: c for c in campaigns}
    pricing = price_cart(items, [campaign_spec(c) for c in campaigns])
    rows = tuple(CartRow(product=products[line.product_id], line=line) for line in pricing.lines)
    bundles = tuple((b, by_id[b.campaign_id]) for b in pricing.bundles)
    return PricedCart(rows=rows, bundles=bundles, pricing=pricing)
