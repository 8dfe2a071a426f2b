"""``manage.py train_bundles``: train and backtest a model version now, with a progress bar.

Runs the training service in this process (the same code the ``retrain_model``
task runs), prints the backtest table and timings, then scores suggestions
with the new version (in this process in demo mode, queued on the ``ml`` queue
when a broker is configured) unless ``--no-score`` is given.
"""
import logging
import time

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from bundling_ml.cli import int_option, iso_date






class Command(BaseCommand):
    """Train a model version from all orders in the database."""

    help = "Train and backtest a bundle model on the order history; activate it if it is good enough."

    def add_arguments(self, parser):
        parser.add_argument("--split-date", type=iso_date, default=None,
                            help="temporal split date YYYY-MM-DD (Complete Journey protocol: 2017-10-30); "
                                 "default: the last ~20 %% of weeks are the test period")
        parser.add_argument("--no-score", action="store_true", help="do not score suggestions afterwards")
        parser.add_argument("--max-queries", type=int_option(1), default=None, help="cap on backtest queries")
        parser.add_argument("--slot", default=None, help="slot key; a second run for the same slot exits early")

    def handle(self, *args, **options):
        from ...services.training import training_run_execute
        from ..progress import progress_bar

        started = time.monotonic()
        # The progress bar replaces bundling_ml's per-stage INFO log lines (shown again with -v 2).
        ml_logger = logging.getLogger("bundling_ml")
        saved_level = ml_logger.level
        if options["verbosity"] < 2:
            ml_logger.setLevel(logging.WARNING)
        try:
            with progress_bar("training", verbosity=options["verbosity"], remaining=True) as progress:
                result = training_run_execute(trigger="manual", slot=options["slot"],
                                              split_date=options["split_date"], queue_scoring=False,
                                              max_queries=options["max_queries"], on_progress=progress)
        except ValueError as exc:  # the data cannot be trained on; the run is marked failed with this reason
            raise CommandError(f"Training failed: {exc}") from exc
        finally:
            ml_logger.setLevel(saved_level)
        if result["status"] == "duplicate":
            self.stdout.write(self.style.WARNING(f"Not trained: {result['message']}"))
            return
        self._print_table(result.get("metrics") or {})
        self.stdout.write(f"training run {result['run_id']}, model version {result['model_version_id']}: "
                          f"{result['message']}")
        self.stdout.write(f"training took {result.get('seconds', 0):.1f} s")
        if options["no_score"] or not result.get("activated"):
            if not result.get("activated"):
                self.stdout.write("The new version was not activated, so nothing is scored.")
            return
        self._score(result["model_version_id"], options)
        self.stdout.write(self.style.SUCCESS(f"done in {time.monotonic() - started:.1f} s"))

    def _print_table(self, metrics: dict) -> None:
        """Print the backtest table (system, HR@10, NDCG@10, queries, seconds)."""
        rows = metrics.get("rows") or []
        self.stdout.write(f"\nBacktest (split date {metrics.get('split_date')}, {metrics.get('queries')} queries)")
        self.stdout.write(f"{'system':<22}{'HR@10':>8}{'NDCG@10':>10}{'queries':>10}{'seconds':>10}")
        for row in rows:
            self.stdout.write(f"{row.get('system', ''):<22}{row.get('hr@10', 0):>8.4f}{row.get('ndcg@10', 0):>10.4f}"
                              f"{row.get('queries', 0):>10,}{row.get('seconds', 0):>10.1f}")
        self.stdout.write("")

    def _score(self, version_id: int, options) -> None:
        """Score with the new version now (eager/demo: the ``score_bundles`` command) or queue it (real broker)."""
        from ...tasks import score_suggestions

        if score_suggestions.app.conf.task_always_eager:
            call_command("score_bundles", model_version=version_id, stdout=self.stdout, stderr=self.stderr,
                         verbosity=options["verbosity"])
        else:
            score_suggestions.delay(version_id)
            self.stdout.write(f"scoring of model version {version_id} queued on the ml queue")
