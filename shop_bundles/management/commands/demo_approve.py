"""``manage.py demo_approve``: approve the top N pending suggestions as a demo staff member.

Creates the staff user (in the ``Bundle team`` group, ``shop_bundles.permissions``, and with a printed
random password) when missing, then approves the best-scored pending
whole-shop suggestions (store-specific ones are left for staff) whose products are all active and in stock, each with its
suggested discount, through the same service the admin uses. ``--by margin``
ranks them by expected incremental margin per offer shown at the offer's
discount (``economics["offer"]["incremental_margin"]``, see
``services.economics``) instead of the model score. Either way, a suggestion
whose expected incremental margin at the offer's discount is negative is
skipped (and counted in the summary line): the demo never approves an offer
expected to lose money. To spread the demo's
offers over the catalogue, a suggestion is passed over when one of its
products is already in ``--offers-per-product`` bundles approved in this run
(default 1: no product in two of them; the ``demo`` command uses 3 so that
popular products' pages show several offers, in the order of the shopper's store).
A suggestion that would look like one already approved in this run (the same
product names, as two SKUs of one name; ``storefront.offers.offer_look``) is
passed over too: its page would show only one of them.
"""
import secrets
from collections import Counter

from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.management.base import BaseCommand
from django.db.models import Exists, FloatField, OuterRef, Q
from django.db.models.fields.json import KT
from django.db.models.functions import Cast

from bundling_ml.cli import int_option
from shop_bundles.permissions import ensure_bundle_team_group




class Command(BaseCommand):
    """Approve the top pending suggestions (demo)."""

    help = "Approve the top N pending bundle suggestions as a demo staff user (created if missing)."

    def add_arguments(self, parser):
        parser.add_argument("--top", type=int_option(1), default=20, help="how many suggestions to approve (default 20)")
        parser.add_argument("--by", choices=["score", "margin"], default="score",
                            help="rank by model score (default) or expected incremental margin per offer shown")
        parser.add_argument("--username", default="demo-staff", help="staff user (default demo-staff)")
        parser.add_argument("--offers-per-product", type=int_option(1), default=1,
                            help="most bundles approved in this run that one product may be in (default 1)")

    def handle(self, *args, **options):
        from ...models import BundleSuggestion, BundleSuggestionItem
        from ...services.campaigns import suggestion_approve
        from ...storefront.offers import offer_look

        user = self._staff_user(options["username"])
        unavailable = BundleSuggestionItem.objects.filter(suggestion=OuterRef("pk")).filter(
            Q(product__active=False) | Q(product__stock__lte=0) | Q(product__price__lte=0))
        # Whole-shop suggestions only: a store-specific one is a staff decision per store (review queue).
        queue = (BundleSuggestion.objects.filter(status=BundleSuggestion.PENDING, store_ids=[])
                 .filter(~Exists(unavailable)).prefetch_related("items__product"))
        if options["by"] == "margin":
            margin = Cast(KT("economics__offer__incremental_margin"), FloatField())
            queue = queue.order_by(margin.desc(nulls_last=True), "-score", "pk")
        else:
            queue = queue.order_by("-score", "pk")
        approved = refused = skipped = look_alikes = 0
        used: Counter = Counter()  # spread the demo's offers: bundles approved in this run per product
        looks: set = set()  # what the approved bundles look like to a shopper
        for suggestion in queue.iterator(chunk_size=100):
            if approved >= options["top"]:
                break
            product_ids = {i.product_id for i in suggestion.items.all()}
            if any(used[pid] >= options["offers_per_product"] for pid in product_ids):
                continue
            look = offer_look((i.product, 1) for i in suggestion.items.all())
            if look in looks:
                look_alikes += 1
                continue
            names = " + ".join((i.product.name or i.product.sku) for i in suggestion.items.all())
            margin = ((suggestion.economics or {}).get("offer") or {}).get("incremental_margin")
            if margin is not None and margin < 0:
                skipped += 1
                continue
            try:
                campaign = suggestion_approve(suggestion=suggestion, user=user)
            except (ValidationError, PermissionDenied) as exc:
                refused += 1
                self.stdout.write(self.style.WARNING(f"  refused {names}: {' '.join(getattr(exc, 'messages', [str(exc)]))}"))
                continue
            approved += 1
            used.update(product_ids)
            looks.add(look)
            self.stdout.write(f"{approved:>3}. {names}  score {suggestion.score:.3f}  lift {suggestion.lift:.2f}  "
                              f"{campaign.discount_value} % off until {campaign.ends_at:%Y-%m-%d}")
        self.stdout.write(self.style.SUCCESS(f"approved {approved} suggestions as {user.get_username()}"
                                             + (f" ({refused} refused)" if refused else "")))
        if look_alikes:
            self.stdout.write(f"passed over {look_alikes} suggestions that look like one approved above (same product names)")
        if skipped:
            self.stdout.write(f"skipped {skipped} suggestions whose expected incremental margin per offer shown "
                              "is negative at their discount")

    def _staff_user(self, username: str):
        """Get or create the staff user in the Bundle team group; print a new user's password."""
        User = get_user_model()
        user = User.objects.filter(**{User.USERNAME_FIELD: username}).first()
        if user is None:
            password = secrets.token_urlsafe(12)
            user = User.objects.create_user(**{User.USERNAME_FIELD: username}, password=password, is_staff=True)
            self.stdout.write(self.style.SUCCESS(f"created staff user {username!r} with password {password}"))
        user.groups.add(ensure_bundle_team_group())
        if not user.is_staff:
            user.is_staff = True
            user.save(update_fields=["is_staff"])
        return User.objects.get(pk=user.pk)  # fresh instance: no stale permission cache
