"""Shop test fixtures: every shopper is in the treatment group unless a test sets the holdout share."""
import pytest


@pytest.fixture(autouse=True)
def _everyone_in_treatment(settings):
    """SHOP_BUNDLES_HOLDOUT_SHARE = 0 so offers always show; experiment tests override it."""
    settings.SHOP_BUNDLES_HOLDOUT_SHARE = 0.0
