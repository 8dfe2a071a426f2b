"""Storefront URLs (namespace ``shop_bundles``, included at the host project's root)."""
from django.urls import path

from . import views

urlpatterns = [
    path("", views.product_list, name="product_list"),
    path("products/<str:sku>/", views.product_detail, name="product_detail"),
    path("products/<str:sku>/add/", views.cart_add, name="cart_add"),
    path("bundles/<int:campaign_id>/add/", views.bundle_add, name="bundle_add"),
    path("cart/", views.cart_view, name="cart"),
    path("cart/update/", views.cart_update, name="cart_update"),
    path("cart/remove/<int:product_id>/", views.cart_remove, name="cart_remove"),
    path("checkout/", views.checkout, name="checkout"),
    path("store/", views.store_choose, name="store_choose"),
    path("orders/<int:pk>/", views.order_detail, name="order_detail"),
]
