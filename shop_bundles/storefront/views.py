"""Shopper-facing views: product list, product page with bundle offers, cart, checkout, order.

Every state change is a POST with CSRF. The cart holds only product ids and
quantities; each view re-prices it from the catalogue (``cart.cart_price``).
"""
from __future__ import annotations

import re
import uuid

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db.models import Q
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from .. import app_settings
from ..models import Order, Product
from ..selectors.experiment import HOLDOUT, request_group
from ..selectors.customers import request_customer_id
from ..selectors.offers import live_offer
from ..services.events import offer_event_add_to_cart
from ..services.orders import NOT_FOR_SALE, OrderAlreadyPlaced, customer_get_or_create, order_place
from .cart import MAX_QUANTITY, SessionCart, cart_price
from .offers import product_offers_shown
from .pricing import quantize_money
from .forms import AddToCartForm, CartUpdateForm, CheckoutForm, ProductSearchForm, StoreForm
from .stores import STORE_SESSION_KEY, USUAL, known_stores, shopper_store, shopper_store_source, store_known

PAGE_SIZE = 24
ORDERS_SESSION_KEY = "shop_bundles_orders"
#: The cart's one-time checkout token (32 hex digits), created when the cart is shown and replaced
#: once an order is placed with it.
CHECKOUT_TOKEN_SESSION_KEY = "shop_bundles_checkout_token"
_TOKEN_RE = re.compile(r"[0-9a-f]{32}")
QUANTITY_REFUSED = "Choose a quantity between 1 and 99."
FORM_OUT_OF_DATE = "Your cart page was out of date. Check your cart and place the order again."


def _session_key(request: HttpRequest) -> str:
    """The session key, creating the session for a first-time anonymous shopper."""
    if not request.session.session_key:
        request.session.save()
    return request.session.session_key or ""


OFFER_ENDED = "This bundle offer is no longer available, so nothing was added to your cart."


def _redirect_back(request: HttpRequest, default: str, *, referer: bool = False) -> HttpResponse:
    """Redirect to a same-host ``next`` field when given (with ``referer``, else to the same-host page
    the POST came from), else to ``default``."""
    candidates = [request.POST.get("next") or ""]
    if referer:
        candidates.append(request.META.get("HTTP_REFERER") or "")
    for target in candidates:
        if target and url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()},
                                                       require_https=request.is_secure()):
            return redirect(target)
    return redirect(default)


def _checkout_token(request: HttpRequest) -> str:
    """The session's current checkout token, created when there is none."""
    token = request.session.get(CHECKOUT_TOKEN_SESSION_KEY)
    if not (isinstance(token, str) and _TOKEN_RE.fullmatch(token)):
        token = uuid.uuid4().hex
        request.session[CHECKOUT_TOKEN_SESSION_KEY] = token
    return token


def _order_recorded(request: HttpRequest, cart: SessionCart, order: Order, *, spent: bool) -> None:
    """After a checkout: the session may see ``order``; when ``spent``, its cart is emptied and a new
    checkout token replaces the one used."""
    placed = list(request.session.get(ORDERS_SESSION_KEY, []))
    if order.pk not in placed:
        request.session[ORDERS_SESSION_KEY] = placed[-49:] + [order.pk]
    if spent:
        cart.clear()
        request.session[CHECKOUT_TOKEN_SESSION_KEY] = uuid.uuid4().hex


def customer_field_allowed(request: HttpRequest) -> bool:
    """Whether the checkout takes a customer id: ``SHOP_BUNDLES_CHECKOUT_CUSTOMER_FIELD`` on, or staff.

    Off by default: a free-text customer id would let any shopper attach an
    order (and its training data) to any customer. A shop that identifies
    customers itself links them another way; staff taking an order for a
    customer (logged in, ``is_staff``) may enter one; the ``simulate_shoppers``
    replay turns the setting on for its own run.
    """
    if app_settings.get("CHECKOUT_CUSTOMER_FIELD"):
        return True
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_authenticated and user.is_staff)


