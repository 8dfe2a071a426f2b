"""Ranker building blocks on hand-made frames with known answers: substitute
rule, cold-start companions from attributes, SAR decayed Jaccard, shopper
history features and the repeat + count baseline."""
import numpy as np
import pandas as pd
import pytest

from bundling_ml import ranking as rk
from bundling_ml.data import prepare_lines, prepare_products
from bundling_ml.features import ProductTable, ProductVocab


def lines_from(baskets, start="2024-01-01"):
    """baskets: list of (basket_id, customer, day, [products])."""
    rows = []
    for b, cust, day, prods in baskets:
        for p in prods:
            rows.append((b, p, cust, pd.Timestamp(start) + pd.Timedelta(days=day), 1.0, 1.0))
    df = pd.DataFrame(rows, columns=["basket_id", "product_id", "customer_id", "time", "quantity", "price"])
    df["customer_id"] = df["customer_id"].astype("string")
    return prepare_lines(df)


PRODUCTS = pd.DataFrame({
    "product_id": ["MILK1", "MILK2", "MILK3", "BREAD", "JAM", "CHEESE", "YOG", "NEWDAIRY"],
    "department": ["GROCERY"] * 8,
    "category": ["DAIRY", "DAIRY", "DAIRY", "BAKERY", "SPREADS", "DAIRY", "DAIRY", "DAIRY"],
    "product_type": ["MILK", "MILK", "MILK", "BREAD", "JAM", "CHEESE", "YOGURT", "CREAM"],
    "brand": ["A", "B", "C", "A", "A", "B", "B", "C"],
    "price": [1.0] * 8,
})


def context(baskets, end=None):
    L = lines_from(baskets)
    P = prepare_products(PRODUCTS, L)
    idx = pd.Index(np.sort(L["product_id"].unique()))
    table = ProductTable.build(P, idx, ProductVocab.fit(P, idx))
    return rk.build_context(L, idx, table, P, end=end), idx


# MILK1 + MILK2: bought together 6 times out of 6 -> high lift (stock-up), allowed.
# MILK1 + MILK3: together once; MILK3 also alone -> low evidence -> substitutes.
BASKETS = (
    [(f"m{i}", "c1", i, ["MILK1", "MILK2"]) for i in range(6)]
    + [(f"b{i}", "c2", i, ["BREAD", "JAM"]) for i in range(10)]
    + [("x1", "c3", 1, ["MILK1", "MILK3"]), ("x2", "c3", 2, ["MILK3"]), ("x3", "c3", 3, ["MILK3", "BREAD"])]
    + [(f"y{i}", "c4", i, ["CHEESE", "YOG"]) for i in range(4)]
    + [("n1", "c5", 9, ["NEWDAIRY"])]
)


def test_substitute_rule_blocks_same_type_without_evidence():
    ctx, idx = context(BASKETS)
    i = {p: k for k, p in enumerate(idx)}
    a = np.array([i["MILK1"], i["MILK1"], i["BREAD"], i["MILK2"]])
    c = np.array([i["MILK2"], i["MILK3"], i["JAM"], i["MILK3"]])
    # MILK1-MILK2: count 6, lift 6*24/(7*6)=3.4 -> kept; MILK1-MILK3: count 1 -> substitute;
    # BREAD-JAM: different type -> kept; MILK2-MILK3 never together -> substitute
    assert rk.substitute_mask(ctx, a, c).tolist() == [False, True, False, True]
    # stricter count threshold blocks MILK1-MILK2 too
    assert rk.substitute_mask(ctx, a[:1], c[:1], min_count=7).tolist() == [True]


