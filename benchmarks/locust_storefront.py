"""Locust shoppers for ``benchmarks/load_storefront.py`` (not meant to be run on its own).

Two user classes, chosen on the locust command line:

* ``BundleShopper``: open the product page of a product in a live campaign
  (the page must show the "Frequently bought together" block), POST *Add
  bundle to cart* with the page's CSRF token, then view the cart.
* ``PlainShopper``: open the product page of a product without any offer (the
  page must have no bundle block), POST *Add to cart* for that product, then
  view the cart.

Each simulated user keeps its own cookies (session + CSRF), has no think time
and loops until locust stops it. POSTs are sent with ``allow_redirects=False``
so the POST and the cart page are measured separately (the browser's redirect
target is the cart, which is the next request anyway).

Environment (set by ``load_storefront.py``):
``SB_BENCH_SKUS`` path of a JSON list of SKUs; ``SB_BENCH_OUT`` path where the
per-user summary (session keys, holdout users, skipped bundle adds, cart sizes)
is written when the test stops; ``SB_BENCH_SALT`` / ``SB_BENCH_HOLDOUT_SHARE``
the experiment settings of the server, used to tell which shoppers are in the
holdout group (they are not shown offers, so they cannot add a bundle).
"""
import hashlib
import json
import os
import random
import re

from locust import FastHttpUser, constant, events, task

SKUS = json.load(open(os.environ["SB_BENCH_SKUS"]))
SALT = os.environ.get("SB_BENCH_SALT", "")
HOLDOUT_SHARE = float(os.environ.get("SB_BENCH_HOLDOUT_SHARE", "0"))
OUT = os.environ.get("SB_BENCH_OUT", "")

CSRF_RE = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')
BUNDLE_FORM_RE = re.compile(r'action="(/bundles/\d+/add/)"')
OFFERS_BLOCK = 'class="offers"'
CART_LINE_RE = re.compile(r'name="qty_\d+"')

SUMMARY = {"users": [], "response_times": {}}


@events.request.add_listener
def _record(request_type, name, response_time, exception, **kwargs):
    """Keep every response time (ms, unrounded) per request name; locust's own percentiles are bucketed."""
    SUMMARY["response_times"].setdefault(name, []).append(round(response_time, 3))


def _group(session_key: str) -> str:
    """The server's experiment assignment (same formula as selectors.experiment)."""
    if not session_key:
        return "treatment"
    digest = hashlib.sha256(f"{SALT}:{session_key}".encode()).digest()
    return "holdout" if int.from_bytes(digest[:8], "big") / 2 ** 64 < HOLDOUT_SHARE else "treatment"


class _Shopper(FastHttpUser):
    abstract = True
    wait_time = constant(0)

    def on_start(self):
        self.rng = random.Random()
        self.stats = {"loops": 0, "bundle_adds": 0, "holdout_skips": 0, "cart_lines": 0}
        SUMMARY["users"].append(self.stats)

    def _cookie(self, name: str) -> str:
        for cookie in self.client.cookiejar:
            if cookie.name == name:
                return cookie.value
        return ""

    def _product_page(self, sku: str, *, expect_offers: bool):
        """GET the product page; returns (csrf token, bundle form actions) or None on failure."""
        with self.client.get(f"/products/{sku}/", name="product page", catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"status {resp.status_code}")
                return None
            text = resp.text or ""
            token = CSRF_RE.search(text)
            actions = BUNDLE_FORM_RE.findall(text)
            has_block = OFFERS_BLOCK in text
            if not token:
                resp.failure("no CSRF token on the page")
                return None
            if expect_offers:
                group = _group(self._cookie("sessionid"))
                self.stats["session_key"] = self._cookie("sessionid")
                self.stats["group"] = group
                if group == "treatment" and not (has_block and actions):
                    resp.failure("bundle block missing for a treatment shopper")
                    return None
                if group == "holdout" and has_block:
                    resp.failure("bundle block shown to a holdout shopper")
                    return None
            elif has_block or actions:
                resp.failure("bundle block on a product without offers")
                return None
            resp.success()
            return token.group(1), actions

    def _post(self, url: str, name: str, token: str, data: dict):
        body = dict(data, csrfmiddlewaretoken=token)
        with self.client.post(url, data=body, name=name, allow_redirects=False, catch_response=True,
                              headers={"Referer": f"{self.host}/"}) as resp:
            location = resp.headers.get("Location", "") if resp.headers else ""
            if resp.status_code != 302 or not location.endswith("/cart/"):
                resp.failure(f"status {resp.status_code}, Location {location!r}")
                return False
            resp.success()
            return True

    def _cart(self):
        with self.client.get("/cart/", name="cart", catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"status {resp.status_code}")
                return
            self.stats["cart_lines"] = len(CART_LINE_RE.findall(resp.text or ""))
            self.stats["session_key"] = self._cookie("sessionid")
            resp.success()


class BundleShopper(_Shopper):
    """Product page with offers → add the bundle → cart."""

    @task
    def loop(self):
        self.stats["loops"] += 1
        page = self._product_page(self.rng.choice(SKUS), expect_offers=True)
        if page is None:
            return
        token, actions = page
        if actions:
            if self._post(self.rng.choice(actions), "add bundle (POST)", token, {"quantity": "1"}):
                self.stats["bundle_adds"] += 1
        else:  # holdout shopper: the offer is hidden, nothing to add
            self.stats["holdout_skips"] += 1
        self._cart()


class PlainShopper(_Shopper):
    """Product page without offers → add the product → cart."""

    @task
    def loop(self):
        self.stats["loops"] += 1
        sku = self.rng.choice(SKUS)
        page = self._product_page(sku, expect_offers=False)
        if page is None:
            return
        token, _ = page
        self._post(f"/products/{sku}/add/", "add product (POST)", token, {"quantity": "1"})
        self._cart()


@events.test_stop.add_listener
def _write_summary(environment, **kwargs):
    if OUT:
        with open(OUT, "w") as fh:
            json.dump(SUMMARY, fh)
