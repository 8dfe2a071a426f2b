"""Storefront load benchmark: gunicorn (3 sync workers) on PostgreSQL, driven by locust.

Run (needs ``pip install -r benchmarks/requirements.txt`` and a database with live campaigns)::

    .venv/bin/python benchmarks/load_storefront.py \\
        [--database-url postgres://postgres@127.0.0.1:5432/sb_bench] [--users 50] [--spawn-rate 10] [--duration 60] \\
        [--broker-url redis://127.0.0.1:6391/0] [--locust PATH]

``--broker-url`` runs gunicorn as in production with Redis: ``CELERY_BROKER_URL``
(the bundle button's outbox event is sent to the broker after commit) and,
by default, the impression buffer on the same Redis (product pages ``RPUSH``
their impressions). Use a Redis of the benchmark's own (e.g. ``redis-server
--port 6391 --save ''``): no worker consumes the messages during the run
(its CPU is not part of the figures); afterwards this script drains the
impression buffer into PostgreSQL before the cleanup. Without it gunicorn
runs in demo mode (tasks eager, in the request; impressions written directly).
``--locust`` is the locust executable (default ``.venv/bin/locust``).

What it does:

1. Reads, from the database, the SKUs of the products that show at least one
   live bundle offer (``selectors.offers.offers_for_product``), and an equally
   sized, seeded random sample of active, in-stock, priced products that are in
   no campaign at all (and show no offer).
2. Starts ``.venv/bin/gunicorn config.wsgi --bind 127.0.0.1:<free port> --workers 3``
   with ``DATABASE_URL``, ``DJANGO_ENV=development``, ``DJANGO_DEBUG=0`` and
   ``DJANGO_ALLOWED_HOSTS=127.0.0.1``. ``SHOP_BUNDLES_HOLDOUT_SHARE`` is not read
   from the environment (``config/settings.py``), so the default holdout share
   applies: those shoppers are not shown offers and skip the bundle POST
   (counted in the output). A few sequential GETs warm every worker up
   (not measured).
3. Runs locust headless twice, with the same users / spawn rate / duration and
   no think time (``benchmarks/locust_storefront.py``):
   *with offers* (product page with the bundle block → POST add bundle → cart)
   and *without offers* (product page without the block → POST add product → cart).
   Every user keeps its cookies; a wrong page (missing / unexpected bundle
   block, no CSRF token, non-302 POST, non-200 page) counts as an error.
4. Prints one table (requests/s and p50/p95/p99 latency in ms per request type,
   errors) and writes ``benchmarks/results/load_storefront.json``.
5. Stops gunicorn (also on error or Ctrl-C) and deletes the rows the run wrote
   (sessions of the simulated shoppers and their impression / add-to-cart
   offer events), unless ``--keep-rows``.

Latency percentiles are computed from every response time locust measured
(unrounded; locust's own CSV percentiles are bucketed). Requests/s is locust's
figure (requests / time from start to the last request, spawn ramp included).
Only 127.0.0.1 is loaded. Not a test: nothing is asserted, but the exit code is
1 when a run had errors.
"""
from __future__ import annotations

import argparse
import csv
import http.cookiejar
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = ROOT / ".venv" / "bin"
LOCUSTFILE = Path(__file__).resolve().parent / "locust_storefront.py"
RESULTS = Path(__file__).resolve().parent / "results" / "load_storefront.json"
DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/sb_bench"
REQUEST_ORDER = ("product page", "add bundle (POST)", "add product (POST)", "cart")


def setup_django(database_url: str, broker_url: str = "") -> None:
    os.environ["DATABASE_URL"] = database_url
    if broker_url:
        os.environ["CELERY_BROKER_URL"] = broker_url  # the same impression buffer as gunicorn's
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ["DJANGO_DEBUG"] = "0"
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()


