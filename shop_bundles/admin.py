"""Django admin for shop staff: the suggestion review queue, campaigns, training and the data.

Every state change goes through a service in ``shop_bundles.services`` (which
checks permissions and records a ``StaffAction``); the admin only collects
the decision and reports successes and refusals with ``message_user``.

Big tables (orders, order lines, products, promotions, events) use
``list_select_related`` / prefetching and ``show_full_result_count = False``
so a changelist costs a handful of queries whatever the table size.
"""
from __future__ import annotations

import math

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Prefetch
from django.http import HttpResponseNotAllowed, HttpResponseRedirect
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from .models import (
    BundleCampaign,
    BundleCampaignItem,
    BundleCampaignStore,
    BundleSuggestion,
    BundleSuggestionItem,
    CancelledOrderLine,
    Customer,
    ExperimentDashboard,
    ImportedCancellation,
    ImportRun,
    ModelVersion,
    OfferEvent,
    Order,
    OrderEvent,
    OrderLine,
    Product,
    Promotion,
    StaffAction,
    TrainingRun,
)
from .storefront.cart import MAX_QUANTITY

MAX_LISTED_REFUSALS = 10


def _error_text(exc: Exception) -> str:
    """The plain message(s) of a ValidationError / PermissionDenied."""
    if isinstance(exc, ValidationError):
        return " ".join(exc.messages)
    return str(exc)


def _report(modeladmin, request, verb: str, done: list[str], refused: list[str]) -> None:
    """Tell the user what an action did: one success line, one warning listing refusals."""
    if done:
        modeladmin.message_user(request, f"{verb} {len(done)}: " + "; ".join(done[:MAX_LISTED_REFUSALS])
                                + (" …" if len(done) > MAX_LISTED_REFUSALS else ""), messages.SUCCESS)
    if refused:
        more = f" (and {len(refused) - MAX_LISTED_REFUSALS} more)" if len(refused) > MAX_LISTED_REFUSALS else ""
        modeladmin.message_user(request, f"Refused {len(refused)}: " + " | ".join(refused[:MAX_LISTED_REFUSALS])
                                + more, messages.WARNING)
    if not done and not refused:
        modeladmin.message_user(request, "Nothing to do.", messages.INFO)


# --------------------------------------------------------------------------- rendering helpers


LEGEND_CHAR_PX = 6  # width of one legend character at font-size 10 (generous for sans-serif)
LEGEND_ROW_PX = 14  # height of one legend row


def _round_label(value: float) -> str:
    """A value for a legend label: 3 significant digits (``-0.345``, ``1.23e+03`` for large ones)."""
    return f"{value:.3g}"


def svg_line_chart(series: dict[str, list[float]], *, width: int = 420, height: int = 180,
                   x_labels: tuple[str, str] | None = None, label: str = "training curve",
                   empty_text: str = "No training curve recorded.") -> str:
    """Render named numeric series (e.g. loss and val_loss per epoch) as a small inline SVG.

    Args:
        series: name → values (one per epoch); empty or non-finite values are skipped.
        width, height: size in pixels.
        x_labels: texts under the first and last point (default "epoch 1" / "epoch n").
        label: the chart's aria-label.
        empty_text: what to say instead of the chart when there is nothing to draw.

    Returns:
        Safe HTML (an ``<svg>`` element with one polyline per series, axis labels and a
        legend), or ``empty_text`` when there is nothing to draw. Legend entries are
        placed by the width of their labels (about 6 px per character at font size 10)
        and wrap to a new row, which makes the chart taller, instead of overlapping; the
        last values in the labels are rounded to 3 significant digits.
    """
    colours = ["#2b6cb0", "#dd6b20", "#2f855a", "#9b2c2c"]
    clean = {name: [float(v) for v in values if v is not None and math.isfinite(float(v))]
             for name, values in (series or {}).items()}
    clean = {name: values for name, values in clean.items() if values}
    if not clean:
        return format_html("<span>{}</span>", empty_text)
    # Legend layout first: entries placed by label width, wrapping to new rows (no overlap).
    legend, row, x = [], 0, 48
    for name, values in clean.items():
        text = f"{name} (last {_round_label(values[-1])})"
        entry_w = 14 + LEGEND_CHAR_PX * len(text) + 12
        if x > 48 and x + entry_w > width:
            row, x = row + 1, 48
        legend.append((x, row, text))
        x += entry_w
    height += LEGEND_ROW_PX * row
    pad_left, pad_right, pad_top, pad_bottom = 48, 10, 10, 34 + LEGEND_ROW_PX * row
    n = max(len(v) for v in clean.values())
    lo = min(min(v) for v in clean.values())
    hi = max(max(v) for v in clean.values())
    if hi - lo < 1e-12:
        hi, lo = hi + 0.5, lo - 0.5
    plot_w, plot_h = width - pad_left - pad_right, height - pad_top - pad_bottom

    def xy(i: int, value: float) -> str:
        x = pad_left + (plot_w * i / (n - 1) if n > 1 else plot_w / 2)
        y = pad_top + plot_h * (1 - (value - lo) / (hi - lo))
        return f"{x:.1f},{y:.1f}"

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             + format_html('aria-label="{}" style="background:#fff;border:1px solid #ddd">', label),
             f'<line x1="{pad_left}" y1="{pad_top}" x2="{pad_left}" y2="{pad_top + plot_h}" stroke="#999"/>',
             f'<line x1="{pad_left}" y1="{pad_top + plot_h}" x2="{pad_left + plot_w}" y2="{pad_top + plot_h}" '
             f'stroke="#999"/>',
             f'<text x="{pad_left - 4}" y="{pad_top + 8}" font-size="10" text-anchor="end">{hi:.3g}</text>',
             f'<text x="{pad_left - 4}" y="{pad_top + plot_h}" font-size="10" text-anchor="end">{lo:.3g}</text>',
             format_html('<text x="{}" y="{}" font-size="10">{}</text>', pad_left, pad_top + plot_h + 14,
                         x_labels[0] if x_labels else "epoch 1"),
             format_html('<text x="{}" y="{}" font-size="10" text-anchor="end">{}</text>', pad_left + plot_w,
                         pad_top + plot_h + 14, x_labels[1] if x_labels else f"epoch {n}")]
    for k, (name, values) in enumerate(clean.items()):
        colour = colours[k % len(colours)]
        points = " ".join(xy(i, v) for i, v in enumerate(values))
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{points}"/>')
        for i, v in enumerate(values):
            parts.append(f'<circle cx="{xy(i, v).split(",")[0]}" cy="{xy(i, v).split(",")[1]}" r="2" '
                         f'fill="{colour}"/>')
        legend_x, legend_row, text = legend[k]
        legend_y = height - 8 - LEGEND_ROW_PX * (row - legend_row)
        parts.append(f'<rect x="{legend_x}" y="{legend_y - 4}" width="10" height="3" fill="{colour}"/>')
        # series names come from our own JSON keys; escape them anyway
        parts.append(format_html('<text x="{}" y="{}" font-size="10">{}</text>', legend_x + 14, legend_y, text))
    parts.append("</svg>")
    return mark_safe("".join(str(p) for p in parts))  # noqa: S308 - every interpolated value is numeric or escaped


def _backtest_rows_html(rows: list, caption: str) -> str:
    """One backtest table as HTML: system, HR@10, NDCG@10, queries, seconds."""

    def fmt(value, pattern):
        return "" if value is None else pattern.format(value)

    body = format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", (
        (row.get("system", ""), fmt(row.get("hr@10"), "{:.4f}"), fmt(row.get("ndcg@10"), "{:.4f}"),
         fmt(row.get("queries"), "{:,}"), fmt(row.get("seconds"), "{:.1f}")) for row in rows))
    return format_html('<table class="backtest"><caption style="caption-side:top;text-align:left">{}</caption>'
                       "<thead><tr><th>system</th><th>HR@10</th><th>NDCG@10</th><th>queries</th><th>seconds</th>"
                       "</tr></thead><tbody>{}</tbody></table>", caption, body)


