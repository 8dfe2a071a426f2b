"""Do store-specific bundles hold up in later weeks? (full Complete Journey, temporal split)

``bundling_ml.pipeline.store_specific_bundles`` proposes pairs that sell
together in some stores far more than chain-wide. This finds them on the lines
before the split date (default 2017-10-30, the protocol's split) and measures,
in the test weeks after it, each suggestion's attach rate (share of baskets
with the anchor that also hold the companion) in its own stores and in all
other stores. A store-specific suggestion is worth a store-limited campaign
only if its stores keep a clearly higher attach rate out of sample.

Prints the pooled attach rates (baskets with the anchor in the test weeks,
with a basket bootstrap 95 % interval of the ratio), the share of suggestions
whose stores keep a ratio >= 1.5, and the wall time. Not a test: nothing is
asserted.

Run: ``.venv/bin/python benchmarks/store_bundles_holdout.py [--split-date 2017-10-30] [--max-bundles 100]``
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bundling_ml.data import completejourney_frames, prepare_lines, temporal_split  # noqa: E402
from bundling_ml.pipeline import store_specific_bundles  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split-date", default="2017-10-30")
    ap.add_argument("--max-bundles", type=int, default=100)
    ap.add_argument("--bootstrap", type=int, default=1000)
    args = ap.parse_args()
    lines, products = completejourney_frames()
    L = prepare_lines(lines)
    train, test = temporal_split(L, pd.Timestamp(args.split_date))
    t = time.perf_counter()
    df = store_specific_bundles(train, products, excluded_departments=("FUEL", "COUPON"), max_bundles=args.max_bundles)
    seconds = time.perf_counter() - t
    print(f"{len(df)} store-specific bundles from the lines before {args.split_date} in {seconds:.1f} s "
          f"({df['store_ids'].map(len).sum()} (bundle, store) pairs)")

    baskets = test.groupby("basket_id").agg(store_id=("store_id", "first"), items=("product_id", lambda s: frozenset(s)))
    store = baskets["store_id"].astype("string").fillna("").to_numpy(dtype=object)
    items = baskets["items"].to_numpy()
    per = []  # per suggestion: anchor baskets and hits, in its stores and elsewhere
    rows = []  # per (suggestion, basket with the anchor): in its stores?, hit?
    for k, (a, c, stores) in enumerate(zip(df["anchor"], df["items"].map(lambda t: t[1]), df["store_ids"])):
        has_a = np.fromiter((a in s for s in items), bool, len(items))
        idx = np.flatnonzero(has_a)
        hit = np.fromiter((c in items[i] for i in idx), bool, len(idx))
        inside = np.isin(store[idx], list(stores))
        per.append((inside.sum(), hit[inside].sum(), (~inside).sum(), hit[~inside].sum()))
        rows.append(pd.DataFrame({"k": k, "basket": idx, "inside": inside, "hit": hit}))
    per = np.asarray(per, dtype=np.float64)
    R = pd.concat(rows, ignore_index=True)
    n_in, h_in, n_out, h_out = per.sum(axis=0)
    rate_in, rate_out = h_in / n_in, h_out / n_out
    print(f"test weeks: attach rate in the suggestions' own stores {rate_in:.3f} ({int(h_in)}/{int(n_in)} anchor baskets), "
          f"in the other stores {rate_out:.3f} ({int(h_out)}/{int(n_out)}); ratio {rate_in / rate_out:.2f}")
    rng = np.random.default_rng(0)
    ub = np.unique(R["basket"].to_numpy())
    pos = {b: i for i, b in enumerate(ub)}
    bi = R["basket"].map(pos).to_numpy()
    ratios = []
    for _ in range(args.bootstrap):
        w = np.bincount(rng.integers(0, len(ub), len(ub)), minlength=len(ub))[bi]
        hin = (w * (R["inside"] & R["hit"])).sum() / max((w * R["inside"]).sum(), 1)
        hout = (w * (~R["inside"] & R["hit"])).sum() / max((w * ~R["inside"]).sum(), 1)
        ratios.append(hin / hout if hout else np.nan)
    lo, hi = np.nanpercentile(ratios, [2.5, 97.5])
    print(f"ratio 95 % basket-bootstrap interval [{lo:.2f}, {hi:.2f}]")
    enough = per[:, 0] >= 5
    r_each = (per[enough, 1] / per[enough, 0]) / np.maximum(per[enough, 3] / np.maximum(per[enough, 2], 1), 1e-9)
    print(f"suggestions with >= 5 anchor baskets in their stores in the test weeks: {int(enough.sum())} of {len(df)}; "
          f"their stores keep a ratio >= 1.5 for {float((r_each >= 1.5).mean()):.0%}")
    print(f"in the training weeks (the evidence they were chosen on): attach rate in their stores "
          f"{np.average(df['expected_attach_rate'], weights=None):.3f} (mean over suggestions, shrunk)")


if __name__ == "__main__":
    main()