def pick_skus(seed: int = 0) -> tuple[list[str], list[str], dict]:
    """SKUs with at least one live offer, and as many SKUs in no campaign (no offer)."""
    from shop_bundles.models import BundleCampaignItem, Product
    from shop_bundles.selectors.offers import live_campaigns, offers_for_product

    live = list(live_campaigns().values_list("id", flat=True))
    ids = BundleCampaignItem.objects.filter(campaign_id__in=live).values_list("product_id", flat=True)
    candidates = Product.objects.filter(pk__in=ids).order_by("sku")
    with_offers, offers_per_page = [], []
    for product in candidates:
        offers = offers_for_product(product) if product.available else []
        if offers:
            with_offers.append(product.sku)
            offers_per_page.append(len(offers))
    in_any_campaign = BundleCampaignItem.objects.values("product_id")
    pool = list(Product.objects.filter(active=True, stock__gt=0, price__gt=0)
                .exclude(pk__in=in_any_campaign).order_by("pk").values_list("pk", flat=True))
    rng = random.Random(seed)
    sample_ids = rng.sample(pool, min(len(with_offers), len(pool)))
    without = []
    for product in Product.objects.filter(pk__in=sample_ids).order_by("sku"):
        assert not offers_for_product(product), product.sku
        without.append(product.sku)
    info = {"live_campaigns": len(live), "skus_with_offers": len(with_offers),
            "offers_per_page_max": max(offers_per_page, default=0),
            "offers_per_page_mean": round(sum(offers_per_page) / len(offers_per_page), 2) if offers_per_page else 0,
            "skus_without_offers": len(without)}
    return with_offers, without, info


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_gunicorn(port: int, database_url: str, log_path: Path, broker_url: str = "") -> subprocess.Popen:
    env = dict(os.environ, DATABASE_URL=database_url, DJANGO_ENV="development", DJANGO_DEBUG="0",
               DJANGO_ALLOWED_HOSTS="127.0.0.1")
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env.pop("CELERY_BROKER_URL", None)
    if broker_url:
        env["CELERY_BROKER_URL"] = broker_url
    cmd = [str(VENV_BIN / "gunicorn"), "config.wsgi", "--bind", f"127.0.0.1:{port}", "--workers", "3"]
    log = open(log_path, "w")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop_gunicorn(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


def wait_ready(base: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(base + "/cart/", timeout=5) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"gunicorn not ready after {timeout:.0f} s")


def warm_up(base: str, skus: list[str], rounds: int = 12) -> set[str]:
    """Sequential GETs so every worker has loaded URLs, templates and a DB connection; returns session keys."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    deadline = time.monotonic() + 60
    for i in range(rounds):
        if time.monotonic() > deadline:
            break
        for path in (f"/products/{skus[i % len(skus)]}/", "/cart/"):
            with opener.open(base + path, timeout=30) as resp:
                resp.read()
    return {c.value for c in jar if c.name == "sessionid"}


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(-(-q * len(ordered) // 100)) - 1))
    return ordered[k]


def run_locust(label: str, user_class: str, skus: list[str], base: str, args, workdir: Path) -> dict:
    sku_file = workdir / f"{label}_skus.json"
    sku_file.write_text(json.dumps(skus))
    out_file = workdir / f"{label}_summary.json"
    from shop_bundles import app_settings

    env = dict(os.environ, SB_BENCH_SKUS=str(sku_file), SB_BENCH_OUT=str(out_file),
               SB_BENCH_SALT=str(app_settings.get("EXPERIMENT_SALT")),
               SB_BENCH_HOLDOUT_SHARE=str(app_settings.get("HOLDOUT_SHARE")))
    prefix = workdir / label
    cmd = [args.locust, "-f", str(LOCUSTFILE), "--headless", "--host", base,
           "-u", str(args.users), "-r", str(args.spawn_rate), "-t", f"{args.duration}s", "--stop-timeout", "10",
           "--csv", str(prefix), "--only-summary", "--loglevel", "WARNING", user_class]
    load_before = os.getloadavg()
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.duration + 120)
    wall = time.monotonic() - started
    with open(f"{prefix}_stats.csv") as fh:
        stats = {row["Name"]: row for row in csv.DictReader(fh)}
    with open(f"{prefix}_failures.csv") as fh:
        failures = [{"method": r["Method"], "name": r["Name"], "error": r["Error"], "occurrences": int(r["Occurrences"])}
                    for r in csv.DictReader(fh)]
    summary = json.loads(out_file.read_text()) if out_file.exists() else {"users": [], "response_times": {}}
    times = summary.get("response_times", {})
    rows = []
    for name in [n for n in REQUEST_ORDER if n in stats] + ["Aggregated"]:
        row = stats[name]
        samples = times.get(name) if name != "Aggregated" else [t for v in times.values() for t in v]
        rows.append({
            "request": "all requests" if name == "Aggregated" else name,
            "requests": int(row["Request Count"]),
            "errors": int(row["Failure Count"]),
            "requests_per_s": round(float(row["Requests/s"]), 1),
            "p50_ms": round(percentile(samples, 50), 1) if samples else None,
            "p95_ms": round(percentile(samples, 95), 1) if samples else None,
            "p99_ms": round(percentile(samples, 99), 1) if samples else None,
            "max_ms": round(max(samples), 1) if samples else None,
        })
    users = summary.get("users", [])
    return {
        "label": label, "user_class": user_class, "locust_exit_code": proc.returncode,
        "locust_stderr_tail": proc.stderr.strip().splitlines()[-15:] if proc.returncode else [],
        "wall_s": round(wall, 1), "load_avg_1min_before": round(load_before[0], 2),
        "load_avg_1min_after": round(os.getloadavg()[0], 2),
        "rows": rows, "errors": sum(f["occurrences"] for f in failures), "failures": failures,
        "shopper_loops": sum(u.get("loops", 0) for u in users),
        "bundle_adds": sum(u.get("bundle_adds", 0) for u in users),
        "holdout_shoppers": sum(1 for u in users if u.get("group") == "holdout"),
        "holdout_skipped_bundle_adds": sum(u.get("holdout_skips", 0) for u in users),
        "cart_lines_at_end_mean": round(sum(u.get("cart_lines", 0) for u in users) / len(users), 1) if users else 0,
        "cart_lines_at_end_max": max((u.get("cart_lines", 0) for u in users), default=0),
        "_session_keys": sorted({u["session_key"] for u in users if u.get("session_key")}),
    }


def cleanup(session_keys: set[str]) -> dict:
    """Drain the impression buffer, then delete the sessions the benchmark created and their offer events."""
    from django.contrib.sessions.models import Session

    from shop_bundles.models import OfferEvent
    from shop_bundles.services.impression_buffer import impression_buffer_drain

    drained = impression_buffer_drain()
    keys = sorted(k for k in session_keys if k)
    events = sessions = 0
    for i in range(0, len(keys), 500):
        chunk = keys[i:i + 500]
        events += OfferEvent.objects.filter(session_key__in=chunk, order__isnull=True,
                                            kind__in=[OfferEvent.IMPRESSION, OfferEvent.ADD_TO_CART]).delete()[0]
        sessions += Session.objects.filter(session_key__in=chunk).delete()[0]
    return {"impression_messages_drained": drained["messages"], "offer_events_deleted": events,
            "sessions_deleted": sessions}


def print_table(runs: list[dict], meta: dict) -> None:
    print(f"\nStorefront load: {meta['users']} shoppers, spawn {meta['spawn_rate']}/s, {meta['duration_s']} s per run, "
          f"no think time; gunicorn 3 sync workers, PostgreSQL {meta['database']}, broker {meta['broker']}; "
          f"locust {meta['locust_version']}")
    header = f"| {'run':<14} | {'request':<18} | {'requests':>8} | {'req/s':>6} | {'p50 ms':>7} | {'p95 ms':>7} | {'p99 ms':>7} | {'errors':>6} |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for run in runs:
        for row in run["rows"]:
            fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
            print(f"| {run['label']:<14} | {row['request']:<18} | {row['requests']:>8} | {row['requests_per_s']:>6.1f} | "
                  f"{fmt(row['p50_ms']):>7} | {fmt(row['p95_ms']):>7} | {fmt(row['p99_ms']):>7} | {row['errors']:>6} |")
    for run in runs:
        extra = (f"; {run['bundle_adds']} bundle adds, {run['holdout_shoppers']} holdout shoppers skipped "
                 f"{run['holdout_skipped_bundle_adds']} bundle adds" if run["user_class"] == "BundleShopper" else "")
        print(f"{run['label']}: {run['shopper_loops']} shopper loops{extra}; cart lines at end mean "
              f"{run['cart_lines_at_end_mean']} (max {run['cart_lines_at_end_max']}); load avg 1-min "
              f"{run['load_avg_1min_before']} before / {run['load_avg_1min_after']} after; errors {run['errors']}")
        for f in run["failures"]:
            print(f"  error x{f['occurrences']}: {f['method']} {f['name']}: {f['error']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=DEFAULT_DB)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--spawn-rate", type=float, default=10)
    parser.add_argument("--duration", type=int, default=60, help="seconds per run")
    parser.add_argument("--keep-rows", action="store_true", help="keep the sessions and offer events written")
    parser.add_argument("--broker-url", default="", help="Redis broker (and impression buffer) for gunicorn; "
                                                         "empty: demo mode (eager tasks, direct impression writes)")
    parser.add_argument("--locust", default=str(VENV_BIN / "locust"), help="the locust executable")
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args()

    def _sigterm(signum, frame):
        raise SystemExit(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, _sigterm)
    setup_django(args.database_url, args.broker_url)
    from importlib.metadata import version

    with_offers, without_offers, sku_info = pick_skus()
    if not with_offers:
        print("No product shows a live bundle offer: approve campaigns first (manage.py demo_approve --top 20).")
        return 2
    meta = {"started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "users": args.users,
            "spawn_rate": args.spawn_rate, "duration_s": args.duration, "think_time_s": 0,
            "locust_version": subprocess.run([args.locust, "--version"], capture_output=True, text=True)
            .stdout.split()[1], "gunicorn_version": version("gunicorn"),
            "gunicorn": "gunicorn config.wsgi --workers 3 (sync), DJANGO_ENV=development DJANGO_DEBUG=0",
            "holdout_share": None, "database": args.database_url.rsplit("/", 1)[-1], **sku_info,
            "broker": args.broker_url or "none (eager tasks, direct impression writes)",
            "cpu_count": os.cpu_count()}
    from shop_bundles import app_settings

    meta["holdout_share"] = float(app_settings.get("HOLDOUT_SHARE"))
    print(f"{sku_info['live_campaigns']} live campaigns; {len(with_offers)} product pages with offers "
          f"(up to {sku_info['offers_per_page_max']} per page), {len(without_offers)} without; holdout share "
          f"{meta['holdout_share']} (settings default, not env-readable)")

    gunicorn = None
    runs: list[dict] = []
    session_keys: set[str] = set()
    code = 0
    with tempfile.TemporaryDirectory(prefix="sb_load_") as tmp:
        workdir = Path(tmp)
        try:
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            gunicorn = start_gunicorn(port, args.database_url, workdir / "gunicorn.log", args.broker_url)
            wait_ready(base, gunicorn)
            session_keys |= warm_up(base, with_offers + without_offers)
            for label, user_class, skus in (("with offers", "BundleShopper", with_offers),
                                            ("without offers", "PlainShopper", without_offers)):
                print(f"running '{label}' ({args.duration} s) ...", flush=True)
                run = run_locust(label.replace(" ", "_"), user_class, skus, base, args, workdir)
                run["label"] = label
                session_keys |= set(run.pop("_session_keys"))
                runs.append(run)
                if gunicorn.poll() is not None:
                    raise RuntimeError(f"gunicorn died during '{label}' (exit {gunicorn.returncode})")
        except BaseException:
            log = workdir / "gunicorn.log"
            if log.exists():
                print("gunicorn log tail:\n" + "\n".join(log.read_text().splitlines()[-30:]), file=sys.stderr)
            raise
        finally:
            stop_gunicorn(gunicorn)
            glog = (workdir / "gunicorn.log").read_text() if (workdir / "gunicorn.log").exists() else ""
            meta["gunicorn_log_errors"] = [l for l in glog.splitlines() if "ERROR" in l or "Traceback" in l][:20]
            if not args.keep_rows and session_keys:
                meta["cleanup"] = cleanup(session_keys)
                print(f"cleanup: {meta['cleanup']}")
    meta["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    print_table(runs, meta)
    if meta["gunicorn_log_errors"]:
        print("gunicorn log errors:\n  " + "\n  ".join(meta["gunicorn_log_errors"]))
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "runs": runs}, indent=2))
    print(f"\nwrote {out}")
    if any(run["errors"] or run["locust_exit_code"] not in (0,) for run in runs):
        code = 1
    return code


if __name__ == "__main__":
    sys.exit(main())