def backtest_table(metrics: dict | None) -> str:
    """Render the backtest tables of ``ModelVersion.metrics`` as HTML.

    ``rows`` is the anonymous (product page) table; ``shopper_rows`` (known
    shopper: the query carries the customer id) and ``cold_rows`` (anchors
    with fewer than 5 training baskets) follow when the model reported them.
    """
    metrics = metrics or {}
    rows = metrics.get("rows") or []
    if not rows:
        return format_html("<span>{}</span>", "No backtest recorded.")
    head = f"split date {metrics.get('split_date', '?')}, {metrics.get('queries', '?')} queries"
    parts = [_backtest_rows_html(rows, f"Anonymous shopper (product page): {head}")]
    if metrics.get("shopper_rows"):
        parts.append(_backtest_rows_html(metrics["shopper_rows"], "Known shopper (query carries the customer id)"))
    if metrics.get("cold_rows"):
        parts.append(_backtest_rows_html(metrics["cold_rows"], "Cold start: anchors with fewer than 5 training baskets"))
    return format_html_join("", "<div style='margin-bottom:1em'>{}</div>", ((p,) for p in parts))


def _percent(value) -> str:
    """A 0..1 rate as a percentage: 2 decimals under 10 % (``2.12%``), else 1 (``45.3%``)."""
    if value is None:
        return "—"
    return f"{value:.2%}" if abs(value) < 0.1 else f"{value:.1%}"


def _currency(value, places: int = 2) -> str:
    """An amount in the shop currency (``SHOP_BUNDLES_CURRENCY``), e.g. ``$12.50`` or ``-$0.0123``.

    ``places`` > 2 is for the small per-offer-shown expectations; Decimals are
    rounded half-up, floats (display-only economics) with Python's rounding.
    """
    from decimal import ROUND_HALF_UP, Decimal

    from django.conf import settings

    if value is None:
        return "—"
    amount = Decimal(str(value)).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    code = getattr(settings, "SHOP_BUNDLES_CURRENCY", "USD")
    symbol = {"USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥"}.get(code)
    sign = "-" if amount < 0 else ""
    number = f"{abs(amount):,.{places}f}"
    return f"{sign}{symbol}{number}" if symbol else f"{sign}{number} {code}"


def economics_html(economics: dict | None) -> str:
    """Render ``BundleSuggestion.economics`` as a summary, the grid table and an SVG chart of margin vs discount.

    Figures are per offer shown, in shop currency (display only).
    """
    if not economics or not economics.get("table"):
        return format_html("<span>{}</span>", "No economics computed (run scoring or the economics refresh).")
    offer = economics.get("offer")
    chosen = offer["discount"] if offer else None
    response = economics.get("response") or {}
    if offer:
        headline = format_html(
            "<p>Discount on approval: <strong>{}%</strong> ({}). At that discount: take rate {}, incremental "
            "revenue {} and incremental margin <strong>{}</strong> per offer shown.</p>",
            f"{100 * offer['discount']:g}", offer.get("note", ""), f"{offer['take_rate']:.2%}",
            _currency(offer["incremental_revenue"], 4), _currency(offer["incremental_margin"], 4))
    else:
        headline = format_html(
            "<p><strong>No valid offer</strong>: no discount on the grid keeps the bundle price above the floor "
            "price {}; approving this suggestion will be refused.</p>", _currency(economics["floor_price"]))
    summary = format_html(
        "{}<p>Regular price {}, cost {} ({}), floor price {} (min margin {}%){}.<br>Take-rate response: "
        "department “{}”, slope b = {} log-odds per unit depth ({}, {} product-weeks); base take {}, natural "
        "attach rate {} (= confidence: anchor baskets that already hold the companions).</p>",
        headline, _currency(economics["regular_price"]), _currency(economics["cost"]),
        economics.get("cost_source", ""), _currency(economics["floor_price"]),
        f"{100 * economics.get('min_margin_rate', 0):g}",
        " — the margin floor limits the discount" if economics.get("floor_binding") else "",
        economics.get("department", ""), f"{response.get('b', 0):.2f}",
        (f"shrunk, then capped at {response.get('b', 0):g}, the steepest slope allowed"
         if response.get("source") == "capped" else response.get("source", "")),
        response.get("n_obs", 0), f"{economics.get('base_take_rate', 0):.2%}",
        f"{economics.get('natural_attach_rate', 0):.2%}")
    rows = format_html_join("", "<tr{}><td>{}%</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", (
        (mark_safe(' style="font-weight:bold;background:#ebf8ff"') if r["discount"] == chosen else "",
         f"{100 * r['discount']:g}", f"{r['take_rate']:.2%}", _currency(r["incremental_revenue"], 4),
         _currency(r["incremental_margin"], 4), "yes" if r["allowed"] else "below floor")
        for r in economics["table"]))
    table = format_html("<table><thead><tr><th>discount</th><th>take rate</th><th>incremental revenue</th>"
                        "<th>incremental margin</th><th>allowed</th></tr></thead><tbody>{}</tbody></table>", rows)
    grid = economics["table"]
    chart = svg_line_chart({"incremental margin": [r["incremental_margin"] for r in grid],
                            "incremental revenue": [r["incremental_revenue"] for r in grid]},
                           x_labels=(f"{100 * grid[0]['discount']:g}% off", f"{100 * grid[-1]['discount']:g}% off"),
                           label="incremental margin vs discount")
    return format_html("{}{}<div>{}</div>", summary, table, chart)


def baseline_warnings(metrics: dict | None, key: str = "ndcg@10") -> list[str]:
    """Warnings when a trained model scores below its baseline in the backtest (NDCG@10).

    Checks the anonymous model ("model") against the co-occurrence count
    ("cooccurrence_count") in ``rows``, and the shopper model ("shopper_model")
    against repeat + count ("repeat_count") in ``shopper_rows``. Missing rows
    give no warning.
    """
    def value(rows, system):
        return next((r.get(key) for r in rows or [] if r.get("system") == system), None)

    metrics = metrics or {}
    out = []
    for table, model, baseline, model_name, baseline_name in (
            ("rows", "model", "cooccurrence_count", "anonymous model", "co-occurrence count"),
            ("shopper_rows", "shopper_model", "repeat_count", "shopper model", "repeat + count")):
        m, b = value(metrics.get(table), model), value(metrics.get(table), baseline)
        if m is not None and b is not None and m < b:
            out.append(f"The {model_name} scores below the {baseline_name} baseline: {key.upper()} {m:.4f} < "
                       f"{b:.4f}. Do not activate it without looking into why.")
    return out


def _warnings_html(metrics: dict | None) -> str:
    """The :func:`baseline_warnings` as red lines, or "—"."""
    warnings = baseline_warnings(metrics)
    if not warnings:
        return "—"
    return format_html_join("", '<p style="color:#c53030;font-weight:bold">⚠ {}</p>', ((w,) for w in warnings))


def _json_block(value) -> str:
    """A JSON value as an indented, escaped, read-only ``<pre>`` block."""
    import json

    return format_html('<pre style="white-space:pre-wrap;max-width:80em;max-height:30em;overflow:auto">{}</pre>',
                       json.dumps(value or {}, indent=2, sort_keys=True, default=str))


def _metric(metrics: dict | None, system: str, key: str = "ndcg@10"):
    """One value of a backtest table, or None."""
    for row in (metrics or {}).get("rows") or []:
        if row.get("system") == system:
            return row.get(key)
    return None


class ReadOnlyMixin:
    """Admin mixin: rows are shown, never added, edited or deleted by hand (history, events, audit, runs).

    Delete is off for everyone, superusers included (no "Delete selected" action, 403 on the delete
    view): a training run is the record that stops a repeated nightly retrain, and import runs, order
    and offer events are the history the experiment and reports are computed from. Rows still go when
    their parent goes in code (e.g. ``on_delete=CASCADE``); the admin refuses to delete a parent whose
    cascade would take rows of an admin with delete off, and names them.
    """

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


# --------------------------------------------------------------------------- suggestions (review queue)


class BundleSuggestionItemInline(ReadOnlyMixin, admin.TabularInline):
    """The products of a suggestion, read-only (anchor first)."""

    model = BundleSuggestionItem
    extra = 0
    can_delete = False
    fields = ("position", "product", "product_price", "product_stock", "product_active")
    readonly_fields = fields

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("product")

    @admin.display(description="price")
    def product_price(self, obj):
        return obj.product.price

    @admin.display(description="stock")
    def product_stock(self, obj):
        return obj.product.stock

    @admin.display(description="active", boolean=True)
    def product_active(self, obj):
        return obj.product.active


