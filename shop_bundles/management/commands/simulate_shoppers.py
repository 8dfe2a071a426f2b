"""``manage.py simulate_shoppers --from 2017-10-30 --to 2017-12-31 [--limit N] [--seed 0]``.

Replays held-out Complete Journey baskets as shopper sessions through the
real storefront (see ``shop_bundles.services.simulation``); the orders are
marked ``source="simulated"`` and shown as SIMULATED on the experiment dashboard.
Each source basket checks out with its own deterministic checkout token, so
re-running, retrying or running two replays at once places it once
(``already_replayed`` / ``already_placed`` in the report).

The replay is *out of sample* only when the active model (and so the offers'
scores and attach rates) learnt from order lines before ``--from``: set
``SHOP_BUNDLES_HISTORY_UNTIL`` to the ``--from`` day before training, scoring
and ranking. Otherwise the command says IN-SAMPLE in its report.
"""
import argparse
import math
from datetime import date

from django.core.management.base import BaseCommand, CommandError

from bundling_ml.cli import int_option, iso_date
from shop_bundles.services.simulation import shoppers_simulate, simulation_reset




def _minutes(value: str) -> float:
    """argparse type for a positive, finite number of minutes."""
    try:
        minutes = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of minutes, not {value!r}") from None
    if not (math.isfinite(minutes) and minutes > 0):
        raise argparse.ArgumentTypeError(f"must be a number of minutes above 0, not {value!r}")
    return minutes


class Command(BaseCommand):
    help = "Replay held-out baskets (grouped by household) through the storefront, with the holdout experiment."

    def add_arguments(self, parser):
        parser.add_argument("--from", dest="date_from", type=iso_date, default=date(2017, 10, 30), help="first day (YYYY-MM-DD)")
        parser.add_argument("--to", dest="date_to", type=iso_date, default=date(2017, 12, 31), help="last day, inclusive (YYYY-MM-DD)")
        parser.add_argument("--limit", type=int_option(1), default=None,
                            help="at most this many shoppers (households), at least 1")
        parser.add_argument("--seed", type=int_option(0), default=0, help="seed of the take-model draws (0 or more)")
        parser.add_argument("--workers", type=int_option(1), default=1,
                            help="processes replaying households in parallel (default 1)")
        parser.add_argument("--stop-after", type=_minutes, default=None, metavar="MINUTES",
                            help="start no new household after this many minutes; a re-run continues")
        parser.add_argument("--reset", action="store_true",
                            help="first delete the simulated orders and offer events of earlier replays "
                                 "(without it, a re-run continues where the last one stopped)")
        parser.add_argument("--no-progress", action="store_true", help="hide the tqdm progress bar")

    def handle(self, *args, **options):
        start, end = options["date_from"], options["date_to"]
        if isinstance(start, str) or isinstance(end, str):  # call_command(date_from="2017-10-30") skips argparse
            start, end = iso_date(str(start)), iso_date(str(end))
        if end < start:
            raise CommandError("--to is before --from")
        if options["reset"]:
            deleted = simulation_reset()
            self.stdout.write(f"reset: deleted {deleted['orders']} simulated orders and "
                              f"{deleted['offer_events']} simulated offer events")
        report = shoppers_simulate(date_from=start, date_to=end, limit=options["limit"], seed=options["seed"],
                                   progress=not options["no_progress"], workers=options["workers"],
                                   stop_after=None if options["stop_after"] is None else options["stop_after"] * 60)
        self._sample_note(start)
        for key, value in report.as_dict().items():
            if key != "failure_reasons":
                self.stdout.write(f"{key}: {value}")
        if report.failure_reasons:
            self.stdout.write("checkouts the storefront refused, by its message:")
            for reason, count in report.failure_reasons.items():
                self.stdout.write(f"  {count:>6}  {reason}")
        if report.already_replayed:
            self.stdout.write(f"{report.already_replayed} baskets placed by an earlier run were kept, "
                              "not replayed again (--reset starts over)")
        if report.already_placed:
            self.stdout.write(f"{report.already_placed} baskets were placed by another replay running at the same "
                              "time (same checkout token): placed once, not counted here")
        if report.orders_marked_late:
            self.stdout.write(f"{report.orders_marked_late} orders placed by an interrupted run were marked simulated")
        if report.households_not_started:
            self.stdout.write(self.style.WARNING(
                f"stopped by --stop-after: {report.households_not_started} households not replayed yet; "
                "run the command again to continue"))
        if report.skipped_baskets:
            self.stdout.write(f"{report.skipped_baskets} baskets held only products that are not for sale now (inactive or priced 0.00) "
                              "(not replayed)")
        self.stdout.write(self.style.SUCCESS(
            f"SIMULATED: {report.orders} orders from {report.baskets} baskets of {report.shoppers} shoppers "
            f"in {report.seconds:.0f} s; see the admin's experiment dashboard."))

    def _sample_note(self, start: date) -> None:
        """Say whether the active model saw the replayed weeks (IN-SAMPLE) or not (out of sample)."""
        from django.utils import timezone

        from shop_bundles.models import ModelVersion

        version = ModelVersion.objects.filter(is_active=True).first()
        if version is None or version.data_end is None:
            return
        last = timezone.localtime(version.data_end).date()
        if last >= start:
            self.stdout.write(self.style.WARNING(
                f"IN-SAMPLE: the active model {version.label} (and the offers' scores and attach rates) learnt from "
                f"order lines up to {last}, inside the replayed window; for an out-of-sample replay set "
                f"SHOP_BUNDLES_HISTORY_UNTIL={start} and retrain, rescore and re-rank first"))
        else:
            self.stdout.write(f"out of sample: the active model {version.label} learnt from order lines up to {last}, "
                              f"before {start}")