def test_cold_anchor_gets_companions_from_its_category():
    ctx, idx = context(BASKETS)
    i = {p: k for k, p in enumerate(idx)}
    cold = i["NEWDAIRY"]  # one basket, never bought with anything
    assert ctx.S.item_counts[cold] == 1 and ctx.S.co[cold].nnz == 0
    cands = rk.anchor_candidates(ctx, np.array([cold]), m=4, n_category=3)[0]
    names = [idx[j] for j in cands]
    # the 3 most recently popular DAIRY products come first (MILK1 7 baskets, MILK2 6, then MILK3 / CHEESE / YOG)
    assert names[:2] == ["MILK1", "MILK2"]
    assert all(PRODUCTS.set_index("product_id").category[n] == "DAIRY" for n in names[:3])
    assert "NEWDAIRY" not in names and len(names) == 4


def test_decayed_jaccard_halves_old_baskets():
    # A+B 56 days before the end (weight 0.5), A alone at the end (weight ~1)
    ctx, idx = context([("o", "c", 0, ["A", "B"]), ("n", "c", 56, ["A"])], end=pd.Timestamp("2024-02-26"))
    J = rk.decayed_jaccard_matrix(ctx)
    # decayed: n_A = 0.5 + 1, n_B = 0.5, n_AB = 0.5 -> 0.5 / (1.5 + 0.5 - 0.5) = 1/3
    assert J[0, 1] == pytest.approx(1 / 3, rel=1e-5)
    assert rk.sar_rank(ctx, np.array([0]), k=1).tolist() == [[1]]


def test_shopper_features_and_repeat_count_baseline():
    ctx, idx = context(BASKETS, end=pd.Timestamp("2024-01-11"))
    i = {p: k for k, p in enumerate(idx)}
    u = rk.user_index(ctx, ["c3", "nobody"])
    assert u[0] >= 0 and u[1] == -1
    f = rk.pair_features(ctx, np.array([i["BREAD"], i["BREAD"]]), np.array([i["MILK3"], i["MILK3"]]), u, shopper=True)
    k0 = len(rk.ANON_FEATURES)
    # c3: 3 baskets, MILK3 in all 3, last on day 3 (7 days before the end)
    assert f[0, k0:k0 + 4].tolist() == pytest.approx([1.0, np.log1p(3), 1.0, np.exp(-7 / 30)], rel=1e-5)
    assert f[0, k0 + 5] == pytest.approx(1 / 3)  # BREAD in 1 of c3's 3 baskets
    assert f[1, k0:].tolist() == [0.0] * len(rk.SHOPPER_FEATURES)
    # repeat + count: c3's own products (MILK3 3 baskets, MILK1 1; BREAD is the anchor), then the anchor's co-occurrence list
    cooc = np.array([[i["JAM"], i["MILK3"], -1]])
    top = rk.repeat_count_rank(ctx, np.array([i["BREAD"]]), np.array([u[0]]), cooc, k=3)
    assert [idx[j] for j in top[0]] == ["MILK3", "MILK1", "JAM"]


def test_top_k_drops_masked_and_padding():
    cands = np.array([[5, 6, 7, -1]])
    scores = np.array([[0.1, 0.9, 0.5, 9.0]])
    top, _ = rk.top_k(cands, scores, 3, drop=np.array([[False, True, False, False]]))
    assert top.tolist() == [[7, 5, -1]]


