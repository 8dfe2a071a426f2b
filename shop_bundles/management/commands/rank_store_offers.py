"""``manage.py rank_store_offers``: each product page's offers, per store, from a model version (default: active)."""
from ..model_command import ModelVersionCommand


class Command(ModelVersionCommand):
    """Re-score the open campaigns per product page and store (the hourly ``rank_offers_by_store`` task)."""

    help = ("Measure every open campaign on each of its products' pages, chain-wide and per store: attach rate "
            "and model score (OfferStoreScore, the product page's order).")
    progress_label = "ranking offers per store"

    def run(self, *, model_version_id, progress) -> dict:
        from ...services.store_offers import store_offer_scores_refresh

        return store_offer_scores_refresh(model_version_id=model_version_id, progress=progress)

    def report(self, result: dict) -> str:
        return f"{result['message']} in {result['seconds']:.1f} s"
