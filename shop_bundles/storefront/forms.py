"""Storefront forms. None of them has a price field: prices come from the catalogue only."""
from django import forms

from .cart import MAX_QUANTITY


class ProductSearchForm(forms.Form):
    """Product list filters: free text on name or SKU, and a department."""

    q = forms.CharField(required=False, max_length=100, label="Search",
                        widget=forms.TextInput(attrs={"placeholder": "Name or SKU", "type": "search"}))
    department = forms.CharField(required=False, max_length=100)


class AddToCartForm(forms.Form):
    """Units of one product (or bundles of one offer) to add: 1..99.

    Any other field in the request, such as ``price``, is ignored.
    """

    quantity = forms.IntegerField(min_value=1, max_value=MAX_QUANTITY, initial=1,
                                  widget=forms.NumberInput(attrs={"class": "qty"}))


class CartUpdateForm(forms.Form):
    """New quantities for the cart's lines: one ``qty_<product id>`` field each, 0 removes the line."""

    def __init__(self, *args, product_ids=(), **kwargs):
        super().__init__(*args, **kwargs)
        for pid in product_ids:
            self.fields[f"qty_{pid}"] = forms.IntegerField(min_value=0, max_value=MAX_QUANTITY, required=False)

    def quantities(self) -> dict[int, int]:
        """``{product_id: new quantity}`` for the fields that were sent (call after ``is_valid``)."""
        out = {}
        for name, value in self.cleaned_data.items():
            if value is not None and name.startswith("qty_"):
                out[int(name[4:])] = value
        return out


class CheckoutForm(forms.Form):
    """Checkout: an optional customer id (creates or links a Customer by external id).

    The field exists only when ``with_customer`` is True (see
    ``storefront.views.customer_field_allowed``: ``SHOP_BUNDLES_CHECKOUT_CUSTOMER_FIELD``
    on, or a logged-in staff user); otherwise a posted ``customer_id`` is ignored,
    so a shopper cannot attach an order to somebody else's customer record.

    Two hidden fields come from the cart page: ``checkout_token``, the cart's
    one-time token (one order per token, so a double submit places one order),
    and ``expected_total``, the total the shopper saw (the order is refused
    when the cart now prices differently). Both are optional: a checkout
    posted without a token (scripts) has no double-submit protection, one
    without a total is not checked. The ``simulate_shoppers`` replay posts
    a token derived from the source basket and no total.
    """

    customer_id = forms.CharField(required=False, max_length=64, label="Customer id (optional)",
                                  widget=forms.TextInput(attrs={"autocomplete": "off"}))
    checkout_token = forms.RegexField(regex=r"^[0-9a-f]{32}$", required=False, widget=forms.HiddenInput)
    expected_total = forms.DecimalField(required=False, min_value=0, max_digits=14, decimal_places=2,
                                        widget=forms.HiddenInput)

    def __init__(self, *args, with_customer: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        if not with_customer:
            del self.fields["customer_id"]

    def clean_customer_id(self) -> str:
        """Strip surrounding spaces."""
        return (self.cleaned_data.get("customer_id") or "").strip()


class StoreForm(forms.Form):
    """The store page's choice: the shop's stores (``stores``: ``[(store_id, orders), ...]``) and "" for none.

    Renders the page only: the view checks a posted store with ``stores.store_known`` (one indexed
    ``EXISTS``), so a POST does not list every store.
    """

    store = forms.ChoiceField(required=False, label="Your store")

    def __init__(self, *args, stores=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["store"].choices = [("", "No store (order offers for the whole shop)")] + [
            (sid, f"Store {sid}") for sid, orders in stores]  # busiest first; the counts are the shop's business