def test_query_time_and_basket_size_features():
    # 4 baskets: two in the morning (07:00, 08:00 -> bucket 2 of 3 h), two in the evening (20:00 -> bucket 6, 21:00 -> bucket 7)
    rows = [("b1", "COFFEE", "2024-01-01 07:00"), ("b1", "MILK1", "2024-01-01 07:00"), ("b2", "COFFEE", "2024-01-02 08:00"),
            ("b3", "MILK1", "2024-01-03 20:00"), ("b3", "BREAD", "2024-01-03 20:00"), ("b4", "BREAD", "2024-01-04 21:00")]
    df = pd.DataFrame(rows, columns=["basket_id", "product_id", "time"])
    df["time"] = pd.to_datetime(df["time"])
    df["customer_id"], df["quantity"], df["price"] = pd.Series(["c"] * len(df), dtype="string"), 1.0, 1.0
    L = prepare_lines(df)
    P = prepare_products(PRODUCTS, L)
    idx = pd.Index(np.sort(L["product_id"].unique()))
    ctx = rk.build_context(L, idx, ProductTable.build(P, idx, ProductVocab.fit(P, idx)), P)
    i = {p: k for k, p in enumerate(idx)}
    # COFFEE: 2 baskets, both in bucket 2; bucket 2 holds 2 of the 4 baskets
    assert ctx.hour_lift[2, i["COFFEE"]] == pytest.approx(np.log((2 + 1) / (2 + 8) / 0.5), rel=1e-6)
    assert ctx.hour_lift[6, i["COFFEE"]] == pytest.approx(np.log((0 + 1) / (2 + 8) / 0.25), rel=1e-6)
    assert ctx.hour_lift[0, i["COFFEE"]] == 0.0  # no basket between 00:00 and 03:00
    # 2024-01-01 is a Monday (weekday 0): 1 of COFFEE's 2 baskets, 1 of the 4 baskets
    assert ctx.dow_lift[0, i["COFFEE"]] == pytest.approx(np.log((1 + 1) / (2 + 7) / 0.25), rel=1e-6)
    assert ctx.log_basket_size[i["COFFEE"]] == pytest.approx(np.log1p(1.5), rel=1e-6)  # basket sizes 2 and 1
    assert ctx.log_codegree[i["COFFEE"]] == pytest.approx(np.log1p(1 * 100_000 / 4), rel=1e-6)  # one pair (with MILK1)
    a = np.array([i["MILK1"], i["MILK1"]])
    c = np.array([i["COFFEE"], i["COFFEE"]])
    t = np.array(["2024-02-05 07:30", "NaT"], dtype="datetime64[ns]")  # a Monday morning; unknown time
    f = rk.pair_features(ctx, a, c, times=t)
    col = {n: k for k, n in enumerate(rk.ANON_FEATURES)}
    assert f[0, col["cand_hour_lift"]] == pytest.approx(ctx.hour_lift[2, i["COFFEE"]])
    assert f[0, col["cand_dow_lift"]] == pytest.approx(ctx.dow_lift[0, i["COFFEE"]])
    assert f[1, col["cand_hour_lift"]] == 0.0 and f[1, col["cand_dow_lift"]] == 0.0
    assert f[0, col["anchor_log_basket_size"]] == pytest.approx(np.log1p(2.0))  # MILK1: baskets of 2 and 2
    assert (rk.pair_features(ctx, a, c)[:, [col["cand_hour_lift"], col["cand_dow_lift"]]] == 0).all()  # no query time: neutral


def store_context():
    """Store S1: 4 x [BREAD, JAM] + 1 x [BREAD]; store S2: 5 x [BREAD, CHEESE] (10 baskets)."""
    rows = [(f"s1-{i}", p, "S1") for i in range(4) for p in ("BREAD", "JAM")] + [("s1-4", "BREAD", "S1")]
    rows += [(f"s2-{i}", p, "S2") for i in range(5) for p in ("BREAD", "CHEESE")]
    df = pd.DataFrame(rows, columns=["basket_id", "product_id", "store_id"])
    df["time"], df["quantity"], df["price"] = pd.Timestamp("2024-01-02"), 1.0, 1.0
    L = prepare_lines(df)
    P = prepare_products(PRODUCTS, L)
    idx = pd.Index(np.sort(L["product_id"].unique()))
    table = ProductTable.build(P, idx, ProductVocab.fit(P, idx))
    return rk.build_context(L, idx, table, P), idx, L


