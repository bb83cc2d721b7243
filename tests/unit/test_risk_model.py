"""The credit-risk model's arithmetic: the fast scoring path equals the design matrix's, with and without the
boosted stumps, and equals the booster it was read from; the served blend's compiled forest equals the
scikit-learn forest it was read from, and its score is exactly a baseline plus one contribution per attribute;
every model survives its JSON form (an older form without stumps still loads); bands follow their stated bounds,
and reasons are the attributes that raised the score."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nexus_ray.compute import risk


@pytest.fixture(scope="module")
def model():
    from sklearn.linear_model import LogisticRegression

    apps, y = risk.german_credit()
    cols = risk.columns(apps)
    design = risk.Design.fit(cols)
    x = design.transform(cols)
    lr = LogisticRegression(C=0.1, max_iter=2000).fit(x, y)
    return risk.Logit(design, lr.coef_[0], float(lr.intercept_[0]), x.mean(axis=0)), cols, lr, x


def test_the_fast_path_is_the_design_matrix_times_the_coefficients(model):
    m, cols, lr, x = model
    logit, contrib = m._parts(cols)
    logit2, contrib2 = m.contributions_by_design(cols)
    assert np.allclose(logit, logit2) and np.allclose(contrib, contrib2)
    assert np.allclose(m.probability(cols), lr.predict_proba(x)[:, 1])
    assert np.allclose(risk.load(m.to_bytes()).probability(cols), m.probability(cols))


@pytest.fixture(scope="module")
def served():
    """The served form, fitted as the service fits it: the calibrated logit, then its boosted stumps."""
    apps, y = risk.german_credit()
    cols = risk.columns(apps)
    logit = risk.fit_logit(cols, y, seed=3, stumps=False)
    return logit, risk.with_stumps(logit, cols, y, seed=3), cols, y


def test_the_stumps_are_the_booster_they_were_read_from(served):
    logit, model, cols, y = served
    x = logit.design.transform(cols)
    booster = risk.stump_booster(logit, 3).fit(x, y)
    assert len(model.stumps) == booster.n_estimators_ > 0
    # the booster's trees compare float32 copies of the columns: equal up to that rounding
    assert np.allclose(model.contributions_by_design(cols)[0], booster.decision_function(x), atol=1e-5)
    assert np.allclose(model.probability(cols), booster.predict_proba(x)[:, 1], atol=1e-6)


def test_with_stumps_the_fast_path_still_equals_the_design_path_and_sums_to_the_score(served):
    logit, model, cols, _ = served
    fast, contrib = model._parts(cols)
    slow, contrib2 = model.contributions_by_design(cols)
    assert np.allclose(fast, slow) and np.allclose(contrib, contrib2)
    # the stumps moved every attribute they split on, and only those
    moved = np.abs(contrib - logit._parts(cols)[1]).max(axis=0) > 1e-12
    split_on = {model.design.groups[int(j)] for j in model.stumps[:, 0]}
    assert {risk.ATTRIBUTES[a] for a in np.flatnonzero(moved)} == split_on
    # reasons stay exact: the contributions average zero over the training rows (the baseline applicant)
    assert np.allclose(contrib.mean(axis=0), 0.0, atol=1e-9)


def test_the_stumps_survive_the_json_form_and_an_older_model_loads_without_them(served, model):
    _, stumped, cols, _ = served
    back = risk.load(stumped.to_bytes())
    assert np.allclose(back.score(cols).contributions, stumped.score(cols).contributions)
    assert back.hyper["stumps"] == len(stumped.stumps)
    m = model[0]
    old = json.loads(m.to_bytes())
    old["version"] = 1
    del old["stumps"], old["stump_means"]
    assert np.allclose(risk.load(json.dumps(old).encode()).probability(cols), m.probability(cols))


def test_bands_follow_the_stated_bounds():
    p = np.array([0.0, 0.0999, 0.10, 1 / 6 - 1e-9, 1 / 6, 0.2999, 0.30, 0.4999, 0.50, 1.0])
    names = [risk.BAND_NAMES[b] for b in risk.band_of(p)]
    assert names == ["low", "low", "moderate", "moderate", "elevated", "elevated", "high", "high", "very_high",
                     "very_high"]


def test_reasons_are_the_largest_positive_contributions_in_order(model):
    m, cols, _, _ = model
    s = m.score(cols, top=4)
    order = np.argsort(-s.contributions, axis=1)[:, :4]
    assert (s.reason_attributes == order).all()
    chosen = np.take_along_axis(s.contributions, order, axis=1)
    assert ((s.reasons == risk.NO_REASON) == (chosen <= 1e-9)).all()
    row = int(np.argmax(s.contributions[:, risk.ATTRIBUTES.index("checking_account")]))
    assert "checking account" in s.reason_texts(row)[0].lower()


@pytest.fixture(scope="module")
def blend(served):
    """The served model as :func:`risk.fit` makes it, beside the scikit-learn forest its forest was read from."""
    _, stumped, cols, y = served
    x = stumped.design.transform(cols)
    rf = risk.forest_model(3).fit(x, y)
    return risk.Blend(stumped, risk.Forest.from_sklearn(rf, stumped.design.groups)), rf, cols, x


def test_the_compiled_forest_is_the_scikit_learn_forest_it_was_read_from(blend):
    model, rf, _, x = blend
    p, contrib = model.forest.parts(x)
    assert np.allclose(p, rf.predict_proba(x)[:, 1], rtol=0, atol=1e-12)
    # on applications it never saw, too (the synthetic ones spread the numbers past the training rows)
    other = risk.synthetic(3000, seed=5)
    xo = model.design.transform(other)
    assert np.allclose(model.forest.parts(xo)[0], rf.predict_proba(xo)[:, 1], rtol=0, atol=1e-12)
    # exactly the roots' mean plus one term per attribute, and only attributes the forest split on move
    assert np.allclose(p, model.forest.baseline() + contrib.sum(axis=1), rtol=0, atol=1e-12)
    split_on = {model.design.groups[j] for tree in rf.estimators_ for j in tree.tree_.feature if j >= 0}
    moved = {risk.ATTRIBUTES[a] for a in np.flatnonzero(np.abs(contrib).max(axis=0) > 0)}
    assert moved <= split_on and len(moved) > 0


def test_the_blend_is_the_mean_of_its_halves_and_its_reasons_sum_to_its_score(blend, served):
    model, rf, cols, x = blend
    s = model.score(cols)
    halves = (model.logit.probability(cols) + rf.predict_proba(x)[:, 1]) / 2
    assert np.allclose(s.probability, halves, rtol=0, atol=1e-12)
    assert np.allclose(s.probability, model.baseline() + s.contributions.sum(axis=1), rtol=0, atol=1e-12)
    # the logit's half keeps the signs and the order of its own contributions within each row
    logit_half = s.contributions - model.forest.parts(x)[1] / 2
    by_logit = model.logit._parts(cols)[1]
    assert (np.sign(logit_half) == np.sign(by_logit)).all()
    assert (np.argsort(logit_half, axis=1, kind="stable") == np.argsort(by_logit, axis=1, kind="stable")).all()
    order = np.argsort(-s.contributions, axis=1)[:, :4]
    assert (s.reason_attributes == order).all()


def test_the_blend_survives_its_json_form_and_an_unknown_family_is_refused(blend):
    model, _, cols, _ = blend
    back = risk.load(model.to_bytes())
    assert isinstance(back, risk.Blend) and back.family == "logit_forest_blend"
    assert np.array_equal(back.score(cols).contributions, model.score(cols).contributions)
    assert np.array_equal(back.score(cols).reasons, model.score(cols).reasons)
    with pytest.raises(ValueError, match="unknown model family"):
        risk.load(json.dumps({"family": "pickle", "version": 1}).encode())


def test_the_calibrated_blend_maps_the_mean_and_its_reasons_still_sum_to_its_score(blend):
    import dataclasses

    model, _, cols, _ = blend
    raw = model.score(cols)
    calibrated = dataclasses.replace(model, calibration=(1.3, -0.2))
    s = calibrated.score(cols)
    mean = raw.probability
    assert np.allclose(s.probability, 1 / (1 + np.exp(-(1.3 * np.log(mean / (1 - mean)) - 0.2))), rtol=0, atol=1e-12)
    assert np.allclose(s.probability, calibrated.baseline() + s.contributions.sum(axis=1), rtol=0, atol=1e-12)
    # one positive factor per row: the same signs, the same order, the same reasons
    assert (np.sign(s.contributions) == np.sign(raw.contributions)).all()
    assert (s.reason_attributes == raw.reason_attributes).all()
    back = risk.load(calibrated.to_bytes())
    assert back.calibration == (1.3, -0.2) and np.array_equal(back.probability(cols), s.probability)
