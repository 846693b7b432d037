"""Compiled scorers: TreeScorer against the real ``lightgbm.Booster``, LinearScorer against
statsmodels' GLM.

Raw tree scores are compared for exact equality: the scorer sums the same leaf values in the
same order as LightGBM, so any difference is a wrong leaf. Transformed scores go through
``exp`` from the same C library; they are compared to 1e-12.
"""

from __future__ import annotations

import re
import threading

import lightgbm as lgb
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bta._jit import num_threads
from bta.errors import ConfigError, SchemaError
from bta.scoring import LinearScorer, TreeScorer

KZ = float(np.float32(1e-35))  # LightGBM's kZeroThreshold

# Values that sit on LightGBM's edges: zero and its tiny neighbours, the int32 cast limits of
# categorical features, fractions and negatives of categories, the infinities, NaN.
EDGE_VALUES = np.array([0.0, -0.0, 1e-36, -1e-36, KZ, -KZ, np.nextafter(KZ, 1.0),
                        np.nextafter(-KZ, -1.0), np.nan, np.inf, -np.inf, -0.5, -1.0, -0.99,
                        0.99, 1.5, 2.0, 31.0, 32.0, 33.0, 63.0, 64.0, 1e10, 2.0 ** 31,
                        2.0 ** 31 - 1.0, -2.0 ** 31, -7.0])


def _lgb_train(params, X, y, rounds, categorical=(), **kw):
    base = {"verbose": -1, "num_threads": 1, "deterministic": True, "min_data_in_leaf": 3,
            "min_data_in_bin": 1, "min_data_per_group": 2, "cat_smooth": 1.0,
            "cat_l2": 1.0, "seed": 1}
    ds = lgb.Dataset(X, y, categorical_feature=list(categorical) or "auto",
                     params={"verbose": -1})
    return lgb.train({**base, **params}, ds, num_boost_round=rounds, **kw)


def _inject(rng, X, p_nan=0.1, p_inf=0.03, p_zero=0.1, p_edge=0.05):
    X = X.copy()
    shape = X.shape
    X[rng.random(shape) < p_zero] = 0.0
    X[rng.random(shape) < p_nan] = np.nan
    X[rng.random(shape) < p_inf] = np.inf
    X[rng.random(shape) < p_inf] = -np.inf
    mask = rng.random(shape) < p_edge
    X[mask] = rng.choice(EDGE_VALUES, size=int(mask.sum()))
    return X


def _assert_raw_equal(scorer, booster, X, **kw):
    want = booster.predict(X, raw_score=True, **kw)
    got = scorer.predict(X, raw_score=True, **kw)
    np.testing.assert_array_equal(got, want)
    one = np.array([scorer.predict_one(x, raw_score=True, **kw) for x in X])
    np.testing.assert_array_equal(one.reshape(want.shape), want)
    buf = np.empty(scorer.n_classes)
    filled = np.array([scorer.predict_one(x, raw_score=True, out=buf, **kw).copy() for x in X])
    np.testing.assert_array_equal(filled.reshape(want.shape), want)


# ---------------------------------------------------------------------------- hypothesis

@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2 ** 32 - 1),
       objective=st.sampled_from(["binary", "regression", "multiclass", "poisson"]),
       zero_as_missing=st.booleans(), use_missing=st.booleans(),
       with_categorical=st.booleans(), max_cat_to_onehot=st.sampled_from([1, 4, 32]),
       train_nan=st.booleans())
