"""CSV imports into the database: the field cases, file conventions, refusals and idempotence."""
import codecs
import io
from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings

from shop_bundles.models import Customer, ImportRun, Order, OrderLine, Product
from shop_bundles.services import imports
from shop_bundles.services.imports import IngestError, orders_import_csv

pytestmark = [pytest.mark.django_db, pytest.mark.faults]

RETAIL_MAP = ("basket=InvoiceNo,product=StockCode,time=InvoiceDate,quantity=Quantity,price=UnitPrice,"
              "customer=CustomerID,name=Description")
SIMPLE_MAP = "basket=order_id,product=sku,time=ordered_at,quantity=qty,price=unit_price"
HEADER = "order_id,sku,qty,ordered_at,unit_price\n"


def db_baskets() -> dict:
    out = {}
    for order_id, sku in OrderLine.objects.values_list("order__external_id", "product__sku"):
        out.setdefault(order_id, set()).add(sku)
    return out


def db_counts() -> dict:
    return {m.__name__: m.objects.count() for m in (Product, Customer, Order, OrderLine, ImportRun)}


def comparable(report) -> dict:
    return report.to_dict(include_created=False)


def run_command(*args) -> str:
    out = io.StringIO()
    call_command("import_orders", *args, "--no-progress", stdout=out)
    return out.getvalue()


# --- retail_export_messy.csv ----------------------------------------------

def test_messy_export_baskets_customers_and_products_in_db(cases_dir):
    report = orders_import_csv(path=cases_dir / "import" / "retail_export_messy.csv", mapping=RETAIL_MAP,
                               encoding="cp1252")
    assert db_baskets() == {"540001": {"22001"}, "540002": {"22001", "22003"}, "540005": {"22001"},
                            "540007": {"22001", "22003"}}
    assert set(Customer.objects.values_list("external_id", flat=True)) == {"20001", "20002", "20003"}
    assert Order.objects.get(external_id="540001").customer.external_id == "20001"
    assert Order.objects.get(external_id="540002").customer is None  # guest order kept
    towel = Product.objects.get(sku="22003")
    assert towel.name == "TEA TOWEL £ PRINT"
    assert towel.price == Decimal("0.85") and towel.stock == 100 and towel.active and towel.cost is None
    assert not Product.objects.filter(sku__in=["POST", "M", "B", "22002", "22004"]).exists()
    line = OrderLine.objects.get(order__external_id="540001", product__sku="22001")
    assert (line.quantity, line.unit_price) == (4, Decimal("1.65"))
    assert Order.objects.get(external_id="540002").total == Decimal("8.40")  # 2 x 1.65 + 6 x 0.85
    assert report.skipped_reasons == {"cancellation": 2, "adjustment": 1, "non_product": 2, "cancelled_out": 2}
    assert report.created == {"products": 2, "customers": 3, "orders": 4, "order_lines": 6, "promotions": 0}


def test_messy_export_reimport_adds_nothing_and_reports_the_same(cases_dir):
    path = cases_dir / "import" / "retail_export_messy.csv"
    first = orders_import_csv(path=path, mapping=RETAIL_MAP, encoding="cp1252")
    counts = db_counts()
    second = orders_import_csv(path=path, mapping=RETAIL_MAP, encoding="cp1252")
    assert comparable(second) == comparable(first)
    assert second.created == {"products": 0, "customers": 0, "orders": 0, "order_lines": 0, "promotions": 0}
    assert db_counts() == counts | {"ImportRun": counts["ImportRun"] + 1}
    runs = list(ImportRun.objects.order_by("started_at"))
    assert runs[0].report["skipped_reasons"] == runs[1].report["skipped_reasons"]
    assert runs[1].report["created"]["orders"] == 0


def test_orm_bulk_create_path_writes_the_same_rows(cases_dir, monkeypatch):
    """The SQLite demo path (bulk_create, ignore_conflicts) gives the same result as COPY."""
    monkeypatch.setattr(imports, "_write_postgresql", imports._write_orm)
    path = cases_dir / "import" / "retail_export_messy.csv"
    report = orders_import_csv(path=path, mapping=RETAIL_MAP, encoding="cp1252")
    assert db_baskets() == {"540001": {"22001"}, "540002": {"22001", "22003"}, "540005": {"22001"},
                            "540007": {"22001", "22003"}}
    assert Product.objects.get(sku="22001").price == Decimal("1.65")
    assert Order.objects.get(external_id="540002").customer is None
    assert report.created["order_lines"] == 6
    again = orders_import_csv(path=path, mapping=RETAIL_MAP, encoding="cp1252")
    assert again.created == {"products": 0, "customers": 0, "orders": 0, "order_lines": 0, "promotions": 0}