class SuggestionScopeFilter(admin.SimpleListFilter):
    """Chain-wide suggestions (every store) or store-specific ones (``store_ids`` set)."""

    title = "scope"
    parameter_name = "scope"

    def lookups(self, request, model_admin):
        return (("chain", "Whole shop"), ("store", "Store-specific"))

    def queryset(self, request, queryset):
        if self.value() == "chain":
            return queryset.filter(store_ids=[])
        if self.value() == "store":
            return queryset.exclude(store_ids=[])
        return queryset


class SuggestionStatusFilter(admin.SimpleListFilter):
    """The review queue opens on what needs a decision: pending suggestions, unless staff pick a status or "All"."""

    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return (*BundleSuggestion.STATUS_CHOICES, ("all", "All"))

    def choices(self, changelist):
        value = self.value() or BundleSuggestion.PENDING
        for lookup, title in self.lookup_choices:
            yield {"selected": value == lookup, "query_string": changelist.get_query_string({self.parameter_name: lookup}),
                   "display": title}

    def queryset(self, request, queryset):
        value = self.value() or BundleSuggestion.PENDING
        return queryset if value == "all" else queryset.filter(status=value)


def items_label(items) -> str:
    """Bundle items as "name (SKU) + name (SKU)" (a quantity above 1 as "2 x name (SKU)"), in the given order.

    Products of one name (sizes, private label) stay apart in the review queue and the campaign list.
    """
    return " + ".join((f"{item.quantity} x " if getattr(item, "quantity", 1) > 1 else "")
                      + (f"{item.product.name} ({item.product.sku})" if item.product.name else item.product.sku)
                      for item in items)


@admin.register(BundleSuggestion)
class BundleSuggestionAdmin(admin.ModelAdmin):
    """Review queue: staff compare the evidence and approve or reject suggested bundles in bulk."""

    list_display = ("bundle", "scope", "score_display", "co_purchase_count", "lift_display", "confidence_display",
                    "attach_rate_display", "suggested_discount_percent", "margin_display", "model_version", "status")
    list_filter = (SuggestionStatusFilter, SuggestionScopeFilter, "model_version",
                   ("anchor__department", admin.AllValuesFieldListFilter))
    search_fields = ("signature", "anchor__name", "items__product__name")
    ordering = ("-score", "pk")
    list_per_page = 50
    show_full_result_count = False
    actions = ("approve_selected", "reject_selected")
    inlines = (BundleSuggestionItemInline,)
    readonly_fields = ("bundle", "status", "score_display", "co_purchase_count", "support_display",
                       "confidence_display", "lift_display", "attach_rate_detail", "discount_display",
                       "regular_price", "reasons_text",
                       "model_version", "signature", "created_at", "reviewed_by", "reviewed_at", "campaign_link",
                       "economics_panel", "scope", "store_evidence_panel")
    fieldsets = (
        (None, {"fields": ("bundle", "status", "campaign_link", "model_version", "created_at",
                           "reviewed_by", "reviewed_at")}),
        ("Evidence", {"fields": ("score_display", "co_purchase_count", "support_display", "confidence_display",
                                 "lift_display", "attach_rate_detail", "regular_price", "discount_display",
                                 "reasons_text", "signature")}),
        ("Stores", {"fields": ("scope", "store_evidence_panel")}),
        ("Economics (per offer shown)", {"fields": ("economics_panel",)}),
    )

    def get_queryset(self, request):
        items = BundleSuggestionItem.objects.select_related("product").order_by("position")
        return (super().get_queryset(request).select_related("model_version", "anchor", "reviewed_by")
                .prefetch_related(Prefetch("items", queryset=items)))

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        # The detail page is read-only; decisions are taken with the actions.
        return False

    def has_view_permission(self, request, obj=None):
        return super().has_view_permission(request, obj) or request.user.has_perm(
            "shop_bundles.approve_bundlesuggestion")

    def has_approve_permission(self, request) -> bool:
        """Approving and rejecting need the dedicated permission shop_bundles.approve_bundlesuggestion."""
        return request.user.has_perm("shop_bundles.approve_bundlesuggestion")

    @admin.display(description="products")
    def bundle(self, obj):
        """Items as "name (SKU)": products of one name (sizes, private label) stay apart in the queue."""
        return items_label(obj.items.all())

    @admin.display(description="stores")
    def scope(self, obj):
        """"all stores" for a chain-wide suggestion, else the stores a store-specific one is for."""
        stores = list(obj.store_ids or [])
        if not stores:
            return "all stores"
        return "store " + stores[0] if len(stores) == 1 else f"{len(stores)} stores: " + ", ".join(stores)

    @admin.display(description="evidence by store")
    def store_evidence_panel(self, obj):
        """Each store's own counts for a store-specific suggestion (``store_specific_bundles``)."""
        rows = obj.store_evidence or []
        if not rows:
            return ("A whole-shop suggestion: approving it offers the bundle in every store (the product page "
                    "orders offers by each store's attach rate once the campaign is scored).")
        table = format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>"
                                     "<td>{}</td></tr>", (
            (r.get("store_id", ""), r.get("co_purchase_count", 0), r.get("shoppers", "—"), r.get("anchor_baskets", 0),
             _percent(r.get("attach_rate", 0.0)), _percent(r.get("chain_attach_rate", 0.0)),
             f"{r.get('lift', 0.0):.1f}") for r in rows))
        return format_html(
            '<table><thead><tr><th>store</th><th>baskets with both</th><th>shoppers</th>'
            '<th>baskets with the anchor</th><th>attach rate in the store (shrunk)</th>'
            '<th>attach rate, all stores</th><th>lift in the store</th></tr></thead><tbody>{}</tbody></table>'
            '<p class="help">Approving makes a campaign offered and priced only to shoppers who chose one of '
            'these stores; edit the stores on the campaign page. The store rate is shrunk towards the '
            'all-stores rate with 10 baskets.</p>', table)

    @admin.display(description="score", ordering="score")
    def score_display(self, obj):
        return f"{obj.score:.3f}"

    @admin.display(description="lift", ordering="lift")
    def lift_display(self, obj):
        return f"{obj.lift:.2f}"

    @admin.display(description="confidence", ordering="confidence")
    def confidence_display(self, obj):
        return _percent(obj.confidence)

    @admin.display(description="support", ordering="support")
    def support_display(self, obj):
        return _percent(obj.support)

    @admin.display(description="expected attach rate", ordering="expected_attach_rate")
    def attach_rate_display(self, obj):
        return f"{obj.expected_attach_rate:.1%}"

    @admin.display(description="expected attach rate (no offer)")
    def attach_rate_detail(self, obj):
        """The attach rate without any offer: by design equal to the confidence (see the economics panel)."""
        return format_html("{} <span class='help'>{}</span>", _percent(obj.expected_attach_rate),
                           "= confidence by design: the share of anchor baskets that already hold the "
                           "companions, before any offer. What an offer adds is the take rate in the economics "
                           "panel below.")

    @admin.display(description="discount on approval")
    def discount_display(self, obj):
        """The one discount an approval with the defaults uses, and why."""
        offer = (obj.economics or {}).get("offer")
        if offer:
            return format_html("{}% ({})", f"{obj.suggested_discount_percent.normalize():f}", offer.get("note", ""))
        return f"{obj.suggested_discount_percent.normalize():f}%"

    @admin.display(description="regular bundle price")
    def regular_price(self, obj):
        from .services.campaigns import bundle_regular_price

        return _currency(bundle_regular_price(item.product for item in obj.items.all()))

    @admin.display(description="discount optimisation")
    def economics_panel(self, obj):
        return economics_html(obj.economics)

    @admin.display(description="exp. margin / offer")
    def margin_display(self, obj):
        economics = obj.economics or {}
        value = (economics.get("offer") or economics).get("incremental_margin")
        return "—" if value is None else f"{value:.3f}"

    @admin.display(description="reasons")
    def reasons_text(self, obj):
        return format_html('<div style="white-space:pre-wrap;max-width:60em">{}</div>', obj.reasons or "—")

    @admin.display(description="campaign")
    def campaign_link(self, obj):
        campaign = BundleCampaign.objects.filter(suggestion=obj).first()
        if campaign is None:
            return "—"
        url = reverse("admin:shop_bundles_bundlecampaign_change", args=[campaign.pk])
        return format_html('<a href="{}">{}</a> ({})', url, campaign, campaign.get_status_display())

    def _decided_elsewhere(self, request, queryset) -> list[str]:
        """Refusal lines for ticked suggestions the action's queryset left out.

        Django applies an action to the ticked rows that still match the list's
        filters, and the queue shows pending suggestions by default: a row
        another reviewer approved or rejected since the page was loaded is then
        dropped silently ("Nothing to do."). Each such row is named with who
        decided it and when (``services.campaigns``' "Already approved by X at T").
        """
        from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME

        from .services.campaigns import not_pending_message

        if request.POST.get("select_across") == "1":
            return []
        ticked = {int(pk) for pk in request.POST.getlist(ACTION_CHECKBOX_NAME) if str(pk).isdigit()}
        missing = ticked - set(queryset.values_list("pk", flat=True))
        left_out = self.get_queryset(request).filter(pk__in=missing).select_related("reviewed_by")
        return [f"{self.bundle(s)}: {not_pending_message(s)}" for s in left_out.order_by("-score", "pk")]

    @admin.action(description="Approve selected suggestions (create campaigns)", permissions=["approve"])
    def approve_selected(self, request, queryset):
        """Approve each selected suggestion with its suggested discount; report refusals one by one."""
        from .services.campaigns import suggestion_approve

        done, refused = [], self._decided_elsewhere(request, queryset)
        for suggestion in queryset.order_by("-score", "pk"):
            label = self.bundle(suggestion)
            try:
                campaign = suggestion_approve(suggestion=suggestion, user=request.user)
            except (ValidationError, PermissionDenied) as exc:
                refused.append(f"{label}: {_error_text(exc)}")
            else:
                done.append(f"{label} ({campaign.discount_value} % off)" if campaign.discount_type == "percent"
                            else label)
        _report(self, request, "Approved", done, refused)

    @admin.action(description="Reject selected suggestions", permissions=["approve"])
    def reject_selected(self, request, queryset):
        """Reject each selected pending suggestion."""
        from .services.campaigns import suggestion_reject

        done, refused = [], self._decided_elsewhere(request, queryset)
        for suggestion in queryset.order_by("-score", "pk"):
            label = self.bundle(suggestion)
            try:
                suggestion_reject(suggestion=suggestion, user=request.user)
            except (ValidationError, PermissionDenied) as exc:
                refused.append(f"{label}: {_error_text(exc)}")
            else:
                done.append(label)
        _report(self, request, "Rejected", done, refused)


