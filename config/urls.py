"""URL configuration: admin, the storefront and the plugin's endpoints."""
from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("shop_bundles.urls")),
]
