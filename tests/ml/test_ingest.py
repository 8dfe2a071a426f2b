"""bundling_ml.ingest: reading retailer CSV exports and the Complete Journey preset (no database)."""
import codecs
import subprocess
import sys
from decimal import ROUND_HALF_UP, Decimal
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bundling_ml.ingest import (
    IngestError,
    apply_cleaning_rules,
    completejourney_import_frames,
    infer_date_format,
    parse_mapping,
    read_orders_csv,
)

RETAIL_MAP = ("basket=InvoiceNo,product=StockCode,time=InvoiceDate,quantity=Quantity,price=UnitPrice,"
              "customer=CustomerID,name=Description")
SIMPLE_MAP = "basket=order_id,product=sku,time=ordered_at,quantity=qty,price=unit_price"
HEADER = "order_id,sku,qty,ordered_at,unit_price\n"


def baskets(lines: pd.DataFrame) -> dict:
    return {b: set(g["product_id"]) for b, g in lines.groupby("basket_id")}


def write(tmp_path: Path, text: str, name="export.csv", encoding="utf-8") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


# --- the field cases ------------------------------------------------------

@pytest.mark.faults
def test_retail_export_messy_baskets_after_cleaning(cases_dir):
    result = read_orders_csv(cases_dir / "import" / "retail_export_messy.csv", mapping=RETAIL_MAP, encoding="cp1252")
    assert baskets(result.lines) == {
        "540001": {"22001"},
        "540002": {"22001", "22003"},
        "540005": {"22001"},
        "540007": {"22001", "22003"},
    }
    pairs = pd.Series([p for items in baskets(result.lines).values() for p in combinations(sorted(items), 2)])
    assert pairs.value_counts().to_dict() == {("22001", "22003"): 2}


@pytest.mark.faults
def test_retail_export_messy_text_ids_guests_and_pound_sign(cases_dir):
    result = read_orders_csv(cases_dir / "import" / "retail_export_messy.csv", mapping=RETAIL_MAP, encoding="cp1252")
    lines = result.lines.set_index(["basket_id", "product_id"])
    assert lines.loc[("540001", "22001"), "customer_id"] == "20001"
    assert set(result.lines["customer_id"].dropna()) == {"20001", "20002", "20003"}
    assert result.lines.loc[result.lines["basket_id"] == "540002", "customer_id"].isna().all()
    assert lines.loc[("540002", "22003"), "name"] == "TEA TOWEL £ PRINT"
    assert result.customers == ["20001", "20002", "20003"]
    assert str(result.lines["customer_id"].dtype) == "string"
    assert lines.loc[("540001", "22001"), "quantity"] == 4.0


@pytest.mark.faults
def test_retail_export_messy_report_counts(cases_dir):
    report = read_orders_csv(cases_dir / "import" / "retail_export_messy.csv", mapping=RETAIL_MAP,
                             encoding="cp1252").report
    assert report.read == 13
    assert report.imported == 6
    assert report.skipped_reasons == {"cancellation": 2, "adjustment": 1, "non_product": 2, "cancelled_out": 2}
    assert report.rejected == 0 and report.duplicates == 0
    assert report.read == report.imported + report.skipped + report.rejected + report.duplicates
    # which lines were skipped, not only how many: A563185 on line 8, POST on line 4, M on line 12, the
    # cancellations C540003 / C540006 on lines 7 and 11, and the purchases they cancelled out on lines 3 and 9
    assert report.notes["skipped_lines"] == {"adjustment": [8], "non_product": [4, 12], "cancellation": [7, 11],
                                             "cancelled_out": [3, 9]}
    assert report.summary_lines()[-5:] == [
        "Skipped lines (left out; the rest of their order is imported):",
        "  cancellations (C + digits; their units are taken back from the customer's purchases): lines 7, 11",
        "  accounting adjustments (A + digits): line 8",
        "  non-product codes (postage, fees...): lines 4, 12",
        "  purchases cancelled out by a later cancellation: lines 3, 9"]


def test_skipped_returns_and_negative_prices_are_named_by_line_and_the_rest_of_the_order_is_kept(tmp_path):
    """A negative quantity outside a cancellation (a return) and a negative price are left out with their
    file lines; the order's other lines are imported (the protocol's cleaning, ARCHITECTURE.md step 1)."""
    rows = ["1,P1,1,2021-03-01 10:00,2.00", "1,P2,-1,2021-03-01 10:00,3.00", "2,P1,1,2021-03-02 10:00,2.00",
            "2,P3,1,2021-03-02 10:00,-1.00", "3,P1,0,2021-03-03 10:00,2.00", "3,P2,1,2021-03-03 10:00,3.00"]
    result = read_orders_csv(write(tmp_path, HEADER + "\n".join(rows) + "\n"), mapping=SIMPLE_MAP)
    report = result.report
    assert report.skipped_reasons == {"quantity_negative": 1, "price_negative": 1, "quantity_zero": 1}
    assert report.notes["skipped_lines"] == {"quantity_negative": [3], "price_negative": [5], "quantity_zero": [6]}
    assert sorted(map(tuple, result.lines[["basket_id", "product_id"]].to_numpy().tolist())) == [
        ("1", "P1"), ("2", "P1"), ("3", "P2")]
    assert "  negative quantity outside a cancellation (a return or correction): line 3" in report.summary_lines()