def test_trees_match_lightgbm(seed, objective, zero_as_missing, use_missing, with_categorical,
                              max_cat_to_onehot, train_nan):
    rng = np.random.default_rng(seed)
    n, d = 120, 4
    X = rng.normal(size=(n, d))
    X[rng.random((n, d)) < 0.2] = 0.0
    if train_nan:
        X[rng.random((n, d)) < 0.15] = np.nan
    cat_cols = ()
    if with_categorical:
        X[:, 3] = rng.integers(0, 12, n)
        if train_nan:
            X[rng.random(n) < 0.1, 3] = np.nan
        cat_cols = (3,)
    signal = np.nan_to_num(X[:, 0]) + (np.nan_to_num(X[:, 3]) % 3 == 1) + 0.5 * rng.normal(size=n)
    params = {"objective": objective, "num_leaves": int(rng.integers(2, 9)),
              "zero_as_missing": zero_as_missing, "use_missing": use_missing,
              "max_cat_to_onehot": max_cat_to_onehot, "learning_rate": 0.3}
    if objective == "binary":
        y = (signal > 0.3).astype(float)
    elif objective == "multiclass":
        y = np.digitize(signal, [0.0, 0.8]).astype(float)
        params["num_class"] = 3
    elif objective == "poisson":
        y = rng.poisson(np.exp(np.clip(signal, -2, 2) / 2)).astype(float)
    else:
        y = signal
    booster = _lgb_train(params, X, y, int(rng.integers(1, 6)), cat_cols)
    scorer = TreeScorer.from_lightgbm(booster)

    Xt = rng.normal(size=(60, d)) * 2
    Xt[:, 3] = rng.integers(-3, 40, 60)  # unseen and negative categories too
    Xt = _inject(rng, Xt)
    _assert_raw_equal(scorer, booster, Xt)
    np.testing.assert_allclose(scorer.predict(Xt), booster.predict(Xt), rtol=1e-12, atol=1e-12)


def test_edge_values_on_every_cell():
    """Every pair of edge values, on a model with categorical splits and NaN/zero handling."""
    rng = np.random.default_rng(7)
    n = 400
    X = rng.normal(size=(n, 3))
    X[:, 2] = rng.integers(0, 40, n)
    X[rng.random((n, 3)) < 0.1] = np.nan
    X[rng.random((n, 3)) < 0.2] = 0.0
    y = (np.nan_to_num(X[:, 0]) + (np.nan_to_num(X[:, 2]) % 4 == 1) > 0.2).astype(float)
    booster = _lgb_train({"objective": "binary", "num_leaves": 16, "max_cat_to_onehot": 2},
                         X, y, 8, categorical=(2,))
    scorer = TreeScorer.from_lightgbm(booster)
    grid = np.array([[a, b, c] for a in EDGE_VALUES for b in EDGE_VALUES[::3]
                     for c in EDGE_VALUES])
    _assert_raw_equal(scorer, booster, grid)


def test_large_batches_use_the_parallel_kernel_with_the_same_sums():
    rng = np.random.default_rng(3)
    X = _inject(rng, rng.normal(size=(400, 6)))
    y = np.nan_to_num(X[:, 0], posinf=3.0, neginf=-3.0) + rng.normal(size=400)
    booster = _lgb_train({"objective": "regression", "num_leaves": 15}, X, y, 20)
    scorer = TreeScorer.from_lightgbm(booster)
    Xt = _inject(rng, rng.normal(size=(5000, 6)))
    want = booster.predict(Xt, raw_score=True)
    with num_threads(2):
        np.testing.assert_array_equal(scorer.predict(Xt, raw_score=True), want)
    with num_threads(1):
        np.testing.assert_array_equal(scorer.predict(Xt, raw_score=True), want)


# ---------------------------------------------------------------------------- hand-made models

def _tree_text(i, feats, thrs, dts, left, right, leaves, cat_bounds=None, cat_words=None):
    nl, ni = len(leaves), len(leaves) - 1

    def j(a):
        return " ".join(repr(float(v)) if isinstance(v, float) else str(v) for v in a)

    lines = [f"Tree={i}", f"num_leaves={nl}",
             f"num_cat={0 if cat_bounds is None else len(cat_bounds) - 1}",
             f"split_feature={j(feats)}", f"split_gain={j([1] * ni)}", f"threshold={j(thrs)}",
             f"decision_type={j(dts)}", f"left_child={j(left)}", f"right_child={j(right)}",
             f"leaf_value={j(leaves)}", f"leaf_weight={j([1] * nl)}",
             f"leaf_count={j([1] * nl)}", f"internal_value={j([0] * ni)}",
             f"internal_weight={j([1] * ni)}", f"internal_count={j([1] * ni)}"]
    if cat_bounds is not None:
        lines += [f"cat_boundaries={j(cat_bounds)}", f"cat_threshold={j(cat_words)}"]
    return "\n".join(lines + ["is_linear=0", "shrinkage=1", "", ""])


