"""The zero-setup SQLite demo under a double-submitted checkout (a subprocess: the test suite itself runs on
PostgreSQL and refuses SQLite settings).

On Django's default DEFERRED SQLite transactions, concurrent checkouts that had each read the database
failed with ``OperationalError: database is locked`` when they tried to write (the busy timeout does not
apply to a reader becoming a writer): three 500s and one order. ``config/settings.py`` opens SQLite
transactions IMMEDIATE, so they wait for each other and all four end at the one order, as on PostgreSQL.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r'''
import os, re, sys, threading, time
from decimal import Decimal as D
from http.cookies import SimpleCookie
import django
os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from django.db import connection
from django.test import Client
from django.test.utils import setup_test_environment
from django.urls import reverse
from django.utils import timezone
from datetime import timedelta
from shop_bundles.models import BundleCampaign, BundleCampaignItem, Order, Product
from shop_bundles.services import orders as order_service
from shop_bundles.storefront.cart import SESSION_KEY
setup_test_environment()
a = Product.objects.create(sku="A", name="Pasta", price=D("20.00"), stock=100)
b = Product.objects.create(sku="B", name="Sauce", price=D("5.00"), stock=100)
c = BundleCampaign.objects.create(name="AB", discount_type="percent", discount_value=D("10"),
                                  starts_at=timezone.now() - timedelta(hours=1))
for i, p in enumerate((a, b)):
    BundleCampaignItem.objects.create(campaign=c, product=p, quantity=1, position=i)
CART, CHECKOUT = reverse("shop_bundles:cart"), reverse("shop_bundles:checkout")
shopper = Client(enforce_csrf_checks=True)
session = shopper.session
session[SESSION_KEY] = {str(a.pk): 1, str(b.pk): 1}
session.save()
html = shopper.get(CART).content.decode()
form = re.search(r'<form method="post" action="%s" class="checkout">(.*?)</form>' % re.escape(CHECKOUT), html, re.S).group(1)
fields = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', form))
real = order_service.cart_price
def slow(*args, **kwargs):
    time.sleep(0.3)
    return real(*args, **kwargs)
order_service.cart_price = slow
n = 4
barrier = threading.Barrier(n)
out = [None] * n
def submit(i):
    try:
        client = Client(enforce_csrf_checks=True, raise_request_exception=True)
        client.cookies = SimpleCookie({k: m.value for k, m in shopper.cookies.items()})
        barrier.wait(timeout=10)
        out[i] = client.post(CHECKOUT, fields).status_code
    except Exception as exc:
        out[i] = f"{type(exc).__name__}: {exc}"
    finally:
        connection.close()
threads = [threading.Thread(target=submit, args=(i,)) for i in range(n)]
[t.start() for t in threads]
[t.join(timeout=120) for t in threads]
print(out, Order.objects.count(), list(Product.objects.order_by("sku").values_list("stock", flat=True)))
'''


@pytest.mark.faults
def test_four_concurrent_submits_of_one_checkout_on_the_sqlite_demo_all_end_at_one_order(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL")
           and not k.startswith("DJANGO_")}
    env.update(PYTHONPATH=str(ROOT), SHOP_BUNDLES_VAR_DIR=str(tmp_path / "var"),
               SHOP_BUNDLES_IMPRESSION_BUFFER_URL="")
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "var" / "db.sqlite3").exists()  # it really ran on SQLite
    assert result.stdout.strip().splitlines()[-1] == "[302, 302, 302, 302] 1 [99, 99]"
