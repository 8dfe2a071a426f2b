"""Data model of the plugin, one module per concept."""
from .catalog import Customer, Product, Promotion
from .orders import Order, OrderLine
from .campaigns import (
    BundleCampaign,
    BundleCampaignItem,
    BundleCampaignStore,
    BundleSuggestion,
    BundleSuggestionItem,
    OfferStoreScore,
    StaffAction,
)
from .ml import ModelVersion, TrainingRun
from .events import ExperimentDashboard, OfferEvent, OrderEvent
from .imports import CancelledOrderLine, ImportedCancellation, ImportRun
from .outbox import OutboxEvent

__all__ = [
    "BundleCampaign",
    "BundleCampaignItem",
    "BundleCampaignStore",
    "BundleSuggestion",
    "BundleSuggestionItem",
    "CancelledOrderLine",
    "Customer",
    "ExperimentDashboard",
    "ImportRun",
    "ImportedCancellation",
    "ModelVersion",
    "OfferEvent",
    "OfferStoreScore",
    "Order",
    "OrderEvent",
    "OrderLine",
    "OutboxEvent",
    "Product",
    "Promotion",
    "StaffAction",
    "TrainingRun",
]