def _model_text(trees, n_features=2, objective="regression", extra_header=()):
    head = ["tree", "version=v4", "num_class=1", "num_tree_per_iteration=1", "label_index=0",
            f"max_feature_idx={n_features - 1}", f"objective={objective}", *extra_header,
            "feature_names=" + " ".join(f"f{i}" for i in range(n_features)),
            "feature_infos=" + " ".join("[-1:1]" for _ in range(n_features)), "", ""]
    return ("\n".join(head) + "".join(trees)
            + "end of trees\n\nparameters:\nend of parameters\n\npandas_categorical:null\n")


def test_hand_made_edges_match_lightgbm():
    """Thresholds at +-1e-35, 0 and +-inf with every missing type and default direction,
    categorical bitsets of one and two words (with the NaN missing type), a single-leaf tree;
    scored with and without the categorical trees (the kernels take other paths)."""
    trees = []
    # LightGBM writes threshold inf for "NaN one way, every number the other" splits.
    for t0, t1 in [(KZ, -KZ), (-KZ, KZ), (0.0, -0.0), (2.5, -1e-300), (np.inf, -np.inf),
                   (-np.inf, np.inf)]:
        for dt0 in (0, 2, 4, 6, 8, 10):
            for dt1 in (0, 2, 4, 6, 8, 10):
                trees.append(_tree_text(len(trees), [0, 1], [t0, t1], [dt0, dt1], [1, -1],
                                        [-2, -3], [float(len(trees)), 2.0, 3.0]))
    trees.append(_tree_text(len(trees), [1], [0], [1], [-1], [-2], [10.0, 20.0], [0, 2],
                            [0b1010, 0b1]))
    trees.append(_tree_text(len(trees), [0], [0], [1 + 8], [-1], [-2], [10.0, 20.0], [0, 1],
                            [0b1011]))
    trees.append(_tree_text(len(trees), [], [], [], [], [], [7.0]))
    grid = np.array([[a, b] for a in EDGE_VALUES for b in EDGE_VALUES])
    numerical = [t for t in trees if "num_cat=0" in t]
    for chosen in (trees, numerical):
        text = _model_text([re.sub(r"^Tree=\d+", f"Tree={i}", t) for i, t in enumerate(chosen)])
        _assert_raw_equal(TreeScorer.from_lightgbm(text), lgb.Booster(model_str=text), grid)


def test_single_leaf_models():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(10, 3)), rng.normal(size=10)
    booster = _lgb_train({"objective": "regression", "min_data_in_leaf": 50}, X, y, 3)
    scorer = TreeScorer.from_lightgbm(booster)
    assert scorer.n_trees >= 1
    _assert_raw_equal(scorer, booster, _inject(rng, rng.normal(size=(20, 3))))


# ---------------------------------------------------------------------------- objectives

