"""URLs of the plugin: the storefront lives under the host project's root."""
from django.urls import include, path

app_name = "shop_bundles"

urlpatterns = [
    path("", include("shop_bundles.storefront.urls")),
]
