"""URL configuration: admin, shopper sign-in, the storefront and the plugin's endpoints.

The sign-in pages are the host shop's (Django's ``LoginView`` / ``LogoutView``
with the storefront's look); the plugin only asks the shop who is signed in
(``SHOP_BUNDLES_CUSTOMER_RESOLVER``).
"""
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/login/", auth_views.LoginView.as_view(template_name="shop_bundles/storefront/login.html"),
         name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("", include("shop_bundles.urls")),
]