@pytest.mark.parametrize("params", [
    {"objective": "binary", "sigmoid": 0.7},
    # Printed as 0.123457 in model text, and LightGBM predicts with the printed value.
    {"objective": "binary", "sigmoid": 0.123456789},
    {"objective": "cross_entropy"},
    {"objective": "cross_entropy_lambda"},
    {"objective": "regression"},
    {"objective": "regression", "reg_sqrt": True},
    {"objective": "huber"},
    {"objective": "quantile", "alpha": 0.3},
    {"objective": "poisson"},
    {"objective": "gamma"},
    {"objective": "tweedie"},
    {"objective": "multiclass", "num_class": 3},
    {"objective": "multiclassova", "num_class": 3},
])
def test_objective_transforms_match_lightgbm(params):
    rng = np.random.default_rng(11)
    X = _inject(rng, rng.normal(size=(150, 4)), p_inf=0.0)
    s = np.clip(np.nan_to_num(X[:, 0]) + np.nan_to_num(X[:, 1]), -3, 3)
    name = params["objective"]
    if name in ("binary", "cross_entropy", "cross_entropy_lambda"):
        y = (s + rng.normal(size=150) > 0).astype(float)
    elif name.startswith("multiclass"):
        y = np.digitize(s, [-0.5, 0.5]).astype(float)
    elif name in ("poisson", "gamma", "tweedie"):
        y = rng.poisson(np.exp(s / 3)).astype(float) + (name == "gamma")
    else:
        y = s + rng.normal(size=150)
    booster = _lgb_train({**params, "num_leaves": 6}, X, y, 5)
    scorer = TreeScorer.from_lightgbm(booster)
    Xt = _inject(rng, rng.normal(size=(40, 4)))
    _assert_raw_equal(scorer, booster, Xt)
    want = booster.predict(Xt)
    np.testing.assert_allclose(scorer.predict(Xt), want, rtol=1e-12, atol=1e-12)
    one = np.array([scorer.predict_one(x) for x in Xt]).reshape(want.shape)
    np.testing.assert_allclose(one, want, rtol=1e-12, atol=1e-12)
    assert scorer.objective == name
    assert scorer.n_classes == params.get("num_class", 1)
    if scorer.n_classes == 1:
        assert type(scorer.predict_one(Xt[0])) is float
    else:
        assert scorer.predict_one(Xt[0]).shape == (scorer.n_classes,)


# ---------------------------------------------------------------------------- iterations

def test_num_iteration_and_best_iteration_follow_lightgbm():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(300, 4))
    y = (X[:, 0] + rng.normal(size=300) > 0).astype(float)
    train, valid = lgb.Dataset(X[:200], y[:200]), lgb.Dataset(X[200:], y[200:])
    booster = lgb.train({"objective": "binary", "verbose": -1, "num_leaves": 31,
                         "learning_rate": 0.5, "num_threads": 1}, train, 60,
                        valid_sets=[valid], callbacks=[lgb.early_stopping(3, verbose=False)],
                        keep_training_booster=True)  # else lgb.train drops the later trees
    assert 0 < booster.best_iteration < booster.current_iteration()
    scorer = TreeScorer.from_lightgbm(booster)
    assert scorer.best_iteration == booster.best_iteration
    assert scorer.n_iterations == booster.current_iteration()
    Xt = _inject(rng, rng.normal(size=(30, 4)))
    for num_iteration in (None, 1, 2, 0, -1, 10_000):
        _assert_raw_equal(scorer, booster, Xt, num_iteration=num_iteration)
    # A saved model holds the trees up to the best iteration and nothing else.
    from_text = TreeScorer.from_lightgbm(booster.model_to_string())
    assert from_text.n_iterations == booster.best_iteration and from_text.best_iteration == 0
    np.testing.assert_array_equal(from_text.predict(Xt), booster.predict(Xt))


# ---------------------------------------------------------------------------- bad inputs

def _small_booster(**params):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(80, 3))
    y = X[:, 0] + rng.normal(size=80)
    return _lgb_train({"objective": "regression", "num_leaves": 4, **params}, X, y, 2)