# --- bad_rows.csv -----------------------------------------------------------

EXPECTED_BAD_ROWS = [
    {"line": 4, "field": "qty", "reason": "quantity 'two' is not a number"},
    {"line": 5, "field": "sku", "reason": "SKU missing"},
    {"line": 6, "field": "ordered_at", "reason": "date 'not a date' does not match '%Y-%m-%d %H:%M'"},
    {"line": 7, "field": "(row)", "reason": "6 fields where 5 expected"},
    {"line": 13, "field": "order_id", "reason": "order 7008 has a rejected line (line 14)"},
    {"line": 14, "field": "qty", "reason": "quantity 'x' is not a number"},
]


def test_bad_rows_import_whole_good_orders_and_report_each_rejected_line(cases_dir):
    report = orders_import_csv(path=cases_dir / "import" / "bad_rows.csv", mapping=SIMPLE_MAP)
    assert db_baskets() == {"7001": {"SKU-1", "SKU-2"}, "7006": {"SKU-1", "SKU-3"}, "7007": {"SKU-2", "SKU-3"}}
    assert OrderLine.objects.get(order__external_id="7001", product__sku="SKU-1").quantity == 2  # duplicate once
    assert not Product.objects.filter(sku="SKU-4").exists()
    stored = ImportRun.objects.get().report
    assert stored["rejections"] == EXPECTED_BAD_ROWS
    assert stored["duplicate_lines"] == [{"line": 10, "duplicate_of": 2}]
    assert (stored["read"], stored["imported"], stored["rejected"], stored["duplicates"]) == (13, 6, 6, 1)
    assert [r.to_dict() for r in report.rejections] == EXPECTED_BAD_ROWS


def test_bad_rows_reimport_adds_nothing_and_reports_the_same(cases_dir):
    path = cases_dir / "import" / "bad_rows.csv"
    first = run_command("--csv", str(path), "--map", SIMPLE_MAP)
    counts = db_counts()
    second = run_command("--csv", str(path), "--map", SIMPLE_MAP)
    assert db_counts() == counts | {"ImportRun": counts["ImportRun"] + 1}
    a, b = (ImportRun.objects.order_by("started_at").values_list("report", flat=True))
    strip = lambda r: {k: v for k, v in r.items() if k not in ("created", "timings")}  # noqa: E731
    assert strip(a) == strip(b)
    assert "created: products 0, customers 0, orders 0, order_lines 0, promotions 0" in second
    for text in (first, second):
        assert "line 4: qty: quantity 'two' is not a number" in text
        assert "line 7: (row): 6 fields where 5 expected" in text
        assert "line 13: order_id: order 7008 has a rejected line (line 14)" in text
        assert "line 10 repeats line 2" in text


def test_command_report_lists_counts(cases_dir):
    out = run_command("--csv", str(cases_dir / "import" / "retail_export_messy.csv"), "--map", RETAIL_MAP,
                      "--encoding", "cp1252")
    assert "lines read             13" in out
    assert "imported                6" in out
    assert "(adjustment 1, cancellation 2, cancelled_out 2, non_product 2)" in out
    assert "rejected                0" in out


# --- dates_day_first.csv ----------------------------------------------------

@pytest.mark.parametrize("extra", [[], ["--date-format", "%d/%m/%Y %H:%M"]])
def test_day_first_dates_are_in_december(cases_dir, extra):
    run_command("--csv", str(cases_dir / "import" / "dates_day_first.csv"), "--map", SIMPLE_MAP, *extra)
    placed = dict(Order.objects.values_list("external_id", "placed_at"))
    assert {k: (v.year, v.month, v.day) for k, v in placed.items()} == {"9001": (2021, 12, 1), "9002": (2021, 12, 13)}


@override_settings(TIME_ZONE="America/New_York")
def test_order_time_is_read_in_the_shop_time_zone(cases_dir):
    orders_import_csv(path=cases_dir / "import" / "dates_day_first.csv", mapping=SIMPLE_MAP)
    placed = Order.objects.get(external_id="9001").placed_at
    assert placed.isoformat() == "2021-12-01T13:26:00+00:00"  # 08:26 in New York (UTC-5)


