"""``manage.py rank_store_offers``: order each product page's offers per store with a model version."""
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    """Re-score the open campaigns per product page and store (the hourly ``rank_offers_by_store`` task)."""

    help = "Score every open campaign on each of its products' pages, chain-wide and per store (OfferStoreScore)."

    def add_arguments(self, parser):
        parser.add_argument("--model-version", type=int, default=None, help="ModelVersion id (default: active)")

    def handle(self, *args, **options):
        from ...models import ModelVersion
        from ...services.store_offers import store_offer_scores_refresh
        from ..progress import progress_bar

        version_id = options["model_version"]
        if version_id is not None and not ModelVersion.objects.filter(pk=version_id).exists():
            raise CommandError(f"There is no model version {version_id}.")
        with progress_bar("ranking offers per store", verbosity=options["verbosity"]) as progress:
            result = store_offer_scores_refresh(model_version_id=version_id, progress=progress)
        if result["model_version_id"] is None:
            raise CommandError(result["message"])
        self.stdout.write(self.style.SUCCESS(f"{result['message']} in {result['seconds']:.1f} s"))