def _bad_inputs():
    scorer = TreeScorer.from_lightgbm(_small_booster())
    text = _small_booster().model_to_string()
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(60, 3)), rng.normal(size=60)
    linear = lgb.train({"objective": "regression", "linear_tree": True, "verbose": -1},
                       lgb.Dataset(X, y), 2).model_to_string()
    rank = lgb.train({"objective": "lambdarank", "verbose": -1, "min_data_in_leaf": 5},
                     lgb.Dataset(X, np.floor(np.abs(y)), group=[30, 30]), 2).model_to_string()
    rf = lgb.train({"objective": "regression", "boosting": "rf", "bagging_fraction": 0.5,
                    "bagging_freq": 1, "verbose": -1}, lgb.Dataset(X, y), 2).model_to_string()
    return [
        (lambda: scorer.predict(np.zeros((2, 4))), SchemaError,
         "X must be a 2-d array with 3 columns (one per model feature), got shape (2, 4)"),
        (lambda: scorer.predict(np.zeros(3)), SchemaError,
         "X must be a 2-d array with 3 columns (one per model feature), got shape (3,)"),
        (lambda: scorer.predict_one(np.zeros(2)), SchemaError,
         "x must have 3 features (one per model feature), got 2"),
        (lambda: scorer.predict_one(np.zeros((1, 3))), SchemaError,
         "x must be a 1-d array of 3 features, got shape (1, 3)"),
        (lambda: scorer.predict_one(np.zeros(3), out=np.zeros(2)), SchemaError,
         "out must be a writable contiguous float64 array of shape (1,), got ndarray "
         "float64 (2,)"),
        (lambda: TreeScorer.from_lightgbm(linear), ConfigError,
         "model: linear trees (linear_tree=True) are not supported, got is_linear=1 in tree 0"),
        (lambda: TreeScorer.from_lightgbm(rank), ConfigError,
         "objective must be one of binary, multiclass, multiclassova, cross_entropy, "
         "cross_entropy_lambda, regression, regression_l1, huber, fair, quantile, mape, "
         "poisson, gamma, tweedie, got 'lambdarank'"),
        (lambda: TreeScorer.from_lightgbm(rf), ConfigError,
         "model: random forest models (average_output) are not supported"),
        (lambda: TreeScorer.from_lightgbm(text.replace("objective=regression\n", "")),
         ConfigError, "objective must be given in the model (a model trained with a custom "
                      "objective has none), got no objective line"),
        (lambda: TreeScorer.from_lightgbm(text, feature_names=["Column_0", "age", "x"]),
         SchemaError, "feature_names[1] must be 'Column_1' (the model's feature 1), got 'age'"),
        (lambda: TreeScorer.from_lightgbm(text, feature_names=["Column_0"]), SchemaError,
         "feature_names must have 3 names (the model's features), got 1"),
        (lambda: TreeScorer.from_lightgbm(text.replace("shrinkage=", "new_field=1\nshrinkage=")),
         ConfigError, "model: tree 0 has field 'new_field', which TreeScorer does not know; "
                      "refusing rather than scoring it wrongly"),
        (lambda: TreeScorer.from_lightgbm(text.split("end of trees")[0]), ConfigError,
         "model must end its trees with 'end of trees', got a truncated model"),
        (lambda: TreeScorer.from_lightgbm(text.replace("version=v4", "version=v9")),
         ConfigError, "version must be 'v3' or 'v4' (LightGBM 3 or 4 model text), got 'v9'"),
        (lambda: TreeScorer.from_lightgbm(3), ConfigError,
         "model must be a LightGBM Booster, model string or model file, got int"),
        (lambda: TreeScorer.from_lightgbm("/nonexistent/model.txt"), ConfigError,
         "model must be a LightGBM Booster, model string or model file, got a path that is "
         "not a file: '/nonexistent/model.txt'"),
    ]


def test_bad_inputs_give_exact_messages():
    for call, cls, message in _bad_inputs():
        with pytest.raises(cls, match="^" + re.escape(message) + "$"):
            call()


def test_dataframe_columns_are_checked():
    pd = pytest.importorskip("pandas")
    scorer = TreeScorer.from_lightgbm(_small_booster())
    good = pd.DataFrame(np.zeros((2, 3)), columns=["Column_0", "Column_1", "Column_2"])
    np.testing.assert_array_equal(scorer.predict(good), scorer.predict(good.to_numpy()))
    with pytest.raises(SchemaError, match=re.escape(
            "X.columns[0] must be 'Column_0' (the model's feature 0), got 'Column_1'")):
        scorer.predict(good[["Column_1", "Column_0", "Column_2"]])


