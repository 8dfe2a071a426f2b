"""`python -m bundling_ml recommend` on a raw retailer export (cleaning rules of the Django import)."""
import pandas as pd
import pytest

from bundling_ml import cli


def test_recommend_on_messy_export(cases_dir, tmp_path):
    queries = tmp_path / "q.csv"
    pd.DataFrame({"query_id": ["q1", "q2", "q3"], "product_id": ["22001", "22003", "NOPE"]}).to_csv(queries, index=False)
    out = tmp_path / "recs.csv"
    code = cli.main([
        "recommend", "--orders", str(cases_dir / "import" / "retail_export_messy.csv"),
        "--columns", "basket=InvoiceNo,product=StockCode,time=InvoiceDate,quantity=Quantity,price=UnitPrice,customer=CustomerID,name=Description",
        "--train-until", "2011-01-05", "--queries", str(queries), "--k", "3", "--out", str(out),
        "--encoding", "cp1252",
    ])
    assert code == 0
    recs = pd.read_csv(out, dtype=str)
    assert list(recs.columns) == ["query_id", "rank", "product_id", "score"]
    # training = 4 Jan: 540001 {22001} (its 22002 line is cancelled by C540003; POST is not a product), 540002 {22001, 22003}
    q1 = recs[recs.query_id == "q1"]
    assert q1.product_id.tolist() == ["22003"] and q1["rank"].tolist() == ["1"]
    assert recs[recs.query_id == "q2"].product_id.tolist()[0] == "22001"
    assert not (recs.product_id.isin(["POST", "M", "B", "22002"])).any()
    assert not ((recs.query_id == "q1") & (recs.product_id == "22001")).any()


def test_recommend_queries_with_time_column(cases_dir, tmp_path, capsys):
    args = ["recommend", "--orders", str(cases_dir / "import" / "retail_export_messy.csv"),
            "--columns", "basket=InvoiceNo,product=StockCode,time=InvoiceDate,quantity=Quantity,price=UnitPrice,customer=CustomerID,name=Description",
            "--train-until", "2011-01-05", "--k", "3", "--encoding", "cp1252"]
    queries = tmp_path / "q.csv"
    pd.DataFrame({"query_id": ["q1", "q2"], "product_id": ["22001", "22003"], "time": ["2011-01-06 09:30", ""]}).to_csv(queries, index=False)
    out = tmp_path / "recs.csv"
    assert cli.main(args + ["--queries", str(queries), "--out", str(out)]) == 0
    recs = pd.read_csv(out, dtype=str)
    assert recs[recs.query_id == "q1"].product_id.tolist() == ["22003"]  # the query time (or none) never changes the companion set here
    assert recs[recs.query_id == "q2"].product_id.tolist()[0] == "22001"
    pd.DataFrame({"query_id": ["q1", "q2"], "product_id": ["22001", "22003"], "time": ["2011-01-06", "tomorrow-ish"]}).to_csv(queries, index=False)
    assert cli.main(args + ["--queries", str(queries), "--out", str(out)]) != 0
    assert f"{queries}: line 3, field time: cannot parse 'tomorrow-ish' as a date/time" in capsys.readouterr().err


def test_recommend_with_store_column(cases_dir, tmp_path):
    """store=Country maps the export's country as the order's store; queries may carry store_id."""
    from bundling_ml import ingest

    path = cases_dir / "import" / "retail_export_messy.csv"
    columns = "basket=InvoiceNo,product=StockCode,time=InvoiceDate,quantity=Quantity,price=UnitPrice,customer=CustomerID,name=Description"
    res = ingest.read_orders_csv(path, mapping=columns + ",store=Country", encoding="cp1252")
    assert "store_id" in res.lines.columns
    assert res.lines.loc[res.lines.basket_id == "540001", "store_id"].unique().tolist() == ["United Kingdom"]
    assert "store_id" not in ingest.read_orders_csv(path, mapping=columns, encoding="cp1252").lines.columns
    queries = tmp_path / "q.csv"
    pd.DataFrame({"query_id": ["q1", "q2", "q3"], "product_id": ["22001", "22003", "22001"],
                  "store_id": ["United Kingdom", "", "Atlantis"]}).to_csv(queries, index=False)
    out = tmp_path / "recs.csv"
    assert cli.main(["recommend", "--orders", str(path), "--columns", columns + ",store=Country", "--train-until", "2011-01-05",
                     "--queries", str(queries), "--k", "3", "--out", str(out), "--encoding", "cp1252"]) == 0
    recs = pd.read_csv(out, dtype=str)
    # known, empty and unseen stores all rank; the companion sets are those of the training baskets
    assert recs[recs.query_id == "q1"].product_id.tolist() == ["22003"]
    assert recs[recs.query_id == "q3"].product_id.tolist() == ["22003"]
    assert recs[recs.query_id == "q2"].product_id.tolist()[0] == "22001"


