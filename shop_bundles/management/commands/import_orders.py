"""``manage.py import_orders``: import order history from a CSV export or the Complete Journey data.

Examples::

    python manage.py import_orders --preset completejourney
    python manage.py import_orders --preset completejourney --households 100 --weeks 8
    python manage.py import_orders --csv export.csv \\
        --map basket=InvoiceNo,product=StockCode,time=InvoiceDate,quantity=Quantity,price=UnitPrice,customer=CustomerID,name=Description \\
        --encoding cp1252 --date-format '%d/%m/%Y %H:%M'

The command ends with the report: lines read, imported, skipped (by reason),
duplicates, rejected, then each rejected line with its file line number,
field and reason. A file refused as a whole (empty, not text, too big, wrong
header, undecidable date order) raises CommandError and writes nothing.
"""
import time

from django.core.management.base import BaseCommand, CommandError

from bundling_ml.cli import int_option
from bundling_ml.ingest import IngestError, parse_mapping
from shop_bundles.services.imports import DEFAULT_STOCK, orders_import_completejourney, orders_import_csv


class Command(BaseCommand):
    help = "Import order history (CSV export or --preset completejourney) idempotently, with a report."

    def add_arguments(self, parser):
        src = parser.add_mutually_exclusive_group(required=True)
        src.add_argument("--csv", metavar="FILE", help="retailer CSV export to import")
        src.add_argument("--preset", choices=["completejourney"], help="built-in data set")
        parser.add_argument("--map", dest="mapping", metavar="K=COL,...",
                            help="column mapping: basket=,product=,time=,quantity=,price= (required), "
                                 "customer=, name= / description=, store= (optional)")
        parser.add_argument("--encoding", default="utf-8", help="file encoding, e.g. cp1252 (default utf-8)")
        parser.add_argument("--delimiter", default=",", help="field delimiter, e.g. ';' or 'tab' (default ',')")
        parser.add_argument("--decimal", default=".", choices=[".", ","], help="decimal separator (default '.')")
        parser.add_argument("--date-format", default=None,
                            help="strptime format of the date column, e.g. '%%d/%%m/%%Y %%H:%%M' (default: inferred)")
        parser.add_argument("--weeks", type=int_option(1), default=None, help="completejourney: import weeks 1..N only")
        parser.add_argument("--households", type=int_option(1), default=None,
                            help="completejourney: import a seeded sample of N households")
        parser.add_argument("--no-promotions", action="store_true", help="completejourney: skip promotions")
        parser.add_argument("--stock", type=int_option(0), default=DEFAULT_STOCK,
                            help=f"stock of created products (default {DEFAULT_STOCK})")
        parser.add_argument("--dry-run", action="store_true", help="CSV: read and report only; write nothing")
        parser.add_argument("--no-progress", action="store_true", help="hide progress bars")

    def handle(self, *args, **opts):
        started = time.monotonic()
        progress = not opts["no_progress"] and opts["verbosity"] > 0
        try:
            if opts["preset"]:
                if opts["mapping"]:
                    raise CommandError("--map is for --csv imports; the preset knows its columns")
                for name in ("weeks", "households"):
                    if opts[name] is not None and opts[name] <= 0:
                        raise CommandError(f"--{name} must be a positive number")
                if opts["verbosity"] > 0:
                    self.stderr.write("Loading and preparing the Complete Journey tables (transactions, products"
                                      + ("" if opts["no_promotions"] else ", 20.9M promotion rows") + ")...")
                report = orders_import_completejourney(
                    weeks=opts["weeks"], households=opts["households"], promotions=not opts["no_promotions"],
                    default_stock=opts["stock"], progress=progress)
            else:
                if not opts["mapping"]:
                    raise CommandError("--csv needs --map basket=COL,product=COL,time=COL,quantity=COL,price=COL"
                                       "[,customer=COL][,name=COL][,store=COL]")
                if opts["weeks"] or opts["households"]:
                    raise CommandError("--weeks and --households apply to --preset completejourney only")
                report = orders_import_csv(
                    path=opts["csv"], mapping=parse_mapping(opts["mapping"]), encoding=opts["encoding"],
                    delimiter=opts["delimiter"], decimal=opts["decimal"], date_format=opts["date_format"],
                    default_stock=opts["stock"], dry_run=opts["dry_run"], progress=progress)
        except IngestError as exc:
            raise CommandError(f"import refused, nothing was written: {exc}") from exc
        for line in report.summary_lines():
            self.stdout.write(line)
        if report.imported == 0 and report.rejected > 0:
            # A script or scheduler must see the failure: exit status 1, not "finished".
            raise CommandError(f"no order line was imported: {report.rejected:,} of {report.read:,} lines were "
                               "rejected (reasons above)")
        self.stdout.write(self.style.SUCCESS(
            f"{'Dry run' if opts['dry_run'] else 'Import'} finished in {time.monotonic() - started:.1f} s"))
