"""``manage.py score_bundles``: write pending suggestions from a model version (default: the active one)."""
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    """Score bundles and write the new ones as pending suggestions for staff review."""

    help = "Score bundles with a model version and write new pending BundleSuggestions."

    def add_arguments(self, parser):
        parser.add_argument("--model-version", type=int, default=None, help="ModelVersion id (default: active)")

    def handle(self, *args, **options):
        from ...models import ModelVersion
        from ...services.scoring import suggestions_score
        from ..progress import progress_bar

        version_id = options["model_version"]
        if version_id is not None and not ModelVersion.objects.filter(pk=version_id).exists():
            raise CommandError(f"There is no model version {version_id}.")
        with progress_bar("scoring", verbosity=options["verbosity"]) as progress:
            result = suggestions_score(model_version_id=version_id, progress=progress)
        if result["model_version_id"] is None:
            raise CommandError(result["message"])
        self.stdout.write(self.style.SUCCESS(
            f"{result['created']} new pending suggestions from model version {result['model_version_id']} "
            f"({result['scored']} scored, {result['skipped']} skipped {result['skipped_reasons']}, "
            f"{result['expired']} superseded suggestions expired) in {result['seconds']:.1f} s"))