def test_prepare_lines_keeps_one_store_per_basket():
    df = pd.DataFrame({"basket_id": ["b1", "b1", "b2", "b3"], "product_id": ["A", "B", "A", "A"], "store_id": [" 7 ", None, "", 9],
                       "time": pd.Timestamp("2024-01-02"), "quantity": 1.0, "price": 1.0})
    L = prepare_lines(df)
    st = L.set_index(["basket_id", "product_id"])["store_id"]
    assert st.drop(("b2", "A")).to_dict() == {("b1", "A"): "7", ("b1", "B"): "7", ("b3", "A"): "9"}
    assert pd.isna(st[("b2", "A")])  # an empty store is unknown
    assert "store_id" not in prepare_lines(df.drop(columns="store_id")).columns


def test_store_features_have_known_values():
    ctx, idx, _ = store_context()
    i = {p: k for k, p in enumerate(idx)}
    cols = {n: rk.ANON_FEATURES.index(n) for n in rk.STORE_FEATURES}
    s1, s2 = rk.store_index(ctx, ["S1", "S2"])
    assert rk.store_index(ctx, ["S3", None]).tolist() == [-1, -1]
    a = np.array([i["BREAD"]] * 3)
    c = np.array([i["JAM"], i["CHEESE"], i["JAM"]])
    f = rk.pair_features(ctx, a, c, stores=np.array([s1, s1, -1]))
    # global confidence P(JAM | BREAD) = 4/10, P(CHEESE | BREAD) = 5/10
    assert f[:, rk.ANON_FEATURES.index("confidence")] == pytest.approx([0.4, 0.5, 0.4])
    assert f[:, cols["store_known"]].tolist() == [1.0, 1.0, 0.0]
    # in S1: 5 baskets with BREAD, 4 with JAM, 0 with CHEESE; shrunk with 10 pseudo-baskets
    assert f[:, cols["store_confidence"]] == pytest.approx([(4 + 10 * 0.4) / 15, (0 + 10 * 0.5) / 15, 0.4], rel=1e-6)
    assert f[0, cols["store_conf_log_ratio"]] == pytest.approx(np.log((8 / 15 + 1e-4) / (0.4 + 1e-4)), rel=1e-5)
    # JAM's share of S1 (4 of 5 baskets) vs overall (4 + 1) / (10 + 1), smoothed with 20 pseudo-baskets
    p = 5 / 11
    assert f[0, cols["store_cand_log_lift"]] == pytest.approx(np.log((4 + 20 * p) / 25 / p), rel=1e-5)
    assert f[:, cols["store_anchor_log_baskets"]] == pytest.approx([np.log1p(5), np.log1p(5), 0.0])
    # without stores the features say "unknown" and the confidence stays global
    g = rk.pair_features(ctx, a, c)
    assert g[:, cols["store_known"]].tolist() == [0.0, 0.0, 0.0]
    assert g[:, cols["store_confidence"]] == pytest.approx([0.4, 0.5, 0.4])


def test_store_count_baseline_reranks_by_the_query_store():
    ctx, idx, _ = store_context()
    i = {p: k for k, p in enumerate(idx)}
    s1, s2 = rk.store_index(ctx, ["S1", "S2"])
    recs = rk.store_count_rank(ctx, np.array([i["BREAD"]] * 3), np.array([s1, s2, -1]), k=2)
    # globally CHEESE (5) beats JAM (4); in S1 JAM comes first, in S2 CHEESE
    assert [[idx[j] for j in r] for r in recs] == [["JAM", "CHEESE"], ["CHEESE", "JAM"], ["CHEESE", "JAM"]]


