"""CSV imports across files: cancellations in a later file, and the report of orders whose lines span hours."""
import io
from datetime import datetime
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.utils import timezone

from shop_bundles.models import CancelledOrderLine, ImportedCancellation, ImportRun, Order, OrderLine
from shop_bundles.services import imports
from shop_bundles.services.imports import orders_import_csv

pytestmark = [pytest.mark.django_db]

MAP = "basket=invoice,product=sku,time=at,quantity=qty,price=price,customer=customer"
HEAD = "invoice,sku,qty,at,price,customer\n"

# Customer C1 bought X in 1001 (5, with a Y), 1002 (2) and 1004 (3, after the cancellation); C2 bought X in 1003.
EARLY = HEAD + ("1001,X,5,2024-03-01 10:00,1.00,C1\n1001,Y,1,2024-03-01 10:00,2.00,C1\n"
                "1002,X,2,2024-03-02 10:00,1.00,C1\n1003,X,4,2024-03-01 11:00,1.00,C2\n"
                "1004,X,3,2024-03-06 10:00,1.00,C1\n")
# A later export: C1 cancels 3 X on 5 March; nothing of C1's in this file to take them back from.
LATER = HEAD + "C2001,X,-3,2024-03-05 09:00,1.00,C1\n2002,Z,1,2024-03-05 10:00,4.00,C3\n"


def lines_now() -> dict:
    return {(o, s): q for o, s, q in OrderLine.objects.values_list("order__external_id", "product__sku", "quantity")}


def last_notes() -> dict:
    return ImportRun.objects.order_by("-pk").first().report["notes"]


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("orm", [False, True])
def test_a_cancellation_in_a_later_file_takes_back_from_earlier_orders_latest_first_once(tmp_path, monkeypatch, orm):
    """The same rule as in one file: C1's purchases of X placed at or before the cancellation, latest first:
    1002 (2 units, removed with its order, which holds nothing else), then 1 of 1001's 5. 1004 (after it) and
    C2's 1003 keep theirs. Importing the later file again, or the earlier one again, changes nothing."""
    if orm:  # the SQLite demo path writes the rows; the cancellations use the ORM on both
        monkeypatch.setattr(imports, "_write_postgresql", imports._write_orm)
    early, later = write(tmp_path, "early.csv", EARLY), write(tmp_path, "later.csv", LATER)
    orders_import_csv(path=early, mapping=MAP)
    assert Order.objects.get(external_id="1001").subtotal == Decimal("7.00")

    report = orders_import_csv(path=later, mapping=MAP)
    expected_lines = {("1001", "X"): 4, ("1001", "Y"): 1, ("1003", "X"): 4, ("1004", "X"): 3, ("2002", "Z"): 1}
    assert lines_now() == expected_lines
    assert not Order.objects.filter(external_id="1002").exists()  # its only line was cancelled out
    order = Order.objects.get(external_id="1001")
    assert (order.subtotal, order.total) == (Decimal("6.00"), Decimal("6.00"))  # 4 x 1.00 + 1 x 2.00
    assert Order.objects.get(external_id="1004").subtotal == Decimal("3.00")
    cancelled = {"cancellations_matched_earlier": 1, "lines_cancelled_earlier": 2, "units_cancelled_earlier": 3,
                 "lines_removed_earlier": 1, "orders_removed_earlier": 1}
    assert {k: report.notes[k] for k in cancelled} == cancelled
    assert report.notes["cancellations_unmatched"] == 1  # in the file itself: nothing of C1's to take back
    assert last_notes()["lines_cancelled_earlier"] == 2
    record = ImportedCancellation.objects.get()
    assert (record.invoice, record.sku, record.customer_external_id, record.quantity, record.taken_in_file,
            record.taken_earlier, record.import_run_id) == (
        "C2001", "X", "C1", Decimal("3.000"), Decimal("0.000"), 3, ImportRun.objects.order_by("-pk").first().pk)
    assert record.cancelled_at == timezone.make_aware(datetime(2024, 3, 5, 9, 0))
    assert sorted(CancelledOrderLine.objects.values_list("order_external_id", "sku", "quantity", "quantity_before",
                                                         "removed")) == [
        ("1001", "X", 1, 5, False), ("1002", "X", 2, 2, True)]

    again = orders_import_csv(path=later, mapping=MAP)  # the same later file twice: taken back once
    assert lines_now() == expected_lines and Order.objects.get(external_id="1001").subtotal == Decimal("6.00")
    assert {k: again.notes[k] for k in cancelled} == cancelled  # the file's effect, reported the same
    assert again.notes["cancellations_already_applied"] == 1
    assert (again.skipped_reasons, again.imported) == (report.skipped_reasons, report.imported)
    assert ImportedCancellation.objects.count() == 1 and CancelledOrderLine.objects.count() == 2

    earlier_again = orders_import_csv(path=early, mapping=MAP)  # the deleted line is not written again
    assert lines_now() == expected_lines and not Order.objects.filter(external_id="1002").exists()
    assert Order.objects.get(external_id="1001").subtotal == Decimal("6.00")
    assert earlier_again.skipped_reasons == {"cancelled_in_later_file": 1}
    assert (earlier_again.read, earlier_again.imported) == (5, 4)
    assert earlier_again.created["orders"] == earlier_again.created["order_lines"] == 0