def test_recommend_without_quantity_and_price_applies_the_import_rules(cases_dir, tmp_path, capsys):
    """Without quantity/price columns every line is one unit, but dates, rejected rows, cancellations,
    adjustments and non-product codes follow the import's rules (the field cases' values)."""
    messy = cases_dir / "import" / "retail_export_messy.csv"
    queries = tmp_path / "q.csv"
    pd.DataFrame({"query_id": ["q1"], "product_id": ["22001"]}).to_csv(queries, index=False)
    out = tmp_path / "recs.csv"
    assert cli.main(["recommend", "--orders", str(messy), "--columns", "basket=InvoiceNo,product=StockCode,time=InvoiceDate,customer=CustomerID",
                     "--train-until", "2011-01-06", "--queries", str(queries), "--k", "10", "--out", str(out),
                     "--encoding", "cp1252"]) == 0
    # baskets 540001 {22001}, 540002 {22001, 22003}, 540005 {22001}, 540007 {22001, 22003}: the only companion is 22003
    assert pd.read_csv(out, dtype=str).product_id.tolist() == ["22003"]

    lines, _ = cli.load_orders(cases_dir / "import" / "dates_day_first.csv", "basket=order_id,product=sku,time=ordered_at")
    times = lines.groupby("basket_id")["time"].first()
    assert times.astype(str).to_dict() == {"9001": "2021-12-01 08:26:00", "9002": "2021-12-13 09:02:00"}  # day-first, both kept

    capsys.readouterr()
    lines, _ = cli.load_orders(cases_dir / "import" / "bad_rows.csv", "basket=order_id,product=sku,time=ordered_at")
    err = capsys.readouterr().err
    assert "line 5: sku: SKU missing (row skipped)" in err and "line 6: ordered_at:" in err and "line 7: (row): 6 fields where 5 expected" in err
    # no quantity column: 7002 ('two') and 7008 ('x') keep their lines, each one unit
    assert sorted(lines.basket_id.unique()) == ["7001", "7002", "7006", "7007", "7008"]
    assert (lines.quantity == 1.0).all() and lines.price.isna().all()


def test_recommend_reads_exports_with_the_imports_date_delimiter_and_decimal_options(cases_dir, tmp_path, capsys):
    """The options the import's error messages name (--date-format, --delimiter, --decimal) exist on the ML CLI."""
    rows = (cases_dir / "import" / "dates_day_first.csv").read_text().splitlines()
    ambiguous = tmp_path / "ambiguous.csv"
    ambiguous.write_text("\n".join(rows[:3]) + "\n")  # only 01/12/2021: day-first or month-first?
    queries = tmp_path / "q.csv"
    pd.DataFrame({"query_id": ["q1"], "product_id": ["SKU-1"]}).to_csv(queries, index=False)
    out = tmp_path / "recs.csv"
    args = ["recommend", "--columns", "basket=order_id,product=sku,time=ordered_at,quantity=qty,price=unit_price",
            "--train-until", "2022-01-01", "--queries", str(queries), "--k", "3", "--out", str(out)]
    assert cli.main(args + ["--orders", str(ambiguous)]) == 2
    assert "Pass --date-format '%d/%m/%Y %H:%M' (day-first)" in capsys.readouterr().err
    lines, _ = cli.load_orders(ambiguous, "basket=order_id,product=sku,time=ordered_at", date_format="%d/%m/%Y %H:%M")
    assert lines["time"].astype(str).unique().tolist() == ["2021-12-01 08:26:00"]
    # A ';'-delimited export with decimal commas, read with --delimiter ';' --decimal ','
    semi = tmp_path / "semi.csv"
    semi.write_text("\n".join(r.replace(",", ";").replace("4.50", "4,50").replace(".", ",") for r in rows) + "\n")
    assert cli.main(args + ["--orders", str(semi), "--delimiter", ";", "--decimal", ",",
                            "--date-format", "%d/%m/%Y %H:%M"]) == 0
    # too little history to train: ranked by co-purchase count, and the score is that count
    recs = pd.read_csv(out, dtype={"query_id": str, "product_id": str})
    assert recs.product_id.tolist() == ["SKU-2", "SKU-3"] and recs.score.tolist() == [1.0, 1.0]
    lines, _ = cli.load_orders(semi, "basket=order_id,product=sku,time=ordered_at,quantity=qty,price=unit_price",
                               delimiter=";", decimal=",", date_format="%d/%m/%Y %H:%M")
    assert sorted(lines.price.unique().tolist()) == [3.0, 4.5, 7.25]