def test_a_file_with_every_line_rejected_does_not_call_its_ids_non_numeric(tmp_path):
    report = read_orders_csv(write(tmp_path, HEADER + "1,A,x,2021-03-01 10:00,2.00\n"), mapping=SIMPLE_MAP).report
    assert report.imported == 0 and report.rejected == 1
    assert report.notes["invoice_prefix_rules"] == "off (no line was left to look at)"


@pytest.mark.faults
def test_bad_rows_rejections_with_line_numbers(cases_dir):
    result = read_orders_csv(cases_dir / "import" / "bad_rows.csv", mapping=SIMPLE_MAP)
    assert [(r.line, r.field, r.reason) for r in result.report.rejections] == [
        (4, "qty", "quantity 'two' is not a number"),
        (5, "sku", "SKU missing"),
        (6, "ordered_at", "date 'not a date' does not match '%Y-%m-%d %H:%M'"),
        (7, "(row)", "6 fields where 5 expected"),
        (13, "order_id", "order 7008 has a rejected line (line 14)"),
        (14, "qty", "quantity 'x' is not a number"),
    ]
    assert result.report.duplicate_lines == [{"line": 10, "duplicate_of": 2}]


@pytest.mark.faults
def test_bad_rows_imports_whole_good_orders_only(cases_dir):
    result = read_orders_csv(cases_dir / "import" / "bad_rows.csv", mapping=SIMPLE_MAP)
    assert baskets(result.lines) == {"7001": {"SKU-1", "SKU-2"}, "7006": {"SKU-1", "SKU-3"},
                                     "7007": {"SKU-2", "SKU-3"}}
    line_2 = result.lines[(result.lines["basket_id"] == "7001") & (result.lines["product_id"] == "SKU-1")]
    assert line_2["quantity"].tolist() == [2.0]  # the duplicate line 10 is not counted again
    assert line_2["source_line"].tolist() == [2]
    report = result.report
    assert (report.read, report.imported, report.rejected, report.duplicates, report.skipped) == (13, 6, 6, 1, 0)


@pytest.mark.faults
@pytest.mark.parametrize("date_format", [None, "%d/%m/%Y %H:%M"])
def test_dates_day_first_all_in_december(cases_dir, date_format):
    result = read_orders_csv(cases_dir / "import" / "dates_day_first.csv", mapping=SIMPLE_MAP,
                             date_format=date_format)
    times = result.lines.groupby("basket_id")["time"].first()
    assert times.to_dict() == {"9001": pd.Timestamp("2021-12-01 08:26"), "9002": pd.Timestamp("2021-12-13 09:02")}
    assert result.report.notes["date_format"] == "%d/%m/%Y %H:%M"


# --- date inference -------------------------------------------------------

def test_inference_says_which_value_decided_day_first():
    fmt, how = infer_date_format(pd.Series(["01/12/2021 08:26", "13/12/2021 09:02"]), column="d",
                                 lines=pd.Series([2, 4]))
    assert fmt == "%d/%m/%Y %H:%M"
    assert how == "day-first, decided by '13/12/2021 09:02' on line 4"


def test_inference_month_first_from_unambiguous_value():
    fmt, _ = infer_date_format(pd.Series(["12/1/2010 8:26", "12/13/2010 9:02"]))
    assert fmt == "%m/%d/%Y %H:%M"


@pytest.mark.faults
def test_undecidable_day_month_order_stops_and_asks_for_format(tmp_path):
    path = write(tmp_path, HEADER + "1,A,1,01/12/2021,1.00\n2,B,1,05/06/2021,1.00\n")
    with pytest.raises(IngestError, match="--date-format") as exc:
        read_orders_csv(path, mapping=SIMPLE_MAP)
    assert "day-first or month-first" in str(exc.value)


@pytest.mark.faults
def test_column_mixing_day_first_and_month_first_is_refused(tmp_path):
    path = write(tmp_path, HEADER + "1,A,1,13/12/2021,1.00\n2,B,1,12/13/2021,1.00\n")
    with pytest.raises(IngestError, match="mixes day-first .* and month-first"):
        read_orders_csv(path, mapping=SIMPLE_MAP)


def test_day_first_column_never_reads_a_row_month_first(tmp_path):
    path = write(tmp_path, HEADER + "1,A,1,13/12/2021,1.00\n2,K,1,01/12/2021,1.00\n3,L,1,12/31/2021,1.00\n")
    result = read_orders_csv(path, mapping=SIMPLE_MAP, date_format="%d/%m/%Y")
    assert result.lines.set_index("basket_id")["time"].to_dict() == {
        "1": pd.Timestamp("2021-12-13"), "2": pd.Timestamp("2021-12-01")}
    assert [(r.line, r.reason) for r in result.report.rejections] == [
        (4, "date '12/31/2021' does not match '%d/%m/%Y'")]
    assert set(result.lines["basket_id"]) == {"1", "2"}