# --------------------------------------------------------------------------- campaigns


class BundleCampaignItemFormSet(forms.BaseInlineFormSet):
    """A campaign's products, checked together with the campaign's discount (case M3).

    Runs on the add form as on the change form, against the products and
    units being saved (not the ones saved before): a bundle needs at least 2
    units, each item from 1 to ``MAX_QUANTITY`` (99, what a cart holds), an
    active campaign only products shoppers can buy (active, in stock,
    priced), and its discount must fit those units
    (``services.campaigns.campaign_discount_problem``: not above or equal to
    their shelf total, and not below the margin floor when every cost is
    known), as approval requires.
    """

    def clean(self):
        from .services.campaigns import campaign_discount_problem, product_unsellable

        super().clean()
        if any(self.errors):
            return
        items = []
        for form in self.forms:
            data = getattr(form, "cleaned_data", None) or {}
            if data.get("DELETE"):
                continue
            saved = form.instance if form.instance.product_id else None
            product = data.get("product") if "product" in form.fields else getattr(saved, "product", None)
            quantity = data.get("quantity") if "quantity" in form.fields else getattr(saved, "quantity", 0)
            if product is None:
                continue
            if (quantity or 0) < 1:
                raise ValidationError(f"{product}: units per bundle must be at least 1.")
            if quantity > MAX_QUANTITY:  # the cart holds at most 99 of a product: such a bundle could never be added
                raise ValidationError(f"{product}: units per bundle must be at most {MAX_QUANTITY} (a cart holds at "
                                      f"most {MAX_QUANTITY} of a product), not {quantity}.")
            items.append(BundleCampaignItem(product=product, quantity=int(quantity), position=len(items)))
        if sum(item.quantity for item in items) < 2:
            raise ValidationError("A bundle needs at least 2 units (two products, or 2 units of one product).")
        campaign = self.instance  # the campaign form's cleaned values are already on it
        if campaign.status == BundleCampaign.ACTIVE:  # as approval refuses them (the storefront would hide it)
            unsellable = [p for p in (product_unsellable(item.product) for item in items) if p]
            if unsellable:
                raise ValidationError("An active campaign cannot hold a product shoppers cannot buy: "
                                      + "; ".join(unsellable) + ". Fix the product first, or save the campaign "
                                      "as paused and resume it when the product is back.")
        if campaign.discount_type and campaign.discount_value is not None:
            problem = campaign_discount_problem(campaign, items)
            if problem:
                raise ValidationError(problem)


class CampaignPartInline(admin.TabularInline):
    """An inline that is part of the campaign (its products, its store limits): whoever may edit the
    campaign (Django's change permission and the dedicated manage permission, as
    ``BundleCampaignAdmin``) may edit it, and viewers of the campaign see it. So the products inline,
    which checks the discount against the bundle price, is on every form that can save a campaign."""

    def has_view_permission(self, request, obj=None):
        return request.user.has_perm("shop_bundles.view_bundlecampaign") or self.has_change_permission(request, obj)

    def has_change_permission(self, request, obj=None):
        return (request.user.has_perm("shop_bundles.change_bundlecampaign")
                and request.user.has_perm("shop_bundles.manage_bundlecampaign"))

    def has_add_permission(self, request, obj=None):
        return self.has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return self.has_change_permission(request, obj)


class BundleCampaignItemInline(CampaignPartInline):
    """Products of a campaign (units per bundle, position)."""

    model = BundleCampaignItem
    formset = BundleCampaignItemFormSet
    extra = 0
    fields = ("position", "product", "quantity", "product_price", "product_available")
    readonly_fields = ("product_price", "product_available")
    raw_id_fields = ("product",)

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("product")

    @admin.display(description="shelf price")
    def product_price(self, obj):
        return obj.product.price if obj.product_id else "—"

    @admin.display(description="active & in stock", boolean=True)
    def product_available(self, obj):
        return obj.product.available if obj.product_id else None


class BundleCampaignStoreForm(forms.ModelForm):
    """One store limit: a store of the order history (the store page offers shoppers only those, so a
    campaign limited to any other store would be shown to nobody)."""

    class Meta:
        model = BundleCampaignStore
        fields = ("store_id",)

    def clean_store_id(self):
        from .storefront.stores import store_known

        store = str(self.cleaned_data.get("store_id") or "").strip()
        if store and not store_known(store):
            raise ValidationError(f"No order of the history was placed in store {store!r}, and shoppers can only "
                                  "choose such stores, so the campaign would be shown to nobody. Check the store "
                                  "id (as in the orders' store column).")
        return store


class BundleCampaignStoreInline(CampaignPartInline):
    """Stores a campaign is limited to; none = every store (and shoppers with no store chosen)."""

    model = BundleCampaignStore
    form = BundleCampaignStoreForm
    extra = 0
    fields = ("store_id",)
    verbose_name = "store limit"
    verbose_name_plural = "Only in these stores (none: every store)"


class BundleCampaignForm(forms.ModelForm):
    """Campaign add / edit form. The discount is checked against the bundle's regular price by the
    products inline (``BundleCampaignItemFormSet``, case M3), which sees the products being saved."""

    class Meta:
        model = BundleCampaign
        fields = ("name", "status", "status_reason", "discount_type", "discount_value", "starts_at", "ends_at")

    def clean_discount_value(self):
        """Plain decimal notation only (``10``, ``2.50``; not ``1e1``, which Django's DecimalField reads), and
        not negative, said here once (else the database constraint's own message is shown beside it)."""
        from .api import PLAIN_DECIMAL

        value = self.cleaned_data.get("discount_value")
        raw = str(self.data.get(self.add_prefix("discount_value"), "")).strip()
        if raw and not PLAIN_DECIMAL.fullmatch(raw):
            raise ValidationError(f"Enter the discount as a plain number such as 10 or 2.50, not {raw!r}.")
        if value is not None and value < 0:
            raise ValidationError(f"The discount must be 0 or more, not {value}.")
        return value

    def clean(self):
        data = super().clean()
        starts, ends = data.get("starts_at"), data.get("ends_at")
        if starts and ends and ends <= starts:
            self.add_error("ends_at", "The campaign must end after it starts.")
        return data