def test_a_later_export_made_mostly_of_cancellations_still_takes_back_from_earlier_orders(tmp_path):
    """A returns-only export: judged on its own ids ("C2001", "C2003") the file looks like a shop whose order
    ids start with a letter, so both C lines used to be skipped as negative quantities and 1001 / 1003 kept
    every unit. The orders already imported say the shop uses numeric invoices. (A file of mostly C lines
    with some plain invoices of the same length is recognised on its own: the next test.)"""
    orders_import_csv(path=write(tmp_path, "early.csv", EARLY), mapping=MAP)
    returns = write(tmp_path, "returns.csv", HEAD + "C2001,X,-3,2024-03-05 09:00,1.00,C1\n"
                                                    "C2003,X,-4,2024-03-05 09:10,1.00,C2\n")
    report = orders_import_csv(path=returns, mapping=MAP)
    assert report.notes["invoice_prefix_rules"] == (
        "on (prefixed invoices of the same numbers as the shop's earlier imports)")
    assert report.skipped_reasons == {"cancellation": 2}
    # C1: 1002's 2 units and 1 of 1001's (latest first, as in one file); C2: all 4 of 1003 (order removed).
    assert lines_now() == {("1001", "X"): 4, ("1001", "Y"): 1, ("1004", "X"): 3}
    assert report.notes["units_cancelled_earlier"] == 7


def test_invoice_prefix_convention_of_a_file_on_its_own():
    import pandas as pd

    from bundling_ml.ingest import invoice_prefix_convention

    def on(*ids):
        return invoice_prefix_convention(pd.Series(ids, dtype=object))

    assert on("536365", "536366", "C536379") == (True, "on")
    # Mostly prefixed, of the same numbers as the plain ids: a returns-heavy daily export.
    assert on("C540003", "C540006", "540008") == (
        True, "on (mostly prefixed invoices of the same numbers as the plain ones)")
    # A shop whose own ids start with C: kept as orders (no plain ids, or prefixed ids of other lengths).
    assert on("C1001", "C1002", "C1003") == (False, "off (order ids are not numeric)")
    assert on("C10001", "C10002", "7") == (False, "off (order ids are not numeric)")
    assert on("ORD-1", "ORD-2") == (False, "off (order ids are not numeric)")
    # With the shop's earlier invoice lengths: a returns-only file of those numbers is recognised; a shop whose
    # own "C1001" ids follow a Complete Journey demo import (11-digit baskets) keeps its orders.
    assert invoice_prefix_convention(pd.Series(["C540003", "C540006"]), earlier_lengths=frozenset({6})) == (
        True, "on (prefixed invoices of the same numbers as the shop's earlier imports)")
    assert invoice_prefix_convention(pd.Series(["C1001", "C1002"]), earlier_lengths=frozenset({11}))[0] is False
    assert invoice_prefix_convention(pd.Series([], dtype=object)) == (False, "off (no line was left to look at)")


def test_an_overlapping_export_takes_a_repeated_purchase_back_once(tmp_path):
    """The later export repeats order 1001 (already imported) with C1's cancellation of 2 of its X: the file's
    own rule takes them from its copy of 1001, and the written line loses them too (5 -> 3), once. A guest's
    cancellation takes nothing back."""
    orders_import_csv(path=write(tmp_path, "early.csv", HEAD + "1001,X,5,2024-03-01 10:00,1.00,C1\n"
                                                              "1005,X,1,2024-02-01 10:00,1.00,C1\n"), mapping=MAP)
    later = write(tmp_path, "later.csv", HEAD + "1001,X,5,2024-03-01 10:00,1.00,C1\n"
                                                "C2001,X,-2,2024-03-05 09:00,1.00,C1\n"
                                                "C2002,X,-1,2024-03-05 09:30,1.00,\n"
                                                "2003,Z,1,2024-03-05 10:00,4.00,C3\n2004,Z,1,2024-03-05 11:00,4.00,C4\n")
    for _ in range(2):
        report = orders_import_csv(path=later, mapping=MAP)
        assert lines_now() == {("1001", "X"): 3, ("1005", "X"): 1, ("2003", "Z"): 1, ("2004", "Z"): 1}
        assert Order.objects.get(external_id="1001").subtotal == Decimal("3.00")
        assert (report.notes["lines_cancelled_earlier"], report.notes["units_cancelled_earlier"]) == (1, 2)
        assert report.notes["cancellations_unmatched"] == 1  # the guest's
    assert sorted(ImportedCancellation.objects.values_list("invoice", "customer_external_id", "taken_in_file",
                                                           "taken_earlier")) == [
        ("C2001", "C1", Decimal("2.000"), 2), ("C2002", "", Decimal("0.000"), 0)]