@override_settings(TIME_ZONE="America/New_York")
@pytest.mark.parametrize("extra", [[], ["--date-format", "%Y-%m-%dT%H:%M:%S%z"]])
def test_times_with_utc_offsets_are_placed_at_their_instant_not_in_the_shop_zone(tmp_path, extra):
    """QA (session 11): ISO 8601 times with offsets were not recognised; with --date-format they became UTC
    and were then read as New York time (5 hours late). Now they are recognised and placed at their instant."""
    path = tmp_path / "offsets.csv"
    path.write_text(HEADER + "1,P1,1,2024-03-30T10:00:00+01:00,1.00\n2,P2,1,2024-07-01T10:00:00-04:00,1.00\n"
                    "3,P3,1,2024-01-05T23:30:00Z,1.00\n")
    run_command("--csv", str(path), "--map", SIMPLE_MAP, *extra)
    placed = {k: v.isoformat() for k, v in Order.objects.values_list("external_id", "placed_at")}
    assert placed == {"1": "2024-03-30T09:00:00+00:00", "2": "2024-07-01T14:00:00+00:00", "3": "2024-01-05T23:30:00+00:00"}


def test_undecidable_dates_refused_by_command_and_nothing_written(tmp_path):
    path = tmp_path / "ambiguous.csv"
    path.write_text(HEADER + "1,A,1,01/12/2021,1.00\n2,K,1,05/06/2021,1.00\n")
    with pytest.raises(CommandError, match="--date-format"):
        run_command("--csv", str(path), "--map", SIMPLE_MAP)
    assert db_counts() == {"Product": 0, "Customer": 0, "Order": 0, "OrderLine": 0, "ImportRun": 0}


# --- file conventions (written in tmp_path) ---------------------------------

def test_bom_semicolon_decimal_comma_export(tmp_path):
    text = ("Bestellung;Artikel;Menge;Datum;Preis;Kunde;Bezeichnung\n"
            "A-1;4711;2;13.03.2021 10:00;1.234,50;K-9;Kaffeemühle\n"
            "A-1;4712;1;13.03.2021 10:00;0,99;K-9;Filter\n"
            "A-2;4711;1;01.04.2021 12:30;1.230,00;;Kaffeemühle\n")
    path = tmp_path / "excel_de.csv"
    path.write_bytes(codecs.BOM_UTF8 + text.encode("utf-8"))
    mapping = "basket=Bestellung,product=Artikel,time=Datum,quantity=Menge,price=Preis,customer=Kunde,name=Bezeichnung"
    out = run_command("--csv", str(path), "--map", mapping, "--delimiter", ";", "--decimal", ",")
    assert "rejected                0" in out
    assert db_baskets() == {"A-1": {"4711", "4712"}, "A-2": {"4711"}}
    mill = Product.objects.get(sku="4711")
    assert (mill.name, mill.price) == ("Kaffeemühle", Decimal("1232.25"))  # median of 1234.50 and 1230.00
    assert OrderLine.objects.get(order__external_id="A-1", product__sku="4711").unit_price == Decimal("1234.50")
    assert Order.objects.get(external_id="A-2").placed_at.month == 4  # 01.04 is 1 April (day-first from 13.03)
    assert Order.objects.get(external_id="A-2").customer is None


def test_cp1252_semicolon_export(tmp_path):
    path = tmp_path / "win.csv"
    path.write_bytes("order_id;sku;qty;ordered_at;unit_price;name\n1;A1;1;2021-03-01 10:00;2,50;Crème brûlée £\n"
                     .encode("cp1252"))
    orders_import_csv(path=path, mapping=SIMPLE_MAP + ",name=name", encoding="cp1252", delimiter=";", decimal=",")
    product = Product.objects.get(sku="A1")
    assert (product.name, product.price) == ("Crème brûlée £", Decimal("2.50"))


# --- whole-file refusals: CommandError, nothing written ----------------------

def refused(path, match, *extra):
    with pytest.raises(CommandError, match=match):
        run_command("--csv", str(path), "--map", SIMPLE_MAP, *extra)
    assert db_counts() == {"Product": 0, "Customer": 0, "Order": 0, "OrderLine": 0, "ImportRun": 0}


def test_wrong_header_refused_naming_the_column(tmp_path):
    path = tmp_path / "wrong.csv"
    path.write_text("order,sku,qty,ordered_at,unit_price\n1,A,1,2021-03-01,1.00\n")
    refused(path, r"no column 'order_id' \(mapped to basket\)")