@admin.register(BundleCampaign)
class BundleCampaignAdmin(admin.ModelAdmin):
    """Approved bundle offers: edit discount and dates, pause or resume; every change is recorded."""

    form = BundleCampaignForm
    list_display = ("name", "items_column", "status", "status_reason", "discount_type", "discount_value", "starts_at",
                    "ends_at", "approved_by", "approved_at", "created_by")
    list_filter = ("status", "discount_type")
    search_fields = ("name", "items__product__sku", "items__product__name")
    list_select_related = ("approved_by", "created_by")
    date_hierarchy = "starts_at"
    inlines = (BundleCampaignItemInline, BundleCampaignStoreInline)
    actions = ("pause_selected", "resume_selected", "end_selected")
    readonly_fields = ("suggestion_link", "created_by", "created_at", "approved_by", "approved_at", "updated_at",
                       "history", "store_ranking")
    fieldsets = (
        (None, {"fields": ("name", "status", "status_reason", "suggestion_link")}),
        ("Offer", {"fields": ("discount_type", "discount_value", "starts_at", "ends_at")}),
        ("Stores", {"fields": ("store_ranking",)}),
        ("Who and when", {"fields": ("created_by", "created_at", "approved_by", "approved_at", "updated_at",
                                     "history")}),
    )

    def has_manage_permission(self, request) -> bool:
        """Pausing and resuming need shop_bundles.manage_bundlecampaign."""
        return request.user.has_perm("shop_bundles.manage_bundlecampaign")

    def has_add_permission(self, request):
        """Adding a campaign by hand needs Django's add permission and the dedicated manage permission."""
        return super().has_add_permission(request) and self.has_manage_permission(request)

    def has_change_permission(self, request, obj=None):
        """Editing needs Django's change permission and the dedicated manage permission (else read-only)."""
        return super().has_change_permission(request, obj) and self.has_manage_permission(request)

    def get_queryset(self, request):
        items = BundleCampaignItem.objects.select_related("product").order_by("position", "id")
        return super().get_queryset(request).prefetch_related(Prefetch("items", queryset=items))

    def get_readonly_fields(self, request, obj=None):
        """An existing campaign's status (and its reason) change only through the pause / resume actions
        and the automatic pause, which check the campaign and record the action as such."""
        fields = tuple(super().get_readonly_fields(request, obj))
        return fields + ("status", "status_reason") if obj is not None else fields

    @admin.display(description="products")
    def items_column(self, obj):
        """Items as "name (SKU)", so two campaigns of same-named products can be told apart (not named
        ``products``: that is the model's many-to-many field, which the changelist would show instead)."""
        return items_label(obj.items.all())

    @admin.display(description="suggestion")
    def suggestion_link(self, obj):
        if not obj.suggestion_id:
            return "—"
        url = reverse("admin:shop_bundles_bundlesuggestion_change", args=[obj.suggestion_id])
        return format_html('<a href="{}">suggestion {}</a>', url, obj.suggestion_id)

    @admin.display(description="attach rate by store (anchor's page)")
    def store_ranking(self, obj):
        """The anchor page's chain-wide attach rate and model score, and the stores where the bundle is
        taken most and least (``OfferStoreScore``, hourly ``rank_offers_by_store``); the product page
        orders a shopper's offers by the attach rate of their store."""
        from .models import OfferStoreScore

        anchor = obj.items.order_by("position", "id").first() if obj.pk else None
        rows = list(OfferStoreScore.objects.filter(campaign=obj, product_id=anchor.product_id).order_by(
            "-attach_rate", "-score", "store_id")) if anchor else []
        if not rows:
            return "Not scored yet (the hourly store ranking, or manage.py rank_store_offers, scores open campaigns)."
        chain = next((r for r in rows if r.store_id == ""), None)
        stores = [r for r in rows if r.store_id]
        shown = stores[:5] + stores[5:][-3:]
        head = format_html("Chain-wide: attach rate {} ({} of {} baskets with the anchor hold the bundle), model "
                           "score {}; {} stores with their own rate.",
                           f"{chain.attach_rate:.1%}" if chain else "—", chain.co_purchase_count if chain else 0,
                           chain.anchor_baskets if chain else 0, f"{chain.score:.3f}" if chain else "—", len(stores))
        table = format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", (
            (r.store_id, f"{r.attach_rate:.1%}", r.co_purchase_count, r.anchor_baskets, f"{r.score:.3f}")
            for r in shown))
        return format_html('{}<table><thead><tr><th>store</th><th>attach rate (shrunk)</th>'
                           '<th>baskets with the bundle</th><th>baskets with the anchor</th><th>model score</th>'
                           '</tr></thead><tbody>{}</tbody></table><p class="help">Highest five and lowest three '
                           "stores. A store's rate is its own share shrunk towards the chain-wide one with 10 "
                           "baskets; the product page orders offers by the shopper's store's rate (else the "
                           "chain-wide one).</p>", head, table)

    @admin.display(description="staff actions")
    def history(self, obj):
        if not obj.pk:
            return "—"
        actions = obj.actions.select_related("user").order_by("-created_at")[:20]
        return format_html_join(mark_safe("<br>"), "{} {} by {}{}", (
            (a.created_at.strftime("%Y-%m-%d %H:%M"), a.action, a.user or "the system",
             f" — {a.detail}" if a.detail else "") for a in actions)) or "—"

    def save_model(self, request, obj, form, change):
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)
        if change and form.changed_data:
            changes = ", ".join(f"{name}={form.cleaned_data.get(name)}" for name in form.changed_data)
            StaffAction.objects.create(user=request.user, action="edit", campaign=obj,
                                       suggestion_id=obj.suggestion_id, detail=changes[:2000])
        elif not change:
            StaffAction.objects.create(user=request.user, action="create", campaign=obj, detail=str(obj))

    def save_formset(self, request, form, formset, change):
        """Save the inlines; a change of the store limits is recorded as a staff action."""
        before = sorted(form.instance.store_limits.values_list("store_id", flat=True)) if form.instance.pk else []
        super().save_formset(request, form, formset, change)
        if formset.model is BundleCampaignStore and change:
            after = sorted(form.instance.store_limits.values_list("store_id", flat=True))
            if after != before:
                StaffAction.objects.create(
                    user=request.user, action="edit", campaign=form.instance,
                    suggestion_id=form.instance.suggestion_id,
                    detail=f"stores: {', '.join(after) or 'every store'} (was {', '.join(before) or 'every store'})")

    @admin.action(description="Pause selected campaigns", permissions=["manage"])
    def pause_selected(self, request, queryset):
        """Pause each selected active campaign."""
        from .services.campaigns import campaign_pause

        done, refused = [], []
        for campaign in queryset:
            try:
                campaign_pause(campaign=campaign, user=request.user, reason="paused in the admin")
            except (ValidationError, PermissionDenied) as exc:
                refused.append(f"{campaign}: {_error_text(exc)}")
            else:
                done.append(str(campaign))
        _report(self, request, "Paused", done, refused)

    @admin.action(description="Resume selected campaigns", permissions=["manage"])
    def resume_selected(self, request, queryset):
        """Resume each selected paused campaign."""
        from .services.campaigns import campaign_resume

        done, refused = [], []
        for campaign in queryset:
            try:
                campaign_resume(campaign=campaign, user=request.user)
            except (ValidationError, PermissionDenied) as exc:
                refused.append(f"{campaign}: {_error_text(exc)}")
            else:
                done.append(str(campaign))
        _report(self, request, "Resumed", done, refused)

    @admin.action(description="End selected campaigns now (for good; they cannot be resumed)",
                  permissions=["manage"])
    def end_selected(self, request, queryset):
        """End each selected campaign now (``services.campaigns.campaign_end``), after a confirmation page
        (it cannot be undone) that also takes the reason."""
        from django.template.response import TemplateResponse

        from .services.campaigns import campaign_end

        if request.POST.get("post") != "yes":
            return TemplateResponse(request, "admin/shop_bundles/bundlecampaign/end_confirmation.html", {
                **self.admin_site.each_context(request), "title": "End campaigns now",
                "opts": self.model._meta, "campaigns": list(queryset)})
        reason = str(request.POST.get("reason", "")).strip() or "ended in the admin"
        done, refused = [], []
        for campaign in queryset:
            try:
                campaign_end(campaign=campaign, user=request.user, reason=reason)
            except (ValidationError, PermissionDenied) as exc:
                refused.append(f"{campaign}: {_error_text(exc)}")
            else:
                done.append(str(campaign))
        _report(self, request, "Ended", done, refused)


