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
