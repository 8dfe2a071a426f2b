"""Text of import report notes, shared by the CSV import's report, ``python -m bundling_ml recommend
--orders`` and the shop's admin. No imports beyond the standard library: the web process (the admin's
import run page) reads it without loading pandas.
"""


def time_spread_lines(spread: dict | None) -> list[str]:
    """The text lines of a ``bundling_ml.ingest.basket_time_spread`` result ([] when no order is over).

    Args:
        spread: ``{"tolerance": str, "orders": int, "examples": [{"order": str, "earliest": str,
            "latest": str, "lines": int}]}`` as stored in an import report's ``notes["time_spread"]``,
            or None.

    Returns:
        Lines of text without newlines: a headline with the count, one line per example, and
        "... and N more" when the count exceeds the examples.
    """
    if not spread or not spread.get("orders"):
        return []
    out = [f"Orders whose lines span more than {spread['tolerance']} (each is placed at its earliest line time; "
           f"is the basket column one checkout?): {spread['orders']:,}"]
    for e in spread["examples"]:
        out.append(f"  order {e['order']}: lines from {e['earliest']} to {e['latest']} ({e['lines']} lines)")
    if spread["orders"] > len(spread["examples"]):
        out.append(f"  ... and {spread['orders'] - len(spread['examples']):,} more")
    return out


#: What each skip reason means to the person reading the report
SKIP_REASON_WORDS = {
    "cancellation": "cancellations (C + digits; their units are taken back from the customer's purchases)",
    "cancelled_out": "purchases cancelled out by a later cancellation",
    "adjustment": "accounting adjustments (A + digits)",
    "non_product": "non-product codes (postage, fees...)",
    "quantity_zero": "quantity 0",
    "quantity_negative": "negative quantity outside a cancellation (a return or correction)",
    "price_negative": "negative price",
}


def skipped_lines_text(examples: dict | None, counts: dict | None = None) -> list[str]:
    """The text lines of an import report's ``notes["skipped_lines"]`` ([] when none).

    Args:
        examples: ``{reason: [file line, ...]}``, a few lines per skip reason
            (``bundling_ml.ingest.SKIPPED_LINE_EXAMPLES``).
        counts: ``{reason: int}``, the report's ``skipped_reasons`` (for "... and N more").

    Returns:
        Lines of text without newlines: a headline saying that skipped lines are left out while the
        rest of their order is imported, then one line per reason with its file lines.
    """
    if not examples:
        return []
    out = ["Skipped lines (left out; the rest of their order is imported):"]
    for reason, lines in examples.items():
        more = int((counts or {}).get(reason, len(lines))) - len(lines)
        out.append(f"  {SKIP_REASON_WORDS.get(reason, reason.replace('_', ' '))}: line{'s' if len(lines) > 1 else ''} "
                   + ", ".join(str(n) for n in lines) + (f" and {more:,} more" if more > 0 else ""))
    return out