def test_unrecognisable_date_column_is_refused(tmp_path):
    path = write(tmp_path, HEADER + "1,A,1,soon,1.00\n2,B,1,later,1.00\n")
    with pytest.raises(IngestError, match="cannot recognise the dates"):
        read_orders_csv(path, mapping=SIMPLE_MAP)


def test_a_column_of_mixed_date_layouts_names_a_line_the_best_layout_cannot_read(tmp_path):
    # Lines 2-3 are ISO, 4-5 day-first with a 2-digit year, 6-7 free text: no layout reads half of them.
    # The message used to show line 2's readable '2021-03-01' as the example.
    rows = ["1,A,1,2021-03-01,1.00", "2,B,1,2021-03-02,1.00", "3,A,1,13/03/21,1.00", "4,B,1,14/03/21,1.00",
            "5,A,1,March 15,1.00", "6,B,1,March 16,1.00"]
    path = write(tmp_path, HEADER + "\n".join(rows) + "\n")
    with pytest.raises(IngestError) as info:
        read_orders_csv(path, mapping=SIMPLE_MAP)
    assert str(info.value) == (
        "cannot recognise the dates in column 'ordered_at': the layout that reads the most values ('%Y-%m-%d') reads "
        "only 2 of the 6 distinct values checked, not e.g. '13/03/21' on line 4; pass --date-format with a "
        "strptime format, e.g. '%d/%m/%Y %H:%M'")


@pytest.mark.parametrize("fmt, message", [
    ("%Q", "--date-format '%Q' is not a strptime format ('Q' is a bad directive in format '%Q'); "
           "e.g. '%d/%m/%Y %H:%M' or '%Y-%m-%dT%H:%M:%S%z'"),
    ("%d/%m/%Y %", "--date-format '%d/%m/%Y %' is not a strptime format (stray % in format '%d/%m/%Y %'); "
                   "e.g. '%d/%m/%Y %H:%M' or '%Y-%m-%dT%H:%M:%S%z'"),
    (" ", "--date-format is empty; give a strptime format, e.g. '%d/%m/%Y %H:%M' or '%Y-%m-%dT%H:%M:%S%z'"),
])
def test_a_date_format_that_is_not_a_strptime_format_is_refused_by_name(tmp_path, fmt, message):
    path = write(tmp_path, HEADER + "1,A,1,2021-03-01 10:00,1.50\n")
    with pytest.raises(IngestError) as info:  # was pandas' bare ValueError: 'Q' is a bad directive
        read_orders_csv(path, mapping=SIMPLE_MAP, date_format=fmt)
    assert str(info.value) == message


def test_utf16_named_for_a_file_without_a_byte_order_mark_is_refused_by_name(tmp_path):
    path = write(tmp_path, HEADER + "1,A,1,2021-03-01 10:00,1.50\n")
    with pytest.raises(IngestError) as info:  # was a bare UnicodeError: UTF-16 stream does not start with BOM
        read_orders_csv(path, mapping=SIMPLE_MAP, encoding="utf-16")
    assert str(info.value) == (
        f"{path.name} cannot be read in encoding 'utf-16' (UTF-16 stream does not start with BOM); pass the "
        "file's own --encoding, e.g. utf-8, or cp1252 for Windows exports")


# --- file conventions -----------------------------------------------------