@require_GET
def product_list(request: HttpRequest) -> HttpResponse:
    """Active products priced above 0.00, paginated (24 a page), searchable by name/SKU, by department."""
    form = ProductSearchForm(request.GET or None)
    products = Product.objects.filter(active=True, price__gt=0)
    q = department = ""
    if form.is_valid():
        q = form.cleaned_data["q"].strip()
        department = form.cleaned_data["department"].strip()
        if q:
            products = products.filter(Q(name__icontains=q) | Q(sku__icontains=q))
        if department:
            products = products.filter(department=department)
    products = products.order_by("name", "sku").only("sku", "name", "department", "price", "stock", "active")
    page = Paginator(products, PAGE_SIZE).get_page(request.GET.get("page"))
    departments = (Product.objects.filter(active=True, price__gt=0).exclude(department="")
                   .order_by("department").values_list("department", flat=True).distinct())
    query = request.GET.copy()
    query.pop("page", None)
    return render(request, "shop_bundles/storefront/product_list.html", {
        "form": form, "page": page, "q": q, "department": department,
        "departments": departments, "query": query.urlencode(),
    })


@require_GET
def product_detail(request: HttpRequest, sku: str) -> HttpResponse:
    """A product with its "Frequently bought together" offers (live campaigns only).

    A product without a positive price is not for sale: the shopper is sent to the
    product list with a message.
    """
    product = get_object_or_404(Product, sku=sku, active=True)
    if product.price <= 0:
        messages.error(request, NOT_FOR_SALE.format(name=product.name or product.sku))
        return redirect("shop_bundles:product_list")
    # Impressions recorded for treatment and holdout; the holdout sees no offers.
    offers = product_offers_shown(request, product)
    return render(request, "shop_bundles/storefront/product_detail.html", {
        "product": product, "offers": offers, "form": AddToCartForm(),
    })


@require_POST
def cart_add(request: HttpRequest, sku: str) -> HttpResponse:
    """Add units of one product. Only ``quantity`` is read; a posted ``price`` is ignored.

    A product without a positive price is refused with a message.
    """
    product = get_object_or_404(Product, sku=sku, active=True)
    if product.price <= 0:
        messages.error(request, NOT_FOR_SALE.format(name=product.name or product.sku))
        return redirect("shop_bundles:product_list")
    form = AddToCartForm(request.POST)
    if not form.is_valid():
        messages.error(request, QUANTITY_REFUSED)
        return redirect("shop_bundles:product_detail", sku=product.sku)
    if product.stock <= 0:
        messages.error(request, f"{product.name or product.sku} is out of stock.")
        return redirect("shop_bundles:product_detail", sku=product.sku)
    SessionCart(request.session).add(product.pk, form.cleaned_data["quantity"])
    messages.success(request, f"Added {product.name or product.sku} to your cart.")
    return _redirect_back(request, reverse("shop_bundles:cart"))