@pytest.mark.parametrize("command", ["recommend", "backtest"])
def test_a_file_not_in_the_given_encoding_is_refused_as_the_import_refuses_it(cases_dir, tmp_path, command, capsys):
    """No silent cp1252 fallback: without --encoding a cp1252 export (0xa3 = £) is refused with the
    import's message; with --encoding cp1252 it is read."""
    from bundling_ml import ingest

    messy = cases_dir / "import" / "retail_export_messy.csv"
    columns = "basket=InvoiceNo,product=StockCode,time=InvoiceDate,quantity=Quantity,price=UnitPrice,customer=CustomerID"
    with pytest.raises(ingest.IngestError) as imported:
        ingest.read_orders_csv(messy, mapping=columns)  # what manage.py import_orders reads with
    expected = ("retail_export_messy.csv is not text in encoding 'utf-8' (byte 0xa3 cannot be decoded); "
                "pass --encoding, e.g. cp1252 for Windows exports")
    assert str(imported.value) == expected
    (tmp_path / "q.csv").write_text("query_id,product_id\nq1,22001\n")
    extra = (["--train-until", "2011-01-05", "--queries", str(tmp_path / "q.csv"), "--out", str(tmp_path / "r.csv")]
             if command == "recommend" else ["--split-date", "2011-01-05"])
    assert cli.main([command, "--orders", str(messy), "--columns", columns, *extra]) == 2
    assert capsys.readouterr().err.strip() == f"python -m bundling_ml {command}: {expected}"
    lines, _ = cli.load_orders(messy, columns, encoding="cp1252")
    assert "540001" in set(lines.basket_id)


def test_recommend_refuses_repeated_query_ids_a_bad_k_and_a_missing_out_dir_before_training(cases_dir, tmp_path,
                                                                                            capsys):
    """Checked before any training: a query id names one anchor; k >= 1; the output directory exists."""
    messy = cases_dir / "import" / "retail_export_messy.csv"
    columns = "basket=InvoiceNo,product=StockCode,time=InvoiceDate,quantity=Quantity,price=UnitPrice"
    queries = tmp_path / "q.csv"
    queries.write_text("query_id,product_id\nq1,22001\nq2,22003\nq1,00123\n")
    base = ["recommend", "--orders", str(messy), "--columns", columns, "--encoding", "cp1252",
            "--train-until", "2011-01-05", "--queries", str(queries)]
    assert cli.main(base + ["--out", str(tmp_path / "r.csv")]) == 2
    assert capsys.readouterr().err.strip() == (f"python -m bundling_ml recommend: {queries}: query_id must be unique "
                                               "(one anchor per query); repeated: 'q1' (lines 2, 4)")
    missing = tmp_path / "nope.csv"
    assert cli.main(base[:-1] + [str(missing), "--out", str(tmp_path / "r.csv")]) == 2
    assert capsys.readouterr().err.strip() == (f"python -m bundling_ml recommend: {missing}: no such file "
                                               "(--queries needs a CSV file)")
    for extra, message in ((["--k", "0"], "--k must be between 1 and 1000, not 0"),
                           (["--k", "99999999999999999999"], "--k must be between 1 and 1000, not 99999999999999999999"),
                           (["--out", str(tmp_path)], f"--out {tmp_path}: is a directory; give the CSV file's path"),
                           (["--out", str(messy)], f"--out {messy} is the --orders file; it would be overwritten"),
                           (["--out", str(queries)], f"--out {queries} is the --queries file; it would be overwritten"),
                           (["--out", str(tmp_path / "missing" / "r.csv")],
                            f"--out {tmp_path / 'missing' / 'r.csv'}: the directory {str(tmp_path / 'missing')!r} "
                            "does not exist")):
        with pytest.raises(SystemExit) as usage:
            cli.main(base + extra)
        assert usage.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "r.csv").exists()


