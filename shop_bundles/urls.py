"""URLs of the plugin: the token-authenticated events endpoint and the storefront (host project's root)."""
from django.urls import include, path

from . import api

app_name = "shop_bundles"

urlpatterns = [
    path("bundles/events/", api.events_receive, name="events_receive"),
    path("", include("shop_bundles.storefront.urls")),
]