@require_POST
def bundle_add(request: HttpRequest, campaign_id: int) -> HttpResponse:
    """Add ``quantity`` bundles (1..99; 1 when not posted) of a live offer and record an ``add_to_cart`` event.

    An offer that is no longer live for the shopper (ended, paused, another store) sends them back to
    the page they came from with :data:`OFFER_ENDED` and leaves the cart as it was; a holdout shopper
    (never shown offers) gets a 404.

    Another quantity (0, negative, not a number) is refused with the product add's message. Only
    whole bundles are added: when a line would pass ``MAX_QUANTITY`` units, fewer bundles are added
    and the message says how many and why (none: refused). The event records the bundles added.
    """
    offer = live_offer(campaign_id, store_id=shopper_store(request))
    group = request_group(request)
    if group == HOLDOUT:  # holdout shoppers are never shown an offer: a post for one is forged
        raise Http404("No such offer.")
    if offer is None:  # ended, paused or not in the shopper's store since the page was shown
        messages.error(request, OFFER_ENDED)
        return _redirect_back(request, reverse("shop_bundles:product_list"), referer=True)
    name = offer.campaign.name
    form = AddToCartForm(request.POST if "quantity" in request.POST else {"quantity": 1})
    if not form.is_valid():
        messages.error(request, QUANTITY_REFUSED)
        return _redirect_back(request, reverse("shop_bundles:product_detail",
                                               kwargs={"sku": offer.items[0].product.sku}), referer=True)
    wanted = form.cleaned_data["quantity"]
    cart = SessionCart(request.session)
    bundles, limit = wanted, None
    for item in offer.items:
        fit = cart.room(item.product.pk) // max(item.quantity, 1)
        if fit < bundles:
            bundles, limit = fit, item.product
    if bundles <= 0:
        label = limit.name or limit.sku
        has = cart.quantities().get(limit.pk, 0)
        messages.error(request, f"No bundle “{name}” was added: at most {MAX_QUANTITY} of {label} per order, "
                                f"and your cart has {has}.")
        return redirect("shop_bundles:cart")
    for item in offer.items:
        cart.add(item.product.pk, item.quantity * bundles)
    offer_event_add_to_cart(campaign_id=offer.campaign_id, session_key=_session_key(request), quantity=bundles,
                            experiment_group=group)
    if limit is not None:
        messages.warning(request, f"Added {bundles} of {wanted} bundles “{name}” to your cart: "
                                  f"at most {MAX_QUANTITY} of {limit.name or limit.sku} per order.")
    else:
        messages.success(request, f"Added the bundle “{name}” to your cart.")
    return _redirect_back(request, reverse("shop_bundles:cart"))


@require_GET
def cart_view(request: HttpRequest) -> HttpResponse:
    """The cart, re-priced from the catalogue with bundles re-formed on every view.

    The checkout form carries the cart's checkout token (one order per token) and the total shown,
    which the checkout compares with its own pricing.
    """
    cart = SessionCart(request.session)
    priced = cart_price(cart.quantities(), with_offers=request_group(request) != HOLDOUT,
                        store_id=shopper_store(request))
    initial = ({"checkout_token": _checkout_token(request), "expected_total": quantize_money(priced.total)}
               if priced.rows else {})
    return render(request, "shop_bundles/storefront/cart.html", {
        "priced": priced,
        "checkout_form": CheckoutForm(initial=initial, with_customer=customer_field_allowed(request)),
        "can_checkout": bool(priced.rows) and all(row.available for row in priced.rows),
    })


@require_POST
def cart_update(request: HttpRequest) -> HttpResponse:
    """Set the quantities of cart lines (``qty_<product id>``; 0 removes a line)."""
    cart = SessionCart(request.session)
    form = CartUpdateForm(request.POST, product_ids=list(cart.quantities()))
    if not form.is_valid():
        messages.error(request, "Quantities must be whole numbers between 0 and 99.")
        return redirect("shop_bundles:cart")
    for pid, qty in form.quantities().items():
        cart.set(pid, qty)
    messages.success(request, "Cart updated.")
    return redirect("shop_bundles:cart")


@require_POST
def cart_remove(request: HttpRequest, product_id: int) -> HttpResponse:
    """Remove one product from the cart."""
    SessionCart(request.session).remove(product_id)
    return redirect("shop_bundles:cart")


