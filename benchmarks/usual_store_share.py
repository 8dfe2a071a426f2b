"""How often does a known shopper buy in their usual store? (the storefront's default store for a signed-in shopper)

``shop_bundles.selectors.customers.usual_store`` gives a signed-in shopper
who has not chosen a store the store of most of their orders (ties: the
most recent order's store). This measures, on the Complete Journey temporal
split (2017-10-30), the share of the test period's baskets of households
with training history that were placed in the household's usual
training-window store, and how concentrated households are on one store.

Run: ``.venv/bin/python benchmarks/usual_store_share.py`` (about 30 s).
Result (docs/quality.md, "Not done / open"): 68.1 % of 26,625 baskets; a
household's usual store holds 74 % of its training baskets on average.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

from bundling_ml.data import completejourney_frames, prepare_lines, temporal_split  # noqa: E402

SPLIT = pd.Timestamp("2017-10-30")


def main() -> int:
    lines, _ = completejourney_frames()
    train, test = temporal_split(prepare_lines(lines), SPLIT)

    def baskets(df: pd.DataFrame) -> pd.DataFrame:
        b = df.drop_duplicates("basket_id")[["basket_id", "customer_id", "store_id", "time"]]
        return b[b["store_id"].astype(str) != ""]

    tb, sb = baskets(train), baskets(test)
    g = (tb.groupby(["customer_id", "store_id"]).agg(n=("basket_id", "size"), last=("time", "max")).reset_index()
         .sort_values(["customer_id", "n", "last"], ascending=[True, False, False]))
    usual = g.drop_duplicates("customer_id").set_index("customer_id")["store_id"].astype(str)
    sb = sb[sb["customer_id"].isin(usual.index)]
    in_usual = sb["store_id"].astype(str).to_numpy() == usual.reindex(sb["customer_id"]).to_numpy()
    share = g.groupby("customer_id")["n"].max() / g.groupby("customer_id")["n"].sum()
    print(f"test baskets of households with training history and a store: {len(sb):,}")
    print(f"share placed in the household's usual training store: {in_usual.mean():.4f}")
    print(f"share of a household's training baskets in its usual store: mean {share.mean():.4f}, median {share.median():.4f} "
          f"({len(share):,} households)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