@admin.register(StaffAction)
class StaffActionAdmin(ReadOnlyMixin, admin.ModelAdmin):
    """The audit trail, read-only."""

    list_display = ("created_at", "user", "action", "suggestion", "campaign", "detail")
    list_filter = ("action",)
    search_fields = ("user__username", "detail", "campaign__name", "suggestion__signature")
    list_select_related = ("user", "suggestion", "campaign")
    date_hierarchy = "created_at"
    show_full_result_count = False

    def has_delete_permission(self, request, obj=None):
        return False


# --------------------------------------------------------------------------- training and model versions


@admin.register(TrainingRun)
class TrainingRunAdmin(ReadOnlyMixin, admin.ModelAdmin):
    """Training runs with live progress, timings, errors and the training curve; "Retrain now" queues a run."""

    change_list_template = "admin/shop_bundles/trainingrun/change_list.html"
    list_display = ("id", "status", "progress_bar", "stage", "trigger", "created_at", "started_at", "duration",
                    "model_version", "requested_by")
    list_filter = ("status",)
    list_select_related = ("model_version", "requested_by")
    actions = ("retrain_now",)
    readonly_fields = ("status", "slot", "progress_bar", "stage", "requested_by", "created_at", "started_at",
                       "finished_at", "duration", "data_start", "data_end", "split_date", "params", "model_version",
                       "baseline_check", "backtest", "training_curve", "error_text")
    fieldsets = (
        (None, {"fields": ("status", "progress_bar", "stage", "slot", "requested_by", "model_version")}),
        ("Timing", {"fields": ("created_at", "started_at", "finished_at", "duration")}),
        ("Data", {"fields": ("data_start", "data_end", "split_date", "params")}),
        ("Result", {"fields": ("baseline_check", "backtest", "training_curve", "error_text")}),
    )

    @admin.display(description="below baseline?")
    def baseline_check(self, obj):
        """A visible warning when a model scores below its baseline (``baseline_warnings``)."""
        return _warnings_html(obj.metrics)

    def has_retrain_permission(self, request) -> bool:
        """Queuing a retrain needs shop_bundles.add_trainingrun."""
        return request.user.has_perm("shop_bundles.add_trainingrun")

    @admin.display(description="trigger")
    def trigger(self, obj):
        return (obj.params or {}).get("trigger", "")

    @admin.display(description="progress", ordering="progress")
    def progress_bar(self, obj):
        pct = max(0.0, min(100.0, 100.0 * float(obj.progress or 0)))
        colour = {"failed": "#c53030", "succeeded": "#2f855a"}.get(obj.status, "#2b6cb0")
        return format_html(
            '<div title="{}" style="width:120px;background:#e2e8f0;border-radius:3px;display:inline-block;'
            'vertical-align:middle"><div style="width:{}%;background:{};height:10px;border-radius:3px"></div>'
            '</div> {}%', obj.stage, f"{pct:.0f}", colour, f"{pct:.0f}")

    @admin.display(description="duration")
    def duration(self, obj):
        if not obj.started_at:
            return "—"
        from django.utils import timezone

        end = obj.finished_at or timezone.now()
        seconds = int((end - obj.started_at).total_seconds())
        return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"

    @admin.display(description="backtest")
    def backtest(self, obj):
        return backtest_table(obj.metrics)

    @admin.display(description="training curves (loss / val_loss per epoch)")
    def training_curve(self, obj):
        """The anonymous ranker's curve and, beside it, the known-shopper ranker's (``shopper_loss`` /
        ``shopper_val_loss``; their losses are on other lists, so each has its own scale)."""
        history = obj.history or {}
        anon = svg_line_chart({k: history.get(k) or [] for k in ("loss", "val_loss")},
                              label="anonymous ranker training curve")
        shopper = {k.removeprefix("shopper_"): history.get(k) or [] for k in ("shopper_loss", "shopper_val_loss")}
        if not any(shopper.values()):
            return anon
        return format_html('<div style="display:inline-block;margin-right:1em"><p>anonymous ranker</p>{}</div>'
                           '<div style="display:inline-block"><p>known-shopper ranker</p>{}</div>', anon,
                           svg_line_chart(shopper, label="known-shopper ranker training curve"))

    @admin.display(description="error")
    def error_text(self, obj):
        if not obj.error:
            return "—"
        return format_html('<pre style="white-space:pre-wrap;max-width:80em">{}</pre>', obj.error)

    def _queue(self, request) -> None:
        from .services.training import training_run_in_progress, training_run_queue

        busy = training_run_in_progress()
        if busy is not None:
            self.message_user(request, f"Training run {busy.pk} is already {busy.get_status_display().lower()} "
                                       f"(requested {timezone.localtime(busy.created_at):%Y-%m-%d %H:%M}); "
                                       "no second run was queued. This page shows its progress.", messages.WARNING)
            return
        run = training_run_queue(user=request.user, trigger="manual")
        run.refresh_from_db()  # demo mode runs the training right away
        if run.status == TrainingRun.FAILED:
            self.message_user(request, f"Training run {run.pk} failed: {run.error.split(chr(10))[0]}", messages.ERROR)
        elif run.status == TrainingRun.SUCCEEDED and run.error:
            self.message_user(request, f"Training run {run.pk} finished. {run.error.split(chr(10))[0]}", messages.WARNING)
        elif run.status == TrainingRun.SUCCEEDED:
            self.message_user(request, f"Training run {run.pk} finished.", messages.SUCCESS)
        else:
            self.message_user(request, f"Training run {run.pk} queued; this page shows its progress.", messages.SUCCESS)

    @admin.action(description="Retrain now (queue a new training run)", permissions=["retrain"])
    def retrain_now(self, request, queryset):
        """Queue ``retrain_model`` for a new run (the selection is ignored)."""
        self._queue(request)

    def get_urls(self):
        info = self.opts.app_label, self.opts.model_name
        return [path("retrain/", self.admin_site.admin_view(self.retrain_view), name="%s_%s_retrain" % info),
                *super().get_urls()]

    def retrain_view(self, request):
        """POST-only view behind the changelist's "Retrain now" button."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not self.has_retrain_permission(request):
            raise PermissionDenied
        self._queue(request)
        return HttpResponseRedirect(reverse("admin:shop_bundles_trainingrun_changelist"))

    def changelist_view(self, request, extra_context=None):
        extra_context = dict(extra_context or {})
        extra_context["can_retrain"] = self.has_retrain_permission(request)
        extra_context["runs_in_progress"] = TrainingRun.objects.filter(
            status__in=[TrainingRun.QUEUED, TrainingRun.RUNNING]).exists()
        return super().changelist_view(request, extra_context=extra_context)


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    """Trained model versions with their backtest table; "activate" switches the serving model."""

    list_display = ("label", "is_active", "created_at", "data_start", "data_end", "split_date", "model_ndcg",
                    "popularity_ndcg", "cooccurrence_ndcg")
    list_filter = ("is_active",)
    search_fields = ("label",)
    actions = ("activate",)
    # Everything measured or produced by training is read-only (staff must not edit results); only
    # ``notes`` is editable. ``metrics`` is shown as the backtest tables plus the raw JSON.
    readonly_fields = ("label", "is_active", "activated_at", "created_at", "artifact_path", "data_start", "data_end",
                       "split_date", "baseline_check", "backtest", "metrics_json", "metadata_json")
    fields = ("label", "is_active", "activated_at", "created_at", "artifact_path", "data_start", "data_end",
              "split_date", "baseline_check", "backtest", "metrics_json", "metadata_json", "notes")

    @admin.display(description="below baseline?")
    def baseline_check(self, obj):
        """A visible warning when a model scores below its baseline (``baseline_warnings``)."""
        return _warnings_html(obj.metrics)

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        """The active version (the one scoring and ranking serve) cannot be deleted: activate another first.
        Deleting it used to leave the hourly scoring and store ranking "succeeded" with nothing to serve."""
        if obj is not None and obj.is_active:
            return False
        return super().has_delete_permission(request, obj)

    def get_deleted_objects(self, objs, request):
        """The list's "Delete selected" with the active version among them is refused on its confirmation
        page, which names it as protected ("v... is the active model version: activate another version
        first") instead of a bare 403."""
        deletable, model_count, perms_needed, protected = super().get_deleted_objects(objs, request)
        active = [obj for obj in objs if obj.is_active]
        if active:
            if super().has_delete_permission(request):  # missing only because of the active one
                perms_needed = perms_needed - {str(self.model._meta.verbose_name)}
            protected = [*protected, *(f"{obj.label} is the active model version: activate another version "
                                       "first" for obj in active)]
        return deletable, model_count, perms_needed, protected

    @admin.display(description="model NDCG@10")
    def model_ndcg(self, obj):
        value = _metric(obj.metrics, "model")
        return "—" if value is None else f"{value:.4f}"

    @admin.display(description="popularity NDCG@10")
    def popularity_ndcg(self, obj):
        value = _metric(obj.metrics, "popularity")
        return "—" if value is None else f"{value:.4f}"

    @admin.display(description="co-occurrence NDCG@10")
    def cooccurrence_ndcg(self, obj):
        value = _metric(obj.metrics, "cooccurrence_count")
        return "—" if value is None else f"{value:.4f}"

    @admin.display(description="backtest")
    def backtest(self, obj):
        return backtest_table(obj.metrics)

    @admin.display(description="metrics (measured, read-only)")
    def metrics_json(self, obj):
        return _json_block(obj.metrics)

    @admin.display(description="artifact metadata (read-only)")
    def metadata_json(self, obj):
        return _json_block(obj.metadata)

    @admin.action(description="Activate the selected model version", permissions=["change"])
    def activate(self, request, queryset):
        """Make the one selected version the active (serving) model."""
        from .services.training import model_version_activate

        if queryset.count() != 1:
            self.message_user(request, "Select exactly one model version to activate.", messages.WARNING)
            return
        version = queryset.get()
        from bundling_ml.artifacts import ArtifactCorruptError

        try:
            model_version_activate(version=version, user=request.user,
                                   note=f"activated by {request.user} in the admin")
        except ArtifactCorruptError as exc:
            self.message_user(request, f"{version.label} was not activated: {exc}", messages.ERROR)
            return
        self.message_user(request, f"{version.label} is now the active model version.", messages.SUCCESS)


# --------------------------------------------------------------------------- catalogue, orders, events, imports


@admin.register(Product)
class ProductAdmin(admin.ModelAdmin):
    """The catalogue; stock and active can be edited in the list."""

    list_display = ("sku", "name", "department", "category", "brand", "price", "stock", "active")
    list_editable = ("price", "stock", "active")
    list_filter = ("active", "department")
    search_fields = ("=sku", "name", "brand")
    show_full_result_count = False
    list_per_page = 100


@admin.register(Customer)
class CustomerAdmin(admin.ModelAdmin):
    """Known shoppers."""

    list_display = ("external_id", "email", "created_at")
    search_fields = ("=external_id", "email")
    show_full_result_count = False


class OrderLineInline(ReadOnlyMixin, admin.TabularInline):
    """Lines of an order, read-only."""

    model = OrderLine
    extra = 0
    can_delete = False
    fields = ("product", "quantity", "unit_price", "discount", "campaign")
    readonly_fields = fields

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("product", "campaign")


@admin.register(Order)
class OrderAdmin(ReadOnlyMixin, admin.ModelAdmin):
    """Orders (imported history and storefront), read-only with their lines."""

    list_display = ("external_id", "placed_at", "customer", "source", "experiment_group", "subtotal",
                    "discount_total", "total")
    list_filter = ("source", "experiment_group")
    search_fields = ("=external_id", "=customer__external_id")
    list_select_related = ("customer",)
    show_full_result_count = False
    inlines = (OrderLineInline,)
    readonly_fields = ("external_id", "customer", "placed_at", "source", "store_id", "session_key", "subtotal",
                       "discount_total", "total", "campaigns", "created_at")


@admin.register(Promotion)
class PromotionAdmin(admin.ModelAdmin):
    """Weekly display / mailer exposure per product."""

    list_display = ("product", "week", "week_start", "display_location", "mailer_location", "display_stores",
                    "mailer_stores")
    list_filter = ("week",)
    search_fields = ("=product__sku",)
    list_select_related = ("product",)
    raw_id_fields = ("product",)
    show_full_result_count = False


@admin.register(OrderEvent)
class OrderEventAdmin(ReadOnlyMixin, admin.ModelAdmin):
    """Placed storefront orders as recorded by the worker."""

    list_display = ("order", "recorded_at", "revenue", "bundle_discount", "bundles_used")
    list_select_related = ("order",)
    search_fields = ("=order__external_id",)
    raw_id_fields = ("order",)
    show_full_result_count = False


@admin.register(OfferEvent)
class OfferEventAdmin(ReadOnlyMixin, admin.ModelAdmin):
    """Impressions, clicks, add-to-carts and purchases of bundle offers."""

    list_display = ("created_at", "kind", "campaign", "experiment_group", "simulated", "customer", "session_key",
                    "order", "quantity")
    list_filter = ("kind", "experiment_group", "simulated")
    list_select_related = ("campaign", "customer", "order")
    search_fields = ("campaign__name", "=order__external_id", "=session_key")
    raw_id_fields = ("campaign", "customer", "order")
    show_full_result_count = False


@admin.register(ImportRun)
class ImportRunAdmin(ReadOnlyMixin, admin.ModelAdmin):
    """Imports and their reports (counts and rejected lines)."""

    list_display = ("source", "started_at", "finished_at", "imported", "rejected", "skipped", "duplicates")
    search_fields = ("source",)
    readonly_fields = ("source", "started_at", "finished_at", "report_summary", "report_notes", "rejections", "report")

    def _count(self, obj, key):
        value = (obj.report or {}).get(key)
        return "—" if value is None else value

    @admin.display(description="imported")
    def imported(self, obj):
        return self._count(obj, "imported")

    @admin.display(description="rejected")
    def rejected(self, obj):
        return self._count(obj, "rejected")

    @admin.display(description="skipped")
    def skipped(self, obj):
        return self._count(obj, "skipped")

    @admin.display(description="duplicates")
    def duplicates(self, obj):
        return self._count(obj, "duplicates")

    @admin.display(description="summary")
    def report_summary(self, obj):
        report = obj.report or {}
        keys = [k for k in ("read", "imported", "skipped", "rejected", "duplicates") if k in report]
        return format_html_join(", ", "{}: {}", ((k, report[k]) for k in keys)) or "—"

    @admin.display(description="notes")
    def report_notes(self, obj):
        """The report's notes in words: counts by name, the orders whose lines span more than the tolerance
        (``bundling_ml.report_text.time_spread_lines``), the file lines skipped per reason
        (``skipped_lines_text``) and what a later file's cancellations took back."""
        from bundling_ml.report_text import skipped_lines_text, time_spread_lines  # standard library only; imported on use

        notes = dict((obj.report or {}).get("notes") or {})
        spread = notes.pop("time_spread", None)
        rows = [(k.replace("_", " "), v) for k, v in sorted(notes.items()) if not isinstance(v, (dict, list))]
        text = time_spread_lines(spread) + skipped_lines_text(notes.get("skipped_lines"),
                                                              (obj.report or {}).get("skipped_reasons"))
        if not rows and not text:
            return "—"
        return format_html("<ul>{}</ul>{}", format_html_join("", "<li>{}: {}</li>", rows),
                           format_html("<pre>{}</pre>", "\n".join(text)) if text else "")

    @admin.display(description="rejected lines")
    def rejections(self, obj):
        rows = (obj.report or {}).get("rejections") or []
        if not rows:
            return "—"
        body = format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td></tr>", (
            (r.get("line", ""), r.get("field", ""), r.get("reason", "")) for r in rows[:500]))
        return format_html("<table><thead><tr><th>line</th><th>field</th><th>reason</th></tr></thead>"
                           "<tbody>{}</tbody></table>", body)