def test_corrupt_arrays_are_refused():
    d = TreeScorer.from_lightgbm(_small_booster(), warmup=False).to_dict()
    arrays = d["arrays"]
    bad_child = dict(arrays, left_child=np.where(arrays["left_child"] >= 0, 0,
                                                 arrays["left_child"]))
    with pytest.raises(ConfigError, match="children after their parent|exactly one parent"):
        TreeScorer.from_dict({**d, "arrays": bad_child}, warmup=False)
    bad_feature = dict(arrays, split_feature=arrays["split_feature"] + 3)
    with pytest.raises(ConfigError, match=re.escape("split_feature must lie in [0, 3)")):
        TreeScorer.from_dict({**d, "arrays": bad_feature}, warmup=False)
    with pytest.raises(ConfigError, match=re.escape("data must be a bta.TreeScorer")):
        TreeScorer.from_dict({**d, "format_version": 99})


# ---------------------------------------------------------------------------- persistence

def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(9)
    X = rng.normal(size=(200, 4))
    X[:, 3] = rng.integers(0, 10, 200)
    y = np.digitize(X[:, 0] + (X[:, 3] % 2), [-0.5, 0.5]).astype(float)
    booster = _lgb_train({"objective": "multiclass", "num_class": 3, "num_leaves": 8,
                          "max_cat_to_onehot": 2}, X, y, 4, categorical=(3,))
    scorer = TreeScorer.from_lightgbm(booster)
    path = tmp_path / "model.npz"
    scorer.save(path)
    loaded = TreeScorer.load(path)
    Xt = _inject(rng, rng.normal(size=(50, 4)))
    np.testing.assert_array_equal(loaded.predict(Xt), scorer.predict(Xt))
    assert (loaded.n_features, loaded.n_classes, loaded.n_trees, loaded.objective,
            loaded.feature_names) == (4, 3, 12, "multiclass", scorer.feature_names)
    again = TreeScorer.from_dict(scorer.to_dict())
    np.testing.assert_array_equal(again.predict(Xt, raw_score=True),
                                  booster.predict(Xt, raw_score=True))
    model_file = tmp_path / "model.txt"
    booster.save_model(str(model_file))
    np.testing.assert_array_equal(TreeScorer.from_lightgbm(model_file).predict(Xt),
                                  scorer.predict(Xt))


def test_predict_one_out_is_filled_in_place():
    scorer = TreeScorer.from_lightgbm(_small_booster())
    x = np.array([0.3, np.nan, -1.0])
    out = np.full(1, 99.0)
    assert scorer.predict_one(x, out=out) is out
    assert out[0] == scorer.predict(x[None, :])[0]
    ro = x.copy()
    ro.flags.writeable = False  # a read-only row is scored as is
    assert type(scorer.predict_one(ro)) is float and scorer.predict_one(ro) == out[0]
    assert scorer.predict_one([0.3, np.nan, -1.0]) == out[0]


def test_threads_give_the_same_scores():
    rng = np.random.default_rng(4)
    X = _inject(rng, rng.normal(size=(300, 5)))
    y = (np.nan_to_num(X[:, 0]) > 0).astype(float)
    scorer = TreeScorer.from_lightgbm(_lgb_train({"objective": "binary", "num_leaves": 15},
                                                 X, y, 20))
    Xt = _inject(rng, rng.normal(size=(400, 5)))
    want = scorer.predict(Xt)
    results: dict[int, np.ndarray] = {}

    def work(k):
        out = np.empty(1)
        rows = np.array([scorer.predict_one(x, out=out)[0] for x in Xt])
        assert rows.tolist() == [scorer.predict_one(x) for x in Xt]
        results[k] = np.concatenate([rows, scorer.predict(Xt)])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(4):
        np.testing.assert_array_equal(results[k], np.concatenate([want, want]))


# ---------------------------------------------------------------------------- linear