def test_household_features_have_known_values():
    """Likely-shopper features: P(h | anchor, slot, store) ∝ C[h, a] P(slot | h) P(store | h), shares shrunk with 10 pseudo-baskets."""
    rows = [("b1", "BREAD", "c1", "2024-01-01 09:00", "S1"), ("b1", "JAM", "c1", "2024-01-01 09:00", "S1"),  # c1: Monday mornings, store S1
            ("b2", "JAM", "c1", "2024-01-08 10:00", "S1"),
            ("b3", "BREAD", "c2", "2024-01-06 18:00", "S2"), ("b3", "CHEESE", "c2", "2024-01-06 18:00", "S2"),  # c2: Saturday evening, S2
            ("g1", "BREAD", None, "2024-01-02 12:00", "S1"), ("g1", "YOG", None, "2024-01-02 12:00", "S1")]  # a guest: not a known shopper
    df = pd.DataFrame(rows, columns=["basket_id", "product_id", "customer_id", "time", "store_id"])
    df["time"], df["quantity"], df["price"] = pd.to_datetime(df["time"]), 1.0, 1.0
    df["customer_id"] = df["customer_id"].astype("string")
    L = prepare_lines(df)
    P = prepare_products(PRODUCTS, L)
    idx = pd.Index(np.sort(L["product_id"].unique()))
    ctx = rk.build_context(L, idx, ProductTable.build(P, idx, ProductVocab.fit(P, idx)), P)
    i = {p: k for k, p in enumerate(idx)}
    a = np.array([i["BREAD"], i["BREAD"]])
    c = np.array([i["JAM"], i["CHEESE"]])
    # slot 21 = Monday 9-12 h (2 of c1's 2 baskets, 0 of c2's 1; chain 2/3), slot 47 = Saturday 18-21 h (chain 1/3)
    p21 = {"c1": (2 + 10 * 2 / 3) / 12, "c2": (0 + 10 * 2 / 3) / 11}
    pS2 = {"c1": (0 + 10 * 1 / 3) / 12, "c2": (1 + 10 * 1 / 3) / 11}
    monday = np.array(["2024-01-15 09:30"] * 2, dtype="datetime64[ns]")
    cols = [rk.ANON_FEATURES.index(n) for n in rk.HOUSEHOLD_FEATURES]
    f = rk.pair_features(ctx, a, c, times=monday)[:, cols]
    assert np.array_equal(f, rk.household_features(ctx, a, c, monday))
    w1 = p21["c1"] / (p21["c1"] + p21["c2"])  # C[c1, BREAD] = C[c2, BREAD] = 1
    # JAM is in 2 of c1's 2 baskets, CHEESE in c2's only basket; shares of the shoppers' 3 baskets: 2/3 and 1/3
    rate = np.array([w1, 1 - w1])
    share = np.array([2 / 3, 1 / 3])
    assert f[:, 0] == pytest.approx(np.log(rate + 1e-4), rel=1e-5)
    assert f[:, 1] == pytest.approx(np.log((rate + 1e-4) / (share + 1e-4)), rel=1e-5)
    assert f[:, 2] == pytest.approx(np.log((0.5 + 1e-4) / (share + 1e-4)), rel=1e-5)  # anchor only: both shoppers 1/2
    assert f[:, 3] == pytest.approx(np.log(rate + 1e-4) - np.log(0.5 + 1e-4), rel=1e-5)
    assert f[:, 4] == pytest.approx(np.log(1 / (w1 ** 2 + (1 - w1) ** 2)), rel=1e-5)
    assert f[0, 0] > f[1, 0]  # Monday morning: JAM (c1's) first
    # Monday morning in store S2: the store outweighs the slot, CHEESE (c2's) first
    s2 = rk.store_index(ctx, ["S2", "S2"])
    g = rk.household_features(ctx, a, c, monday, s2)
    w1s = p21["c1"] * pS2["c1"] / (p21["c1"] * pS2["c1"] + p21["c2"] * pS2["c2"])
    assert g[:, 0] == pytest.approx(np.log(np.array([w1s, 1 - w1s]) + 1e-4), rel=1e-5)
    assert g[1, 0] > g[0, 0]
    # no time, no store: the anchor alone; YOG (a guest's only) has no known shopper: all 0
    h = rk.household_features(ctx, np.array([i["BREAD"], i["YOG"]]), np.array([i["JAM"], i["BREAD"]]))
    assert h[0, 0] == pytest.approx(np.log(0.5 + 1e-4), rel=1e-5) and h[0, 3] == 0.0
    assert h[1].tolist() == [0.0] * 5