class CancelledOrderLineInline(ReadOnlyMixin, admin.TabularInline):
    """The earlier order lines a cancellation took units back from."""

    model = CancelledOrderLine
    fields = ("order_external_id", "sku", "quantity_before", "quantity", "removed")
    readonly_fields = fields
    extra = 0


@admin.register(ImportedCancellation)
class ImportedCancellationAdmin(ReadOnlyMixin, admin.ModelAdmin):
    """Cancellations (``C…`` invoices) read by CSV imports, once per (invoice, product): how many units came
    back from the same file and from orders imported before, with the order lines they reduced."""

    list_display = ("invoice", "sku", "customer_external_id", "cancelled_at", "quantity", "taken_in_file",
                    "taken_earlier", "import_run")
    list_filter = ("cancelled_at",)
    search_fields = ("=invoice", "=sku", "=customer_external_id", "=takes__order_external_id")
    list_select_related = ("import_run",)
    inlines = [CancelledOrderLineInline]
    show_full_result_count = False


# --------------------------------------------------------------------------- holdout experiment dashboard


def _fmt_estimate(e: dict, pattern: str) -> str:
    """``value [low, high]`` with a format pattern; "—" for NaN; "value (too few visitors)" without an interval.

    ``bundling_ml.abtest`` gives no interval below 2 visitors in a group (NaN bounds).
    """
    if e is None or e.get("value") is None or not math.isfinite(e["value"]):
        return "—"
    if not math.isfinite(e.get("low", math.nan)):
        return f"{pattern.format(e['value'])} (too few visitors for an interval)"
    return f"{pattern.format(e['value'])} [{pattern.format(e['low'])}, {pattern.format(e['high'])}]"


