"""``manage.py demo``: the whole product on the real Complete Journey data, step by step, timed.

Steps: import the full data (``import_orders --preset completejourney``),
train and backtest a model (``train_bundles --no-score``), write pending
suggestions (``score_bundles``), approve the top suggestions as a demo staff
user (``demo_approve``, a product in at most 3 of them) so shoppers see offers, order each product page's
offers per store (``rank_store_offers``), create the admin login, and
print the timing of each step. Timings are also written to
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


class Command(BaseCommand):
    help = "Import the Complete Journey data, train, score, approve the top suggestions and print the admin login."

    def add_arguments(self, parser):
        parser.add_argument("--approve", type=int, default=20, help="how many top suggestions to approve (default 20)")
        parser.add_argument("--households", type=int, default=None, help="import only this many households (quick demo)")
        parser.add_argument("--skip-import", action="store_true", help="reuse the data already in the database")

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
        step("approve", "demo_approve", top=opts["approve"], offers_per_product=3)
        step("rank per store", "rank_store_offers")

        password = self._admin_password()
        user_model = get_user_model()
        admin, _ = user_model.objects.get_or_create(username="admin", defaults={"email": "admin@example.com"})
        admin.is_staff = admin.is_superuser = True
        admin.set_password(password)
        admin.save()

        var_dir = Path(settings.VAR_DIR)
        (var_dir / "demo_timings.json").write_text(json.dumps(timings, indent=2))
        self.stdout.write(self.style.SUCCESS("\nDemo ready."))
        for name, seconds in timings.items():
            self.stdout.write(f"  {name:<8} {seconds:>8.1f} s")
        self.stdout.write("  Storefront: http://127.0.0.1:8000/")
        self.stdout.write(f"  Admin:      http://127.0.0.1:8000/admin/  user: admin  password: {password}")

    @staticmethod
    def _admin_password() -> str:
        """Return the demo admin password, generated once and kept in var/demo_admin_password.txt."""
        path = Path(settings.VAR_DIR) / "demo_admin_password.txt"
        if path.exists():
            return path.read_text().strip()
        password = secrets.token_urlsafe(12)
        path.write_text(password)
        path.chmod(0o600)
        return password