@pytest.mark.parametrize("family, link", [("Binomial", "logistic"), ("Poisson", "poisson"),
                                          ("Gaussian", "identity")])
def test_linear_matches_statsmodels_glm(family, link):
    sm = pytest.importorskip("statsmodels.api")
    rng = np.random.default_rng(1)
    X = rng.normal(size=(400, 5))
    eta = X @ np.array([0.5, -0.3, 0.2, 0.0, 0.8]) - 0.2
    if family == "Binomial":
        y = (rng.random(400) < 1 / (1 + np.exp(-eta))).astype(float)
    elif family == "Poisson":
        y = rng.poisson(np.exp(eta)).astype(float)
    else:
        y = eta + rng.normal(size=400)
    res = sm.GLM(y, sm.add_constant(X), family=getattr(sm.families, family)()).fit()
    scorer = LinearScorer(res.params[1:], res.params[0], link=link)
    Xt = rng.normal(size=(50, 5))
    want = res.predict(sm.add_constant(Xt))
    np.testing.assert_allclose(scorer.predict(Xt), want, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(scorer.predict(sp.csr_matrix(Xt)), want, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose([scorer.predict_one(x) for x in Xt], want, rtol=1e-12)
    nz = [np.flatnonzero(x) for x in Xt]
    np.testing.assert_allclose([scorer.predict_sparse_row(i, x[i]) for i, x in zip(nz, Xt)],
                               want, rtol=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 7), st.floats(-5, 5)), max_size=12),
       st.sampled_from(["logistic", "poisson", "identity"]), st.randoms(use_true_random=False))
def test_sparse_row_equals_dense_any_order(entries, link, rnd):
    scorer = LinearScorer(np.linspace(-1, 1, 8), 0.1, link=link)
    dense = np.zeros(8)
    for j, v in entries:
        dense[j] += v  # repeated indices add up
    shuffled = list(entries)
    rnd.shuffle(shuffled)
    idx = np.array([j for j, _ in shuffled], dtype=np.int32)
    vals = np.array([v for _, v in shuffled])
    np.testing.assert_allclose(scorer.predict_sparse_row(idx, vals), scorer.predict_one(dense),
                               rtol=1e-12, atol=1e-12)


def test_linear_bad_inputs_give_exact_messages():
    s = LinearScorer([1.0, 2.0, 3.0], link="identity")
    cases = [
        (lambda: s.predict(np.zeros((2, 4))), SchemaError,
         "X must be a 2-d array with 3 columns (one per coefficient), got shape (2, 4)"),
        (lambda: s.predict(sp.csr_matrix(np.zeros((2, 2)))), SchemaError,
         "X must have 3 columns (one per coefficient), got shape (2, 2)"),
        (lambda: s.predict_one(np.zeros(2)), SchemaError,
         "x must have 3 features (one per coefficient), got 2"),
        (lambda: s.predict_sparse_row([0, 3], [1.0, 1.0]), SchemaError,
         "indices must lie in [0, 3), got 3 at position 1"),
        (lambda: s.predict_sparse_row([0, 1], [1.0]), SchemaError,
         "values must have as many entries as indices (2), got 1"),
        (lambda: LinearScorer([1.0], link="probit"), ConfigError,
         "link must be one of ('logistic', 'poisson', 'identity'), got 'probit'"),
        (lambda: LinearScorer([1.0, np.nan]), ConfigError,
         "coef must be finite numbers, got nan at index 1"),
        (lambda: LinearScorer([[1.0]]), ConfigError,
         "coef must be a non-empty 1-d array (one coefficient per feature), got (1, 1)"),
        (lambda: LinearScorer([1.0], intercept=np.inf), ConfigError,
         "intercept must be a finite number, got inf"),
        (lambda: LinearScorer([1.0, 2.0], feature_names=["a"]), ConfigError,
         "feature_names must have 2 names (one per coefficient), got 1"),
    ]
    for call, cls, message in cases:
        with pytest.raises(cls, match="^" + re.escape(message) + "$"):
            call()