@admin.register(ExperimentDashboard)
class ExperimentDashboardAdmin(ReadOnlyMixin, admin.ModelAdmin):
    """Treatment vs holdout: attach rate, AOV, revenue and margin per visitor with 95 % intervals and uplift,
    a sample-ratio-mismatch warning, daily charts and a CSV export (``?format=csv``).

    ``?data=simulated`` (default when only replay data exist) shows the ``simulate_shoppers`` replay,
    labelled SIMULATED; ``?data=live`` the real storefront. Computed on request from the events and
    orders tables (a few indexed queries); nothing runs in the storefront request.
    """

    METRICS = (("attach_rate", "attach rate", "{:.2%}"), ("aov", "AOV", "{:.2f}"),
               ("revenue_per_visitor", "revenue / visitor", "{:.2f}"),
               ("margin_per_visitor", "margin / visitor", "{:.2f}"))

    def has_delete_permission(self, request, obj=None):
        return False

    def has_view_permission(self, request, obj=None):
        return request.user.is_active and request.user.is_staff and (
            request.user.has_perm("shop_bundles.view_offerevent")
            or request.user.has_perm("shop_bundles.view_experimentdashboard"))

    def has_module_permission(self, request):
        return self.has_view_permission(request)

    #: Buffered impression messages the dashboard stores itself before computing (the rest waits for the task).
    DRAIN_MAX = 20_000

    def _drain_impressions(self, request) -> None:
        """Store the impressions still buffered in Redis before reading them (``impression_buffer_drain``).

        At most ``DRAIN_MAX`` messages, so a long backlog (workers stopped) does
        not hold the page; what is left, or a Redis outage, is said on the page.
        """
        import redis

        from .services.impression_buffer import impression_buffer_drain

        try:
            drained = impression_buffer_drain(max_messages=self.DRAIN_MAX)
        except redis.RedisError as exc:
            self.message_user(request, f"The impression buffer (Redis) is unreachable ({exc}); impressions "
                                       "recorded in the last seconds may be missing from these figures.",
                              level=messages.WARNING)
            return
        if drained["waiting"]:
            self.message_user(request, f"{drained['waiting']:,} impression messages are still waiting in the "
                                       "buffer (is the drain_impression_buffer task running?); they are not "
                                       "in these figures yet.", level=messages.WARNING)

    #: campaign tables on the page (and in the CSV): the newest campaigns with impressions
    MAX_CAMPAIGN_TABLES = 50

    def _results(self, simulated: bool) -> tuple[list[dict], int]:
        """``(results, campaigns)``: the overall result, then one per campaign with impressions (newest first, at
        most :attr:`MAX_CAMPAIGN_TABLES`), and how many campaigns have impressions. Live campaign tables count
        impressions and orders inside the campaign's window (``starts_at`` to ``ends_at``)."""
        from .services.experiment import experiment_results

        overall = experiment_results(simulated=simulated)
        overall["label"] = "overall"
        out = [overall]
        ids = (OfferEvent.objects.filter(kind=OfferEvent.IMPRESSION, simulated=simulated)
               .order_by().values_list("campaign_id", flat=True).distinct())
        campaigns = list(BundleCampaign.objects.filter(pk__in=list(ids)).order_by("-pk")
                         .only("pk", "name", "starts_at", "ends_at"))
        for campaign in campaigns[:self.MAX_CAMPAIGN_TABLES]:  # the newest
            if simulated:  # the replay places its orders at the held-out baskets' own (past) dates
                res = experiment_results(simulated=True, campaign_id=campaign.pk)
                res["label"] = campaign.name
            else:  # only what happened while the campaign ran (an ended one stops counting at its end)
                res = experiment_results(simulated=False, campaign_id=campaign.pk, since=campaign.starts_at,
                                         until=campaign.ends_at)
                start = timezone.localtime(campaign.starts_at)
                end = (f"{timezone.localtime(campaign.ends_at):%Y-%m-%d %H:%M}" if campaign.ends_at
                       else "open-ended")
                res["label"] = f"{campaign.name} ({start:%Y-%m-%d %H:%M} to {end})"
            out.append(res)
        return out, len(campaigns)

    def changelist_view(self, request, extra_context=None):
        from django.http import HttpResponse
        from django.template.response import TemplateResponse

        from .services.experiment import experiment_results_csv

        if not self.has_view_permission(request):
            raise PermissionDenied
        self._drain_impressions(request)
        data = request.GET.get("data")
        if data not in ("live", "simulated"):
            live = OfferEvent.objects.filter(kind=OfferEvent.IMPRESSION, simulated=False).exists()
            data = "live" if live else "simulated"
        simulated = data == "simulated"
        results, campaigns_total = self._results(simulated)
        if request.GET.get("format") == "csv":
            response = HttpResponse(experiment_results_csv(results), content_type="text/csv")
            response["Content-Disposition"] = f'attachment; filename="experiment-{data}.csv"'
            return response
        tables = []
        for res in results:
            rows = [(label, _fmt_estimate(res[key]["treatment"], pattern), _fmt_estimate(res[key]["holdout"], pattern),
                     _fmt_estimate(res[key]["uplift"], pattern), _fmt_estimate(res[key]["relative_uplift"], "{:+.1%}"))
                    for key, label, pattern in self.METRICS]
            tables.append({"label": res["label"], "rows": rows, "visitors": res["visitors"], "srm": res["srm"]})
        overall = results[0]
        charts = {}
        empty_text = ("No simulated data yet: run simulate_shoppers." if simulated
                      else "No storefront orders from shoppers who saw an offer yet.")
        # The tables' attach rate is per visitor; the daily chart can only be per order (a visitor's days differ),
        # so it says so and is in percent.
        for metric, title, scale in (("attach_rate", "daily share of orders holding an offered bundle (%)", 100.0),
                                     ("aov", "daily AOV", 1.0)):
            dates = sorted({d["date"] for d in overall["daily"]})
            series = {}
            for group in ("treatment", "holdout"):
                by_date = {d["date"]: d[metric] * scale for d in overall["daily"] if d["group"] == group}
                series[group] = [by_date[d] for d in dates if d in by_date]
            charts[title] = svg_line_chart(series, width=560, height=200,
                                           x_labels=(dates[0], dates[-1]) if dates else None, label=title,
                                           empty_text=empty_text)
        context = {
            **self.admin_site.each_context(request),
            "title": "Holdout experiment" + (" — SIMULATED replay" if simulated else ""),
            "opts": self.model._meta, "simulated": simulated, "data": data, "tables": tables,
            "charts": charts, "overall": overall, "method": overall["method"],
            "holdout_share": overall["holdout_share"],
            "campaigns_total": campaigns_total, "campaigns_shown": len(results) - 1,
            **(extra_context or {}),
        }
        return TemplateResponse(request, "admin/shop_bundles/experiment_dashboard.html", context)