def test_recommend_reads_query_times_with_the_imports_date_rules_and_refuses_empty_fields(tmp_path, capsys):
    """QA (session 11): '05/03/2021' was read month-first while '13/03/2021' was refused; empty ids and short
    lines were accepted. Now the whole time column is read day-first (decided by '13/03/2021'), as the import
    reads orders, and empty or missing fields are refused with their line."""
    path = tmp_path / "q.csv"
    path.write_text("query_id,product_id,time\nq1,A,05/03/2021 10:00\nq2,B,13/03/2021 18:30\nq3,C,\n")
    q = cli.read_queries(path)
    assert q["time"].tolist() == ["2021-03-05 10:00:00", "2021-03-13 18:30:00", ""]
    path.write_text("query_id,product_id,time\nq1,A,03/05/2021\n")  # reads both ways: the orders' --date-format decides
    assert cli.read_queries(path, "%d/%m/%Y")["time"].tolist() == ["2021-05-03 00:00:00"]
    assert cli.read_queries(path, "%m/%d/%Y")["time"].tolist() == ["2021-03-05 00:00:00"]
    with pytest.raises(SystemExit) as ambiguous:
        cli.read_queries(path)
    assert "cannot tell whether the dates in column 'time' are day-first or month-first" in str(ambiguous.value.code)
    for body, message in (("q1,A,2021-03-05\nq2,,2021-03-06\n", "line 3, field product_id: is empty"),
                          ("q1,A,2021-03-05\n ,B,2021-03-06\n", "line 3, field query_id: is empty"),
                          ("q1,A,2021-03-05\nq2,B\n", "line 3: has fewer fields than the header (query_id, product_id, time)")):
        path.write_text("query_id,product_id,time\n" + body)
        with pytest.raises(SystemExit) as refused:
            cli.read_queries(path)
        assert refused.value.code == f"{path}: {message}"


def test_backtest_tables_warn_when_the_catalogue_is_too_small_to_rank_and_skip_empty_cold_start():
    import io

    rows = [{"system": "model", "hr@10": 1.0, "ndcg@10": 0.9, "queries": 12, "seconds": 0.1}]
    metrics = {"split_date": "2024-03-01", "baskets": 4, "queries": 12, "rows": rows, "train_products": 7,
               "cold_rows": rows, "cold_queries": 0, "shopper_rows": [{**rows[0], "queries": 0}]}
    out = io.StringIO()
    cli.print_tables(metrics, out=out)
    text = out.getvalue()
    assert ("WARNING: only 7 products in training: 10 companions cover the whole catalogue, so HR@10 and NDCG@10 "
            "say nothing about the ranking; use more data.") in text
    assert "Cold-start anchors" not in text and "Known shopper" not in text  # no such queries (no customer ids)
    out = io.StringIO()
    cli.print_tables({**metrics, "train_products": 500, "cold_queries": 3}, out=out)
    assert "WARNING" not in out.getvalue() and "Cold-start anchors (< 5 training baskets; 3 queries)" in out.getvalue()


def test_load_orders_prints_the_orders_whose_lines_span_more_than_an_hour(tmp_path, capsys):
    """The ML CLI reads with the import's rules and prints the import report's time-spread lines to stderr."""
    from tests.ml.test_ingest import SPREAD_CSV

    path = tmp_path / "spread.csv"
    path.write_text(SPREAD_CSV)
    lines, _ = cli.load_orders(path, "basket=order_id,product=sku,time=ordered_at")
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"{path}: Orders whose lines span more than 1:00:00 (each is placed at its earliest line time; is the basket "
        "column one checkout?): 2",
        f"{path}: order 9002: lines from 2024-03-01 10:00:00 to 2024-03-04 18:30:00 (2 lines)",
        f"{path}: order 9004: lines from 2024-03-05 08:00:00 to 2024-03-05 10:15:00 (2 lines)",
    ]
    assert len(lines) == 9


MESSY_COLUMNS = "basket=InvoiceNo,product=StockCode,time=InvoiceDate,quantity=Quantity,price=UnitPrice"


