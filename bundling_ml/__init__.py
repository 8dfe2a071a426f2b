"""bundling_ml: learn which products sell together and propose bundle offers.

Pure Python + pandas / numpy / scipy. TensorFlow / Keras are imported only
inside the functions that train, save, load or run a model, so importing this
package (or ``bundling_ml.data``, ``stats``, ``evaluation``, ``pricing``...) is
cheap and safe in a web process. This package never imports Django and reads
no Django settings; ``shop_bundles.ml_bridge`` converts querysets to the
DataFrames described in ``docs/contracts.md``.

Modules:
    data         protocol step 1 (cleaning), temporal split, backtest queries,
                 the Complete Journey preset
    stats        co-purchase counts, support / confidence / lift / Jaccard
    features     product vocabularies (with OOV buckets) and pair features
    candidates   candidate companions per anchor
    model        the earlier pointwise Keras pair scorer (kept for reference)
    ranking      context statistics, candidate generation, pair / shopper /
                 promotion features, the listwise Keras ranker, SAR and
                 repeat + count baselines, the substitute rule
    backtest     training of the anonymous and shopper rankers and the
                 protocol tables (anonymous, known shopper, cold start)
    evaluation   HR@K, NDCG@K and the popularity / co-occurrence baselines
    pricing      suggested bundle discount
    artifacts    save / load ``model.keras`` + ``metadata.json``
    pipeline     ``train_model`` and ``score_bundles``
    cli          ``python -m bundling_ml backtest|recommend|score ...``
    limits       largest quantity, price and line amount of an order line
                 (the CSV import and the shop's events endpoint)
    report_text  text of import report notes (the import, the CLI, the admin)
"""

__version__ = "0.1.0"