@require_http_methods(["GET", "POST"])
def checkout(request: HttpRequest) -> HttpResponse:
    """Place the order (POST). GET goes back to the cart, which holds the checkout form.

    The cart page's form posts its checkout token and the total shown. A token already used (a
    double or repeated submit, even concurrent) goes to the order placed with it, which is placed
    once; a total that changed since (a price, a paused or ended campaign) sends the shopper back
    to the cart with the new and old totals, and nothing is written. A POST without them (a
    script) is placed without either check; the replay posts its own per-basket token
    (``services.simulation.replay_checkout_token``) and no total.
    """
    if request.method != "POST":
        return redirect("shop_bundles:cart")
    cart = SessionCart(request.session)
    form = CheckoutForm(request.POST, with_customer=customer_field_allowed(request))
    if not form.is_valid():
        for error in form.errors.get("customer_id", []):
            messages.error(request, error)
        if set(form.errors) - {"customer_id"}:
            messages.error(request, FORM_OUT_OF_DATE)
        return redirect("shop_bundles:cart")
    token = form.cleaned_data.get("checkout_token") or None
    try:
        customer = None
        # A typed id (staff, or the replay) wins; else the signed-in shopper (SHOP_BUNDLES_CUSTOMER_RESOLVER).
        customer_id = form.cleaned_data.get("customer_id") or request_customer_id(request)
        if customer_id:
            customer = customer_get_or_create(external_id=customer_id)
        # The group is fixed by the identity the shopper browsed with, so the order is priced as the cart was.
        group = request_group(request)
        order = order_place(cart=cart, session_key=_session_key(request), customer=customer,
                            experiment_group=group, store_id=shopper_store(request),
                            checkout_token=token, expected_total=form.cleaned_data.get("expected_total"))
    except OrderAlreadyPlaced as placed:
        order = placed.order
        own = order.session_key == _session_key(request) or order.pk in request.session.get(ORDERS_SESSION_KEY, [])
        if not own:  # a token this session never held: show nothing of that order
            messages.error(request, FORM_OUT_OF_DATE)
            return redirect("shop_bundles:cart")
        # A concurrent submit that read the session before the first one saved it still holds the
        # spent cart and token; a later repeat of an old form leaves the session's newer cart alone.
        _order_recorded(request, cart, order, spent=request.session.get(CHECKOUT_TOKEN_SESSION_KEY) == token)
        messages.info(request, "This order was already placed; submitting the checkout again did not place "
                               "it twice.")
        return redirect("shop_bundles:order_detail", pk=order.pk)
    except ValidationError as exc:
        for message in exc.messages:
            messages.error(request, message)
        return redirect("shop_bundles:cart")
    _order_recorded(request, cart, order, spent=True)
    return redirect("shop_bundles:order_detail", pk=order.pk)


@require_http_methods(["GET", "POST"])
def store_choose(request: HttpRequest) -> HttpResponse:
    """Choose the shopper's store (POST ``store``; "" clears it); GET shows the choice.

    The product page then orders its offers by that store's attach rates
    (``selectors.offers.offers_for_product``), and the checkout records
    the store on the order. An unknown store id is refused with a message.
    "No store" is kept as a choice (""), so a signed-in shopper's usual store
    does not come back in its place.
    """
    if request.method == "POST":
        store = str(request.POST.get("store", "")).strip()
        if store and not store_known(store):  # one indexed EXISTS, not the whole store list
            messages.error(request, "Choose one of the listed stores.")
            return redirect("shop_bundles:store_choose")
        if store:
            request.session[STORE_SESSION_KEY] = store
            messages.success(request, f"Your store is now store {store}: offers are ordered for it.")
        else:
            request.session[STORE_SESSION_KEY] = ""
            messages.success(request, "No store chosen: offers are ordered for the whole shop.")
        return _redirect_back(request, reverse("shop_bundles:product_list"))
    store, source = shopper_store_source(request)
    form = StoreForm(initial={"store": store}, stores=known_stores())
    return render(request, "shop_bundles/storefront/store.html", {
        "form": form, "store": store, "usual": source == USUAL, "next": request.GET.get("next", ""),
    })


@require_GET
def order_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """Order confirmation; visible to the session that placed it (and to staff)."""
    order = get_object_or_404(Order.objects.select_related("customer"), pk=pk, source=Order.SOURCE_STOREFRONT)
    own = pk in request.session.get(ORDERS_SESSION_KEY, [])
    if not (own or getattr(request.user, "is_staff", False)):
        raise Http404("No such order.")
    lines = list(order.lines.select_related("product", "campaign").order_by("product__name", "product__sku"))
    for line in lines:
        line.amount = line.unit_price * line.quantity - line.discount
    return render(request, "shop_bundles/storefront/order_detail.html", {
        "order": order, "lines": lines, "campaigns": order.campaigns.all(),
    })