def test_the_command_report_shows_what_a_later_cancellation_took_back(tmp_path):
    call_command("import_orders", "--csv", str(write(tmp_path, "early.csv", EARLY)), "--map", MAP, "--no-progress",
                 stdout=io.StringIO())
    out = io.StringIO()
    call_command("import_orders", "--csv", str(write(tmp_path, "later.csv", LATER)), "--map", MAP, "--no-progress",
                 stdout=out)
    text = out.getvalue()
    assert ("cancellations_matched_earlier: 1, lines_cancelled_earlier: 2, units_cancelled_earlier: 3, "
            "lines_removed_earlier: 1, orders_removed_earlier: 1") in text


# --- basket time spread -----------------------------------------------------------------------------

def test_the_import_report_counts_orders_whose_lines_span_more_than_an_hour(tmp_path):
    """Orders are still placed at their earliest line; 9002 (3 days 8.5 hours) and 9004 (2 hours 15 minutes) are
    reported with their earliest and latest line times, in the command's output and the ImportRun."""
    from tests.ml.test_ingest import SIMPLE_MAP, SPREAD_CSV, SPREAD_EXPECTED

    out = io.StringIO()
    call_command("import_orders", "--csv", str(write(tmp_path, "spread.csv", SPREAD_CSV)), "--map", SIMPLE_MAP,
                 "--no-progress", stdout=out)
    assert ImportRun.objects.get().report["notes"]["time_spread"] == SPREAD_EXPECTED
    text = out.getvalue()
    assert ("Orders whose lines span more than 1:00:00 (each is placed at its earliest line time; is the basket "
            "column one checkout?): 2\n"
            "  order 9002: lines from 2024-03-01 10:00:00 to 2024-03-04 18:30:00 (2 lines)\n"
            "  order 9004: lines from 2024-03-05 08:00:00 to 2024-03-05 10:15:00 (2 lines)\n") in text
    assert Order.objects.get(external_id="9002").placed_at == timezone.make_aware(datetime(2024, 3, 1, 10, 0))
    assert Order.objects.count() == 4


def test_a_frame_import_reports_the_time_spread_too():
    """Frames read elsewhere (``orders_import_frame``) get the same report."""
    import pandas as pd

    frame = pd.DataFrame({"basket_id": ["1", "1", "2"], "product_id": ["A", "B", "A"],
                          "customer_id": pd.array([pd.NA] * 3, dtype="string"),
                          "time": pd.to_datetime(["2024-01-01 08:00", "2024-01-02 08:00", "2024-01-01 09:00"]),
                          "quantity": [1.0, 1.0, 1.0], "price": [1.0, 1.0, 1.0]})
    report = imports.orders_import_frame(lines=frame)
    assert report.notes["time_spread"]["orders"] == 1
    assert report.notes["time_spread"]["examples"] == [
        {"order": "1", "earliest": "2024-01-01 08:00:00", "latest": "2024-01-02 08:00:00", "lines": 2}]


# --- what staff see in the admin ----------------------------------------------------------------------

def test_staff_see_the_notes_and_the_cancellations_in_the_admin(tmp_path, admin_client):
    """The import run's page lists the report's notes in words (the later file's cancellation counts, the
    orders whose lines span hours); the cancellations' page shows each cancellation with the earlier lines it
    reduced, read-only."""
    from django.urls import reverse

    from tests.ml.test_ingest import SIMPLE_MAP, SPREAD_CSV

    orders_import_csv(path=write(tmp_path, "early.csv", EARLY), mapping=MAP)
    orders_import_csv(path=write(tmp_path, "later.csv", LATER), mapping=MAP)
    orders_import_csv(path=write(tmp_path, "spread.csv", SPREAD_CSV), mapping=SIMPLE_MAP)
    later_run, spread_run = ImportRun.objects.order_by("pk")[1:3]

    page = admin_client.get(reverse("admin:shop_bundles_importrun_change", args=[later_run.pk])).content.decode()
    for words in ("<li>lines cancelled earlier: 2</li>", "<li>units cancelled earlier: 3</li>",
                  "<li>orders removed earlier: 1</li>", "<li>cancellations unmatched: 1</li>"):
        assert words in page, words
    page = admin_client.get(reverse("admin:shop_bundles_importrun_change", args=[spread_run.pk])).content.decode()
    assert ("Orders whose lines span more than 1:00:00 (each is placed at its earliest line time; is the basket "
            "column one checkout?): 2\n"
            "  order 9002: lines from 2024-03-01 10:00:00 to 2024-03-04 18:30:00 (2 lines)") in page

    listing = admin_client.get(reverse("admin:shop_bundles_importedcancellation_changelist") + "?q=1002")
    assert listing.status_code == 200 and "C2001" in listing.content.decode()
    record = ImportedCancellation.objects.get()
    page = admin_client.get(reverse("admin:shop_bundles_importedcancellation_change", args=[record.pk]))
    html = page.content.decode()
    assert page.status_code == 200 and "1002" in html and "1001" in html
    assert admin_client.get(reverse("admin:shop_bundles_importedcancellation_add")).status_code == 403
    assert admin_client.get(reverse("admin:shop_bundles_importedcancellation_delete",
                                    args=[record.pk])).status_code == 403
