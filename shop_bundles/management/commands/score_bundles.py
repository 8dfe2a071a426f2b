"""``manage.py score_bundles``: write pending suggestions from a model version (default: the active one)."""
from ..model_command import ModelVersionCommand


class Command(ModelVersionCommand):
    """Score bundles and write the new ones as pending suggestions for staff review."""

    help = "Score bundles with a model version and write new pending BundleSuggestions."
    progress_label = "scoring"

    def run(self, *, model_version_id, progress) -> dict:
        from ...services.scoring import suggestions_score

        return suggestions_score(model_version_id=model_version_id, progress=progress)

    def report(self, result: dict) -> str:
        return (f"{result['created']} new pending suggestions ({result.get('created_store_specific', 0)} "
                f"store-specific) from model version {result['model_version_id']} "
                f"({result['scored']} scored, {result['skipped']} skipped {result['skipped_reasons']}, "
                f"{result['expired']} superseded suggestions expired) in {result['seconds']:.1f} s")