def test_empty_file_refused(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")
    refused(path, "empty")


def test_binary_file_refused(tmp_path):
    path = tmp_path / "photo.csv"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(200))
    refused(path, "not a text file")


@override_settings(SHOP_BUNDLES_IMPORT_MAX_BYTES=100)
def test_file_over_the_size_setting_refused(tmp_path):
    path = tmp_path / "big.csv"
    path.write_text(HEADER + "".join(f"{i},A{i},1,2021-03-01 10:00,1.00\n" for i in range(20)))
    refused(path, "over the import limit of 100 bytes")


def test_service_raises_ingest_error_and_writes_nothing(tmp_path):
    path = tmp_path / "header_only.csv"
    path.write_text(HEADER)
    with pytest.raises(IngestError, match="no order lines"):
        orders_import_csv(path=path, mapping=SIMPLE_MAP)
    assert db_counts()["ImportRun"] == 0


def test_dry_run_writes_nothing(cases_dir):
    out = run_command("--csv", str(cases_dir / "import" / "bad_rows.csv"), "--map", SIMPLE_MAP, "--dry-run")
    assert "rejected                6" in out
    assert db_counts() == {"Product": 0, "Customer": 0, "Order": 0, "OrderLine": 0, "ImportRun": 0}


def test_an_import_whose_every_line_is_rejected_fails_with_exit_status_1(tmp_path):
    """A semicolon export with decimal commas read with the defaults: every line rejected; the command
    prints the report and then fails (CommandError: exit status 1), so a scheduler sees it."""
    path = tmp_path / "semicolon.csv"
    path.write_text("order_id,sku,qty,ordered_at,unit_price\n1,A,1,2021-03-01,\"1,50\"\n2,B,1,2021-03-01,\"2,50\"\n")
    out = io.StringIO()
    with pytest.raises(CommandError) as failed:
        call_command("import_orders", "--csv", str(path), "--map", SIMPLE_MAP, "--no-progress", stdout=out)
    assert str(failed.value) == "no order line was imported: 2 of 2 lines were rejected (reasons above)"
    assert "unit_price: price '1,50' is not a number (the decimal separator is '.')" in out.getvalue()
    assert (Order.objects.count(), OrderLine.objects.count()) == (0, 0)


@pytest.mark.parametrize("orm", [False, True])
def test_a_later_file_that_adds_a_product_to_an_existing_order_updates_its_totals(tmp_path, monkeypatch, orm):
    """Order 501 is imported with P1 (2 x 1.00) and P2 (1 x 1.00); a later file repeats P1 and adds P3
    (3 x 3.00): P3 is added and the subtotal becomes 12.00. Order 502 (new) is created as usual; a third
    import of the same file changes nothing."""
    if orm:  # the SQLite demo path (bulk_create) on this PostgreSQL database, as the test above
        monkeypatch.setattr(imports, "_write_postgresql", imports._write_orm)
    first = tmp_path / "v1.csv"
    first.write_text("order_id,sku,qty,ordered_at,unit_price\n501,P1,2,2024-03-01,1.00\n501,P2,1,2024-03-01,1.00\n")
    second = tmp_path / "v2.csv"
    second.write_text("order_id,sku,qty,ordered_at,unit_price\n501,P1,2,2024-03-01,1.00\n501,P3,3,2024-03-01,3.00\n"
                      "502,P1,1,2024-03-02,1.00\n")
    run_command("--csv", str(first), "--map", SIMPLE_MAP)
    assert Order.objects.get(external_id="501").subtotal == Decimal("3.00")
    run_command("--csv", str(second), "--map", SIMPLE_MAP)
    order = Order.objects.get(external_id="501")
    assert sorted(order.lines.values_list("product__sku", "quantity")) == [("P1", 2), ("P2", 1), ("P3", 3)]
    assert (order.subtotal, order.total) == (Decimal("12.00"), Decimal("12.00"))
    assert Order.objects.get(external_id="502").subtotal == Decimal("1.00")
    assert ImportRun.objects.order_by("-pk").first().report["notes"]["orders_extended"] == 1
    run_command("--csv", str(second), "--map", SIMPLE_MAP)
    assert "orders_extended" not in ImportRun.objects.order_by("-pk").first().report["notes"]
    assert Order.objects.get(external_id="501").subtotal == Decimal("12.00")