@pytest.mark.faults
def test_utf8_bom_is_removed_from_first_header(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes(codecs.BOM_UTF8 + (HEADER + "1,A,1,2021-03-01 10:00,1.50\n").encode())
    result = read_orders_csv(path, mapping=SIMPLE_MAP)
    assert result.lines["basket_id"].tolist() == ["1"]


def test_utf16_tab_export_is_read(tmp_path):
    path = tmp_path / "excel.txt"
    path.write_bytes((HEADER + "1,Crème,1,2021-03-01 10:00,1.50\n").replace(",", "\t").encode("utf-16"))
    result = read_orders_csv(path, mapping=SIMPLE_MAP, delimiter="tab")
    assert result.lines["product_id"].tolist() == ["Crème"]


@pytest.mark.faults
def test_semicolon_and_decimal_comma(tmp_path):
    text = ("order_id;sku;qty;ordered_at;unit_price\n"
            "1;A;2;01.03.2021 10:00;3,50\n"
            "1;K;1;01.03.2021 10:00;1.234,50\n"
            "2;A;1;13.03.2021 11:00;€3,40\n")
    result = read_orders_csv(write(tmp_path, text), mapping=SIMPLE_MAP, delimiter=";", decimal=",")
    prices = result.lines.set_index(["basket_id", "product_id"])["price"].to_dict()
    assert prices == {("1", "A"): 3.5, ("1", "K"): 1234.5, ("2", "A"): 3.4}
    assert result.lines["time"].min() == pd.Timestamp("2021-03-01 10:00")


def test_decimal_point_value_in_decimal_comma_file_is_rejected_not_misread(tmp_path):
    text = "order_id;sku;qty;ordered_at;unit_price\n1;A;2;2021-03-01 10:00;3.5\n"
    result = read_orders_csv(write(tmp_path, text), mapping=SIMPLE_MAP, delimiter=";", decimal=",")
    assert result.lines.empty
    assert result.report.rejections[0].reason == "price '3.5' is not a number (the decimal separator is ',')"


def test_wrong_delimiter_gets_a_hint(tmp_path):
    path = write(tmp_path, HEADER.replace(",", ";") + "1;A;1;2021-03-01;1\n")
    with pytest.raises(IngestError, match=r"no column 'order_id' \(mapped to basket\).*--delimiter ';'"):
        read_orders_csv(path, mapping=SIMPLE_MAP)


def test_spreadsheet_float_ids_are_restored_to_text(tmp_path):
    text = "order,sku,qty,at,price,customer\n1,A,1,2021-03-01,1.00,20001.0\n2,A,1,2021-03-02,1.00,\n"
    result = read_orders_csv(write(tmp_path, text), mapping="basket=order,product=sku,time=at,quantity=qty,"
                                                           "price=price,customer=customer")
    assert result.lines["customer_id"].tolist()[0] == "20001"
    assert pd.isna(result.lines["customer_id"].tolist()[1])


def test_a_column_mixing_1873_and_1873_0_holds_one_customer_and_other_text_is_left_alone(tmp_path):
    mapping = "basket=order,product=sku,time=at,quantity=qty,price=price,customer=customer"
    text = ("order,sku,qty,at,price,customer\n1,A,1,2021-03-01,1.00,1873\n2,A,1,2021-03-02,1.00,1873.0\n"
            "3,A,1,2021-03-03,1.00,007\n")
    result = read_orders_csv(write(tmp_path, text), mapping=mapping)
    assert result.lines["customer_id"].tolist() == ["1873", "1873", "007"]  # was "1873" and "1873.0"
    assert result.customers == ["007", "1873"]
    text = "order,sku,qty,at,price,customer\n1,A,1,2021-03-01,1.00,17.0\n2,A,1,2021-03-02,1.00,A-17\n"
    assert read_orders_csv(write(tmp_path, text, name="b.csv"), mapping=mapping).lines["customer_id"].tolist() == [
        "17.0", "A-17"]


# --- whole-file refusals --------------------------------------------------

@pytest.mark.faults
def test_empty_file_is_refused(tmp_path):
    with pytest.raises(IngestError, match="is empty"):
        read_orders_csv(write(tmp_path, ""), mapping=SIMPLE_MAP)


@pytest.mark.faults
def test_header_only_file_is_refused(tmp_path):
    with pytest.raises(IngestError, match="no order lines"):
        read_orders_csv(write(tmp_path, HEADER), mapping=SIMPLE_MAP)


@pytest.mark.faults
def test_missing_mapped_column_is_named(tmp_path):
    path = write(tmp_path, "order_id,sku,quantity,ordered_at,unit_price\n1,A,1,2021-03-01,1\n")
    with pytest.raises(IngestError, match=r"no column 'qty' \(mapped to quantity\)"):
        read_orders_csv(path, mapping=SIMPLE_MAP)


@pytest.mark.faults
def test_binary_file_is_refused(tmp_path):
    path = tmp_path / "orders.xlsx"
    path.write_bytes(b"PK\x03\x04\x14\x00\x06\x00" + bytes(range(256)))
    with pytest.raises(IngestError, match="not a text file"):
        read_orders_csv(path, mapping=SIMPLE_MAP)


def test_wrong_encoding_is_refused_with_a_hint(cases_dir):
    with pytest.raises(IngestError, match="not text in encoding 'utf-8'.*cp1252"):
        read_orders_csv(cases_dir / "import" / "retail_export_messy.csv", mapping=RETAIL_MAP)


def test_a_directory_or_a_missing_path_is_refused_with_a_message(tmp_path):
    """`import_orders --csv /tmp` used to end in a traceback (IsADirectoryError)."""
    with pytest.raises(IngestError) as refused:
        read_orders_csv(tmp_path, mapping=SIMPLE_MAP)
    assert str(refused.value) == f"{tmp_path} is a directory; give the CSV file's path"
    with pytest.raises(IngestError) as refused:
        read_orders_csv(tmp_path / "missing.csv", mapping=SIMPLE_MAP)
    assert str(refused.value) == f"cannot read {tmp_path / 'missing.csv'}: No such file or directory"


@pytest.mark.faults
def test_file_over_the_size_limit_is_refused(tmp_path):
    path = write(tmp_path, HEADER + "1,A,1,2021-03-01,1\n")
    with pytest.raises(IngestError, match="over the import limit of 10 bytes"):
        read_orders_csv(path, mapping=SIMPLE_MAP, max_bytes=10)


def test_mapping_needs_required_fields():
    with pytest.raises(IngestError, match="needs price"):
        parse_mapping("basket=a,product=b,time=c,quantity=d")
    assert parse_mapping("basket=a,product=b,time=c,quantity=d,price=e,description=f")["name"] == "f"


# --- cleaning rules -------------------------------------------------------

def frame(rows):
    df = pd.DataFrame(rows, columns=["basket_id", "product_id", "customer_id", "time", "quantity", "price"])
    df["customer_id"] = df["customer_id"].astype("string")
    df["time"] = pd.to_datetime(df["time"])
    return df


def test_partial_cancellation_reduces_latest_earlier_purchase():
    lines = frame([
        ("1", "P", "c1", "2021-01-01", 5.0, 2.0),
        ("2", "P", "c1", "2021-01-02", 3.0, 2.0),
        ("C3", "P", "c1", "2021-01-03", -4.0, 2.0),
        ("4", "P", "c1", "2021-01-04", 7.0, 2.0),  # later purchase: untouched
    ])
    out = apply_cleaning_rules(lines)
    assert out.set_index("basket_id")["quantity"].to_dict() == {"1": 4.0, "4": 7.0}


def test_guest_cancellation_takes_nothing_back_and_is_counted():
    from bundling_ml.ingest import ImportReport

    report = ImportReport()
    lines = frame([("1", "P", None, "2021-01-01", 2.0, 1.0), ("C2", "P", None, "2021-01-02", -2.0, 1.0)])
    out = apply_cleaning_rules(lines, report)
    assert out["quantity"].tolist() == [2.0]
    assert report.notes["cancellations_unmatched"] == 1


def test_measured_quantity_becomes_one_unit_at_line_value():
    out = apply_cleaning_rules(frame([("1", "CHEESE", "c", "2021-01-01", 0.5, 12.0)]))
    assert out[["quantity", "price"]].values.tolist() == [[1.0, 6.0]]


def test_bundling_ml_ingest_does_not_import_django():
    code = "import sys, bundling_ml.ingest; print('django' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "False"


# --- Complete Journey rules on hand-made tables ---------------------------

def cj_tables():
    ts = pd.Timestamp("2017-01-02 10:00:00")
    tx = pd.DataFrame({
        "household_id": [1, 1, 1, 2, 2, 2, 2],
        "store_id": [10, 10, 10, 11, 11, 11, 11],
        "basket_id": [100, 100, 100, 200, 200, 200, 300],
        "product_id": [7, 8, 9, 7, 50, 51, 7],
        "quantity": [3, 0, 1, 2, 1, 9000, 1],
        "sales_value": [1.75, 0.0, 30.0, 2.50, 20.0, 25.0, 1.00],
        "retail_disc": [0.25, 0.0, 0.0, 0.00, 0.5, 1.0, 0.25],
        "coupon_disc": [0.10, 0.0, 0.0, 0.00, 0.0, 0.0, 0.0],
        "coupon_match_disc": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        "week": [1, 1, 1, 1, 1, 1, 2],
        "transaction_timestamp": [ts] * 3 + [ts + pd.Timedelta(hours=1)] * 3 + [ts + pd.Timedelta(days=7)],
    })
    products = pd.DataFrame({
        "product_id": [7, 8, 9, 50, 51, 60],
        "manufacturer_id": [1] * 6,
        "department": ["GROCERY", "GROCERY", "GROCERY", "FUEL", "MISCELLANEOUS", "GROCERY"],
        "brand": ["Private", "National", "National", "National", "National", "National"],
        "product_category": ["COLD CEREAL", "X", "Y", "GASOLINE", "KIOSK", "Z"],
        "product_type": ["KIDS CEREAL", None, "WINE", "GASOLINE-REG UNLEADED", "GAS", "T"],
        "package_size": ["14.5 OZ", None, "750 ML", None, None, None],
    })
    return tx, products


def test_cj_unit_price_discount_and_quantity_zero():
    tx, products = cj_tables()
    result = completejourney_import_frames(tx, products)
    lines = result.lines.set_index(["basket_id", "product_id"])
    assert result.report.read == 7
    assert result.report.skipped_reasons == {"quantity_zero": 1}
    assert ("100", "8") not in lines.index
    # (1.75 + 0.25 + 0) / 3 = 0.6666.. -> 0.67; discount 0.25 + 0.10
    assert lines.loc[("100", "7"), ["quantity", "price", "discount"]].tolist() == [3.0, 0.67, 0.35]


def test_cj_fuel_and_volume_lines_are_one_unit_at_line_value():
    tx, products = cj_tables()
    lines = completejourney_import_frames(tx, products).lines.set_index(["basket_id", "product_id"])
    assert lines.loc[("200", "50"), ["quantity", "price"]].tolist() == [1.0, 20.5]  # department FUEL
    assert lines.loc[("200", "51"), ["quantity", "price"]].tolist() == [1.0, 26.0]  # quantity 9000 > 100


def test_cj_shelf_price_is_exact_median_rounded_half_up():
    tx, products = cj_tables()
    prices = completejourney_import_frames(tx, products).products.set_index("product_id")["price"]
    # product 7 unit prices: 2.00/3, 2.50/2, 1.25/1 -> median 1.25
    assert prices["7"] == 1.25
    assert np.isnan(prices["60"])  # in the catalogue, never sold
    tx2 = tx[tx["basket_id"] != 300]  # two lines left: 0.6666.. and 1.25 -> 0.9583.. -> 0.96
    prices2 = completejourney_import_frames(tx2, products).products.set_index("product_id")["price"]
    expected = ((Decimal(2) / 3 + Decimal("1.25")) / 2).quantize(Decimal("0.01"), ROUND_HALF_UP)
    assert Decimal(str(prices2["7"])) == expected == Decimal("0.96")


def test_cj_half_cent_median_rounds_up():
    tx, products = cj_tables()
    tx = tx[tx["product_id"] == 7].iloc[:2].copy()
    tx["quantity"] = [1, 1]
    tx["sales_value"] = [1.00, 1.25]
    tx["retail_disc"] = [0.0, 0.0]
    prices = completejourney_import_frames(tx, products).products.set_index("product_id")["price"]
    assert prices["7"] == 1.13  # median 1.125 -> half-up 1.13 (banker's rounding would give 1.12)


def test_cj_names_and_slices():
    tx, products = cj_tables()
    result = completejourney_import_frames(tx, products)
    names = result.products.set_index("product_id")["name"]
    assert names["7"] == "Kids Cereal 14.5 OZ (private label)"
    assert names["8"] == "X"
    assert len(result.products) == 6  # full import: the whole catalogue
    sliced = completejourney_import_frames(tx, products, weeks=1)
    assert set(sliced.lines["basket_id"]) == {"100", "200"}
    assert set(sliced.products["product_id"]) == {"7", "9", "50", "51"}  # only products sold in the slice
    one = completejourney_import_frames(tx, products, households=1)
    assert one.lines["customer_id"].nunique() == 1


def test_cj_promotions_aggregate_to_product_week():
    tx, products = cj_tables()
    promotions = pd.DataFrame({
        "product_id": [7, 7, 7, 7, 7, 9, 999],
        "store_id": [1, 2, 3, 3, 4, 1, 1],
        "display_location": ["5", "5", "3", "3", "0", "0", "1"],
        "mailer_location": ["A", "0", "0", "0", "D", "0", "A"],
        "week": [2, 2, 2, 2, 2, 3, 2],
    })
    promo = completejourney_import_frames(tx, products, promotions).promotions.set_index(["product_id", "week"])
    row = promo.loc[("7", 2)]
    assert (row["display_stores"], row["display_location"]) == (3, "5")  # stores 1, 2, 3 (store 3 listed twice)
    assert (row["mailer_stores"], row["mailer_location"]) == (2, "A")  # tie A/D -> smallest code
    assert row["week_start"] == pd.Timestamp("2017-01-08").date()
    none = promo.loc[("9", 3)]
    assert (none["display_stores"], none["display_location"], none["mailer_location"]) == (0, "0", "0")
    assert ("999", 2) not in promo.index  # not in the catalogue


def test_letter_prefixed_shop_order_ids_are_not_cancellations(tmp_path):
    """The C/A invoice convention applies only to exports with numeric invoice numbers."""
    text = HEADER + "A-1,P1,1,2021-03-01 10:00,1.00\nC100,P2,2,2021-03-01 11:00,2.00\nA200,P1,1,2021-03-02 09:00,1.00\n"
    result = read_orders_csv(write(tmp_path, text), mapping=SIMPLE_MAP)
    assert set(result.lines["basket_id"]) == {"A-1", "C100", "A200"}
    assert result.report.skipped == 0
    assert result.report.notes["invoice_prefix_rules"].startswith("off")


def test_ml_converters_share_the_import_rules():
    """bundling_ml.data's Complete Journey frames (backtest, CLI preset) are the import's frames."""
    from bundling_ml.data import completejourney_frames, completejourney_promotions, prepare_lines

    tx, products = cj_tables()
    lines, prods = completejourney_frames(tx, products)
    imported = completejourney_import_frames(tx, products)
    pd.testing.assert_frame_equal(lines, imported.lines)
    pd.testing.assert_frame_equal(prods, imported.products)
    clean = prepare_lines(lines).set_index(["basket_id", "product_id"])
    assert clean.loc[("200", "50"), ["quantity", "price"]].tolist() == [1.0, 20.5]  # fuel: one unit at the line value
    promotions = pd.DataFrame({
        "product_id": [7, 7, 7, 7, 7, 9],
        "store_id": [1, 2, 3, 3, 4, 1],
        "display_location": ["5", "5", "3", "3", "0", "0"],
        "mailer_location": ["A", "0", "0", "0", "D", "0"],
        "week": [2, 2, 2, 2, 2, 3],
    })
    ranker = completejourney_promotions(promotions).set_index(["product_id", "week_start"])
    assert list(ranker.columns) == ["display", "mailer"]
    # distinct stores, as in the import: store 3 listed twice counts once
    assert ranker.loc[("7", pd.Timestamp("2017-01-08"))].tolist() == [3.0, 2.0]
    assert ranker.loc[("9", pd.Timestamp("2017-01-15"))].tolist() == [0.0, 0.0]


# --- QA session 8: input that used to be lost or overflow silently ------------------------------------

def test_an_unclosed_quote_refuses_the_file_naming_its_line(tmp_path):
    """The tolerant CSV reader would read the rest of the file into one field and drop those lines."""
    path = write(tmp_path, HEADER + "1,P1,1,2024-03-01,1.00\n2,P2,1,2024-03-01,\"2.00\n3,P3,1,2024-03-02,3.00\n"
                 "4,P4,1,2024-03-02,4.00\n")
    with pytest.raises(IngestError) as refused:
        read_orders_csv(path, mapping=SIMPLE_MAP)
    assert str(refused.value) == (
        "export.csv: line 3: a quoted field (\") starts here and is never closed, so the rest of the file would "
        "read as one value; nothing was imported. Close or remove the quote and import again")
    ok = write(tmp_path, HEADER + "1,P1,1,2024-03-01,\"1.00\"\n2,\"P2\nnew line\",1,2024-03-01,2.00\n", name="ok.csv")
    assert read_orders_csv(ok, mapping=SIMPLE_MAP).report.imported == 2  # closed quotes (even over lines) are fine


def test_numbers_too_large_for_a_line_and_long_store_ids_are_rejected_with_the_row(tmp_path):
    path = write(tmp_path, "order_id,sku,qty,ordered_at,unit_price,store\n"
                 "1,P1,1,2024-03-01,99999999999999999999.99,S1\n"
                 "2,P2,99999999999999999999,2024-03-01,2.00,S1\n"
                 "3,P1,1000000,2024-03-01,1000000.00,S1\n"
                 "4,P1,1,2024-03-01,1.00," + "S" * 33 + "\n"
                 "5,P1,1000000,2024-03-01,9999999999.99,S2\n"
                 "6,P1,2,2024-03-01,1.50,S2\n")
    result = read_orders_csv(path, mapping=SIMPLE_MAP + ",store=store")
    assert [(r.line, r.field, r.reason) for r in result.report.rejections] == [
        (2, "unit_price", "price '99999999999999999999.99' is larger than 9,999,999,999.99 (the most a line can hold)"),
        (3, "qty", "quantity '99999999999999999999' is larger than 1,000,000 (the most a line can hold)"),
        (4, "unit_price", "quantity x price is larger than 999,999,999,999.99 (the most an order can hold)"),
        (5, "store", "store id 'SSSSSSSSSSSSSSSSSSSS'... is longer than 32 characters"),
        (6, "unit_price", "quantity x price is larger than 999,999,999,999.99 (the most an order can hold)"),
    ]
    assert result.lines[["basket_id", "quantity", "price"]].values.tolist() == [["6", 2, 1.5]]


def test_iso_times_with_utc_offsets_are_recognised_without_a_date_format(tmp_path):
    path = write(tmp_path, HEADER + "1,P1,1,2024-03-01T10:00:00+02:00,1.00\n2,P2,1,2024-03-01T10:00:00Z,2.00\n")
    result = read_orders_csv(path, mapping=SIMPLE_MAP)
    assert (result.report.notes["date_format"], result.report.notes["times_utc"]) == ("%Y-%m-%dT%H:%M:%S%z", True)
    assert result.report.notes["date_order"] == "year-first (ISO), with UTC offsets (read as UTC)"
    times = result.lines.drop_duplicates("basket_id").set_index("basket_id")["time"].astype(str).to_dict()
    assert times == {"1": "2024-03-01 08:00:00", "2": "2024-03-01 10:00:00"}
    plain = read_orders_csv(write(tmp_path, HEADER + "1,P1,1,2024-03-01T10:00:00,1.00\n", name="plain.csv"), mapping=SIMPLE_MAP)
    assert plain.report.notes["date_format"] == "%Y-%m-%dT%H:%M:%S" and "times_utc" not in plain.report.notes


def test_utc_offsets_may_differ_within_a_column(tmp_path):
    """Summer and winter time in one export: every time becomes UTC (no 'Mixed timezones' crash)."""
    path = write(tmp_path, HEADER + "1,P1,1,2024-03-01T10:00:00+02:00,1.00\n2,P2,1,2024-03-01T10:00:00Z,2.00\n"
                 "3,P3,1,2024-07-01T10:00:00-04:00,3.00\n")
    result = read_orders_csv(path, mapping=SIMPLE_MAP, date_format="%Y-%m-%dT%H:%M:%S%z")
    times = result.lines.drop_duplicates("basket_id").set_index("basket_id")["time"].astype(str).to_dict()
    assert times == {"1": "2024-03-01 08:00:00", "2": "2024-03-01 10:00:00", "3": "2024-07-01 14:00:00"}


@pytest.mark.parametrize("mapping, message", [
    ("basket=order_id,product=order_id,time=ordered_at,quantity=qty,price=unit_price",
     "column 'order_id' is mapped to basket and product; each field needs its own column"),
    ("basket=order_id,product=sku,time=ordered_at,quantity=qty,price=QTY",
     "column 'qty' is mapped to quantity and price; each field needs its own column"),
    ("basket=order_id,product=sku,time=ordered_at,quantity=qty,price=unit_price,product=order_id",
     "mapping key 'product' is given twice ('sku' and 'order_id'); give each key once"),
])
def test_a_mapping_that_reuses_a_column_or_a_key_is_refused(mapping, message):
    with pytest.raises(IngestError) as refused:
        parse_mapping(mapping)
    assert str(refused.value) == message


def test_an_order_whose_lines_name_two_stores_is_rejected_whole(tmp_path):
    path = write(tmp_path, "order_id,sku,qty,ordered_at,unit_price,store\n1,P1,1,2024-03-01,1.00,S1\n"
                 "1,P2,1,2024-03-01,2.00,S2\n2,P1,1,2024-03-01,1.00,S1\n2,P2,1,2024-03-01,2.00,S1\n")
    result = read_orders_csv(path, mapping=SIMPLE_MAP + ",store=store")
    assert [(r.line, r.field, r.reason) for r in result.report.rejections] == [
        (2, "store", "order 1 names more than one store (S1, S2)"),
        (3, "store", "order 1 names more than one store (S1, S2)")]
    assert sorted(result.lines["basket_id"].unique()) == ["2"]


# --- basket time spread (reported, never rejected) -------------------------

SPREAD_CSV = (HEADER
              + "9001,P1,1,2024-03-01 09:00:00,1.00\n9001,P2,1,2024-03-01 09:00:40,1.00\n"  # 40 s: one checkout
              + "9002,P1,1,2024-03-01 10:00:00,1.00\n9002,P2,1,2024-03-04 18:30:00,1.00\n"  # 3 days 8.5 hours
              + "9003,P1,1,2024-03-02 08:00:00,1.00\n9003,P2,1,2024-03-02 09:00:00,1.00\n"  # exactly 1 hour: not over
              + "9003,P3,1,2024-03-02 08:30:00,1.00\n"
              + "9004,P1,1,2024-03-05 08:00:00,1.00\n9004,P3,1,2024-03-05 10:15:00,1.00\n")  # 2 hours 15 minutes
SPREAD_EXPECTED = {
    "tolerance": "1:00:00", "tolerance_seconds": 3600, "orders": 2,
    "examples": [{"order": "9002", "earliest": "2024-03-01 10:00:00", "latest": "2024-03-04 18:30:00", "lines": 2},
                 {"order": "9004", "earliest": "2024-03-05 08:00:00", "latest": "2024-03-05 10:15:00", "lines": 2}],
}


def test_orders_whose_lines_span_more_than_an_hour_are_reported_widest_first(tmp_path):
    from bundling_ml.ingest import basket_time_spread

    result = read_orders_csv(write(tmp_path, SPREAD_CSV), mapping=SIMPLE_MAP)
    assert result.report.notes["time_spread"] == SPREAD_EXPECTED
    assert result.report.rejected == 0 and result.report.imported == 9  # reported, nothing rejected
    assert "Orders whose lines span more than 1:00:00 (each is placed at its earliest line time; is the basket " \
           "column one checkout?): 2" in result.report.summary_lines()
    assert "  order 9002: lines from 2024-03-01 10:00:00 to 2024-03-04 18:30:00 (2 lines)" \
        in result.report.summary_lines()
    # a stricter tolerance and one example: 9003 (1 hour) now counts too; the widest is listed, the rest counted
    import datetime as dt

    strict = basket_time_spread(result.lines, tolerance=dt.timedelta(minutes=30), examples=1)
    assert (strict["orders"], strict["tolerance_seconds"], [e["order"] for e in strict["examples"]]) == (3, 1800, ["9002"])
    assert read_orders_csv(write(tmp_path, SPREAD_CSV), mapping=SIMPLE_MAP,
                           time_spread_tolerance=dt.timedelta(days=4)).report.notes["time_spread"]["orders"] == 0


def test_complete_journey_baskets_have_one_time_each(cj_slice):
    notes = completejourney_import_frames(cj_slice["transactions"], cj_slice["products"]).report.notes
    assert notes["time_spread"] == {"tolerance": "1:00:00", "tolerance_seconds": 3600, "orders": 0, "examples": []}


def test_cancellations_are_returned_with_the_quantity_the_file_could_not_take_back(cases_dir, tmp_path):
    """C540003 (4 red mugs of 20001) took all 4 back from 540001; a cancellation of 5 with only 2 bought before
    keeps 3 for the database import; a guest's keeps all."""
    result = read_orders_csv(cases_dir / "import" / "retail_export_messy.csv", mapping=RETAIL_MAP, encoding="cp1252")
    got = result.cancellations[["basket_id", "product_id", "customer_id", "quantity", "left", "taken_from"]]
    assert got.astype(object).to_dict("records") == [
        {"basket_id": "C540003", "product_id": "22002", "customer_id": "20001", "quantity": 4.0, "left": 0.0,
         "taken_from": (("540001", 4.0),)},
        {"basket_id": "C540006", "product_id": "22004", "customer_id": "20002", "quantity": 50000.0, "left": 0.0,
         "taken_from": (("540005", 50000.0),)},
    ]
    text = ("InvoiceNo,StockCode,Quantity,InvoiceDate,UnitPrice,CustomerID\n"
            "100,X,2,2024-03-01 10:00,1.00,c1\nC200,X,-5,2024-03-02 10:00,1.00,c1\nC201,X,-1,2024-03-02 11:00,1.00,\n"
            "300,Y,1,2024-03-03 10:00,1.00,c2\n")
    result = read_orders_csv(write(tmp_path, text), mapping=RETAIL_MAP.replace(",name=Description", ""))
    assert result.cancellations[["basket_id", "left", "taken_from"]].astype(object).to_dict("records") == [
        {"basket_id": "C200", "left": 3.0, "taken_from": (("100", 2.0),)},
        {"basket_id": "C201", "left": 1.0, "taken_from": ()},
    ]
    assert result.report.skipped_reasons == {"cancellation": 2, "cancelled_out": 1}
    assert result.report.notes["cancellations_unmatched"] == 1
