"""The product page's live-offers query on PostgreSQL: plan and time of the old and the current form.

Run::

    .venv/bin/python benchmarks/offers_query_plan.py \\
        [--database-url postgres://postgres@127.0.0.1:5432/sb_bench] [--sku SKU] [--repeat 200] [--analyze-tables]

For one product with live offers (default: the one in most live campaigns),
prints ``EXPLAIN (ANALYZE, BUFFERS)`` and the median / p95 execution time
over ``--repeat`` runs (client-side wall time of ``cursor.execute`` +
fetch) of:

* ``old``: campaigns ``... AND id NOT IN (SELECT campaign_id FROM items JOIN
  product WHERE NOT active OR stock <= 0)`` (the form before issue 5), and
* ``current``: as ``selectors.offers.offers_for_product`` runs it: the
  product's campaign ids first (an index lookup, not timed here), then
  ``live_campaigns`` (``NOT EXISTS`` correlated on the campaign) restricted to
  those primary keys.

``--analyze-tables`` runs ``ANALYZE`` on the campaign tables first (by
default the tables are left as they are, e.g. never analysed after the demo
approved its campaigns, which is what the storefront meets). Not a test:
nothing is asserted; results go to ``benchmarks/results/offers_query_plan.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "offers_query_plan.json"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/sb_bench")
    parser.add_argument("--sku")
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--analyze-tables", action="store_true")
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args()
    os.environ["DATABASE_URL"] = args.database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.db import connection
    from django.db.models import Count, Q
    from django.utils import timezone

    from shop_bundles.models import BundleCampaign, BundleCampaignItem, Product
    from shop_bundles.selectors.offers import live_campaigns

    if args.analyze_tables:
        with connection.cursor() as cursor:
            cursor.execute('ANALYZE "shop_bundles_bundlecampaign", "shop_bundles_bundlecampaignitem"')
    if args.sku:
        product = Product.objects.get(sku=args.sku)
    else:
        top = (BundleCampaignItem.objects.filter(campaign__in=live_campaigns()).values("product_id")
               .annotate(n=Count("id")).order_by("-n", "product_id").first())
        if top is None:
            print("No live campaign: approve some first (manage.py demo_approve).")
            return 2
        product = Product.objects.get(pk=top["product_id"])
    now = timezone.now()
    of_product = BundleCampaignItem.objects.filter(product_id=product.pk).values("campaign_id")
    unavailable = BundleCampaignItem.objects.filter(Q(product__active=False) | Q(product__stock__lte=0))
    old = (BundleCampaign.objects.filter(status=BundleCampaign.ACTIVE, starts_at__lte=now)
           .filter(Q(ends_at__isnull=True) | Q(ends_at__gt=now))
           .exclude(id__in=unavailable.values("campaign_id"))
           .filter(id__in=of_product).order_by("id"))
    ids = list(BundleCampaignItem.objects.filter(product_id=product.pk).values_list("campaign_id", flat=True))
    current = live_campaigns(now=now).filter(pk__in=ids).order_by("id")
    result = {"sku": product.sku, "analyzed": args.analyze_tables, "repeat": args.repeat, "queries": {}}
    for name, qs in (("old", old), ("current", current)):
        sql, params = qs.query.sql_with_params()
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params)
            plan = [row[0] for row in cursor.fetchall()]
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                cursor.execute(sql, params)
                rows = cursor.fetchall()
                times.append((time.perf_counter() - t0) * 1000)
        times.sort()
        result["queries"][name] = {"rows": len(rows), "p50_ms": round(statistics.median(times), 3),
                                   "p95_ms": round(times[int(0.95 * len(times)) - 1], 3), "plan": plan}
        print(f"== {name}: {len(rows)} campaigns, p50 {result['queries'][name]['p50_ms']:.3f} ms, "
              f"p95 {result['queries'][name]['p95_ms']:.3f} ms over {args.repeat} runs")
        print("\n".join(plan))
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
