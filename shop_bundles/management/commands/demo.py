"""``manage.py demo``: the whole product on the real Complete Journey data, step by step, timed.

Steps: import the full data (``import_orders --preset completejourney``),
train and backtest a model (``train_bundles --no-score``), write pending
suggestions (``score_bundles``), approve the top suggestions as a demo staff
user (``demo_approve``, a product in at most 3 of them) so shoppers see offers, order each product page's
offers per store (``rank_store_offers``), create the admin, review-staff
and demo-shopper logins (the shopper is the customer with the most orders,
linked by e-mail), and print them with the timing of each step. Timings are also written to
``var/demo_timings.json``.
"""
import json
import secrets
import time
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand

from bundling_ml.cli import int_option


class Command(BaseCommand):
    help = "Import the Complete Journey data, train, score, approve the top suggestions and print the admin login."

    def add_arguments(self, parser):
        parser.add_argument("--approve", type=int_option(1), default=20, help="how many top suggestions to approve (default 20)")
        parser.add_argument("--households", type=int_option(1), default=None, help="import only this many households (quick demo)")
        parser.add_argument("--skip-import", action="store_true", help="reuse the data already in the database")
        parser.add_argument("--url", default="http://127.0.0.1:8000",
                            help="where the site will be served, for the links printed at the end (default http://127.0.0.1:8000; "
                                 "make demo passes its HOST and PORT)")

    def handle(self, *args, **opts):
        timings: dict[str, float] = {}

        def step(name, *cmd_args, **cmd_opts):
            self.stdout.write(self.style.MIGRATE_HEADING(f"\n== {name}"))
            started = time.perf_counter()
            call_command(*cmd_args, stdout=self.stdout, stderr=self.stderr, **cmd_opts)
            timings[name] = round(time.perf_counter() - started, 1)
            self.stdout.write(f"   {name}: {timings[name]:.1f} s")

        if not opts["skip_import"]:
            import_opts = {"preset": "completejourney"}
            if opts["households"]:
                import_opts["households"] = opts["households"]
            step("import", "import_orders", **import_opts)
        step("train", "train_bundles", no_score=True)
        step("score", "score_bundles")
        # The bundle-team staff user (review, campaigns, retrain; no users, products or orders) that approves (demo_approve gives it its permissions), with a kept password.
        staff_password = self._demo_password("demo-staff")
        staff, _ = get_user_model().objects.get_or_create(username="demo-staff", defaults={"is_staff": True})
        staff.set_password(staff_password)
        staff.save()
        step("approve", "demo_approve", top=opts["approve"], offers_per_product=3, username="demo-staff")
        step("rank per store", "rank_store_offers")

        password = self._demo_password("admin")
        user_model = get_user_model()
        admin, _ = user_model.objects.get_or_create(username="admin", defaults={"email": "admin@example.com"})
        admin.is_staff = admin.is_superuser = True
        admin.set_password(password)
        admin.save()
        shopper = self._demo_shopper()

        var_dir = Path(settings.VAR_DIR)
        (var_dir / "demo_timings.json").write_text(json.dumps(timings, indent=2))
        self.stdout.write(self.style.SUCCESS("\nDemo ready."))
        for name, seconds in timings.items():
            self.stdout.write(f"  {name:<15} {seconds:>8.1f} s")
        url = opts["url"].rstrip("/")
        self.stdout.write(f"  Storefront: {url}/")
        self.stdout.write(f"  Admin:      {url}/admin/  user: admin  password: {password}")
        self.stdout.write(f"  Staff:      {url}/admin/  user: demo-staff  password: {staff_password}  "
                          "(bundle team: review, campaigns, retrain)")
        if shopper:
            self.stdout.write(f"  Shopper:    {url}/accounts/login/  user: demo-shopper  password: "
                              f"{shopper[0]}  (customer {shopper[1]}, usual store {shopper[2] or 'none'})")

    def _demo_shopper(self):
        """A signed-in shopper for the demo: user ``demo-shopper`` linked by e-mail to the customer with the
        most orders (``customer_by_user_email``). Returns (password, customer id, usual store) or None."""
        from django.db.models import Count

        from ...models import Customer
        from ...selectors.customers import usual_store

        customer = (Customer.objects.annotate(n=Count("orders")).filter(n__gt=0).order_by("-n", "external_id")
                    .first())
        if customer is None:
            return None
        email = "demo-shopper@example.com"
        Customer.objects.filter(email__iexact=email).exclude(pk=customer.pk).update(email="")
        customer.email = email
        customer.save(update_fields=["email"])
        user, _ = get_user_model().objects.get_or_create(username="demo-shopper", defaults={"email": email})
        password = self._demo_password("demo-shopper")
        user.email, user.is_staff = email, False
        user.set_password(password)
        user.save()
        return password, customer.external_id, usual_store(customer.external_id)

    @staticmethod
    def _demo_password(username: str) -> str:
        """Return the demo password of ``username``, generated once and kept in
        ``var/demo_<username>_password.txt`` (the admin's in ``var/demo_admin_password.txt``)."""
        path = Path(settings.VAR_DIR) / f"demo_{username.replace('-', '_')}_password.txt"
        if path.exists():
            return path.read_text().strip()
        password = secrets.token_urlsafe(12)
        path.write_text(password)
        path.chmod(0o600)
        return password