@pytest.mark.parametrize("argv, message", [
    (["backtest", "--preset", "completejourney", "--epochs", "0"], "argument --epochs: must be at least 1, not 0"),
    (["recommend", "--preset", "completejourney", "--train-until", "2017-10-30", "--queries", "q.csv", "--epochs", "-1"],
     "argument --epochs: must be at least 1, not -1"),
    (["backtest", "--preset", "completejourney", "--sample-baskets", "-5"],
     "argument --sample-baskets: must be at least 0 (0 = all test baskets), not -5"),
    (["backtest", "--preset", "completejourney", "--seed", "-1"], "argument --seed: must be between 0 and 4294967295, not -1"),
    (["backtest", "--preset", "completejourney", "--seed", "4294967296"],
     "argument --seed: must be between 0 and 4294967295, not 4294967296"),
    (["backtest", "--preset", "completejourney", "--epochs", "two"], "argument --epochs: must be a whole number, not 'two'"),
    (["score", "--preset", "completejourney", "--artifact-dir", "m", "--max-bundles", "-1"],
     "argument --max-bundles: must be at least 1, not -1"),
    (["score", "--preset", "completejourney", "--artifact-dir", "m", "--max-bundles", "0"],
     "argument --max-bundles: must be at least 1, not 0"),
    (["score", "--preset", "completejourney", "--artifact-dir", "m", "--min-anchor-baskets", "0"],
     "argument --min-anchor-baskets: must be at least 1, not 0"),
])
def test_numeric_options_out_of_range_are_refused_before_any_data_is_read(argv, message, capsys, monkeypatch):
    """QA: backtest --epochs 0 ended in KeyError: 'loss'; recommend --epochs -1, backtest --sample-baskets -5 and
    score --max-bundles -1 (which wrote 1 bundle) ran. argparse now refuses them, naming the option."""
    monkeypatch.setattr(cli, "_load_preset", lambda preset: pytest.fail("data loaded before the options were checked"))
    with pytest.raises(SystemExit) as usage:
        cli.main(argv)
    assert usage.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"python -m bundling_ml {argv[0]}: error: {message}"


def test_input_paths_are_checked_before_anything_is_loaded(cases_dir, tmp_path, capsys, monkeypatch):
    """QA: a missing --products file was noticed only after the orders were loaded, as a raw FileNotFoundError.
    Every input path is checked first, with the option named (as --queries already was)."""
    from bundling_ml import ingest

    monkeypatch.setattr(ingest, "read_orders_csv", lambda *a, **k: pytest.fail("orders read before the paths were checked"))
    monkeypatch.setattr(cli, "_load_preset", lambda preset: pytest.fail("data loaded before the paths were checked"))
    messy = cases_dir / "import" / "retail_export_messy.csv"
    queries = tmp_path / "q.csv"
    queries.write_text("query_id,product_id\nq1,22001\n")
    missing = tmp_path / "nope.csv"
    recommend = ["recommend", "--columns", MESSY_COLUMNS, "--train-until", "2011-01-05", "--queries", str(queries)]
    for argv, message in (
            (recommend + ["--orders", str(messy), "--products", str(missing)],
             f"recommend: {missing}: no such file (--products needs a CSV file)"),
            (recommend + ["--orders", str(missing)], f"recommend: {missing}: no such file (--orders needs a CSV file)"),
            (["backtest", "--columns", MESSY_COLUMNS, "--orders", str(tmp_path)],
             f"backtest: {tmp_path}: is a directory (--orders needs a CSV file)"),
            (["backtest", "--columns", MESSY_COLUMNS, "--orders", str(messy), "--products", str(missing)],
             f"backtest: {missing}: no such file (--products needs a CSV file)"),
            (["backtest", "--orders", str(messy)],
             "backtest: give --preset or --orders FILE --columns basket=COL,product=COL,time=COL"),
            (["score", "--preset", "completejourney", "--artifact-dir", str(tmp_path / "model")],
             f"score: {tmp_path / 'model'}: no such directory (--artifact-dir needs the model directory written by "
             "backtest --out-dir)"),
            (["score", "--preset", "completejourney", "--artifact-dir", str(tmp_path)],
             f"score: {tmp_path}: holds no model.keras (--artifact-dir needs the model directory written by "
             "backtest --out-dir)")):
        assert cli.main(argv) == 2
        assert capsys.readouterr().err.strip() == f"python -m bundling_ml {message}"


