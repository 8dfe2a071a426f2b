"""Base of the commands that run a service with a model version (default: the active one) under a progress bar."""
from django.core.management.base import BaseCommand, CommandError

from .progress import progress_bar


class ModelVersionCommand(BaseCommand):
    """``--model-version ID`` (default: the active version), a tqdm bar, and a one-line success report.

    Subclasses set ``progress_label`` and implement ``run`` (call the service) and
    ``report`` (the success line). A missing version, or no active one, is a ``CommandError``.
    """

    progress_label = "working"

    def add_arguments(self, parser):
        parser.add_argument("--model-version", type=int, default=None, help="ModelVersion id (default: active)")

    def run(self, *, model_version_id: int | None, progress) -> dict:
        """Call the service; its result has ``model_version_id`` (None: no active version) and ``message``."""
        raise NotImplementedError

    def report(self, result: dict) -> str:
        """The success line for ``result``."""
        raise NotImplementedError

    def handle(self, *args, **options):
        from ..models import ModelVersion

        version_id = options["model_version"]
        if version_id is not None and not ModelVersion.objects.filter(pk=version_id).exists():
            raise CommandError(f"There is no model version {version_id}.")
        with progress_bar(self.progress_label, verbosity=options["verbosity"]) as progress:
            result = self.run(model_version_id=version_id, progress=progress)
        if result["model_version_id"] is None:
            raise CommandError(result["message"])
        self.stdout.write(self.style.SUCCESS(self.report(result)))