@pytest.mark.parametrize("extra, message", [
    (["--orders", "x.csv"], "--orders and --preset are two data sources; give one of them, not both"),
    (["--products", "p.csv"], "--products is for --orders exports; --preset completejourney has its own products and columns"),
    (["--columns", MESSY_COLUMNS], "--columns is for --orders exports; --preset completejourney has its own products and columns"),
    (["--encoding", "cp1252"], "--encoding is for --orders exports; --preset completejourney reads its own tables"),
    (["--delimiter", ";"], "--delimiter is for --orders exports; --preset completejourney reads its own tables"),
    (["--decimal", ","], "--decimal is for --orders exports; --preset completejourney reads its own tables"),
])
@pytest.mark.parametrize("command", ["recommend", "backtest"])
def test_preset_with_orders_products_or_columns_is_refused(command, extra, message, tmp_path, capsys, monkeypatch):
    """QA: --preset completejourney --orders x.csv silently ignored x.csv (manage.py import_orders refuses the pair)."""
    monkeypatch.setattr(cli, "_load_preset", lambda preset: pytest.fail("data loaded before the options were checked"))
    queries = tmp_path / "q.csv"
    queries.write_text("query_id,product_id\nq1,1\n")
    argv = [command, "--preset", "completejourney", *extra]
    if command == "recommend":
        argv += ["--train-until", "2017-10-30", "--queries", str(queries)]
    with pytest.raises(SystemExit) as usage:
        cli.main(argv)
    assert usage.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"python -m bundling_ml: error: {message}"


@pytest.mark.parametrize("command", ["recommend", "backtest"])
def test_an_export_with_no_usable_line_says_so_not_no_lines_before_the_date(cases_dir, tmp_path, command, capsys):
    """QA: with a --date-format no line matches, every line was "(row skipped)" and the command ended with "no
    order lines before 2011-01-06". Now it says that no line was imported, as manage.py import_orders does,
    with the most common rejection."""
    messy = cases_dir / "import" / "retail_export_messy.csv"
    queries = tmp_path / "q.csv"
    queries.write_text("query_id,product_id\nq1,22001\n")
    extra = (["--train-until", "2011-01-06", "--queries", str(queries), "--out", str(tmp_path / "r.csv")]
             if command == "recommend" else ["--split-date", "2011-01-05"])
    base = [command, "--orders", str(messy), "--columns", MESSY_COLUMNS, "--encoding", "cp1252", *extra]
    assert cli.main(base + ["--date-format", "%Y"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"{messy}: line 2: InvoiceDate: date '2011-01-04 09:10:00' does not match '%Y' (row skipped)"
    assert err[-1] == (f"python -m bundling_ml {command}: {messy}: no order line was imported: 13 of 13 lines were "
                       "rejected; most often InvoiceDate (13 lines), e.g. line 2: date '2011-01-04 09:10:00' does not "
                       "match '%Y'")
    assert not any("no order lines before" in line for line in err)
    assert not (tmp_path / "r.csv").exists()


def test_recommend_says_no_lines_before_train_until_only_when_lines_were_read(cases_dir, tmp_path, capsys):
    messy = cases_dir / "import" / "retail_export_messy.csv"
    queries = tmp_path / "q.csv"
    queries.write_text("query_id,product_id\nq1,22001\n")
    assert cli.main(["recommend", "--orders", str(messy), "--columns", MESSY_COLUMNS, "--encoding", "cp1252",
                     "--train-until", "2010-01-06", "--queries", str(queries), "--out", str(tmp_path / "r.csv")]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "python -m bundling_ml recommend: no order lines before 2010-01-06 (--train-until): the 8 order lines read "
        "are from 2011-01-04 to 2011-01-05")


def test_no_lines_message_names_the_most_common_rejection_and_the_skipped_reasons():
    from bundling_ml.ingest import ImportReport, Rejection

    report = ImportReport(read=5, rejections=[Rejection(2, "sku", "SKU missing"),
                                              Rejection(3, "order_id", "order 7 has a rejected line (line 2)"),
                                              Rejection(4, "order_id", "order 7 has a rejected line (line 2)"),
                                              Rejection(5, "sku", "SKU 'x y' has spaces")])
    assert cli.no_lines_message(report) == ("no order line was imported: 4 of 5 lines were rejected; most often sku "
                                            "(2 lines), e.g. line 2: SKU missing")
    report = ImportReport(read=3, skipped_reasons={"cancellation": 2, "non_product": 1})
    assert cli.no_lines_message(report) == ("no order line was imported: 3 of 3 lines were skipped "
                                            "(cancellation 2, non_product 1)")
