"""The credit-risk model's arithmetic: the fast scoring path equals the design matrix's, with and without the
boosted stumps, and equals the booster it was read from; the model survives its JSON form (an older form without
stumps still loads); bands follow their stated bounds, and reasons are the attributes that raised the score."""

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
    assert np.allclose(risk.Logit.from_bytes(m.to_bytes()).probability(cols), m.probability(cols))


@pytest.fixture(scope="module")
def served():
    """The served form, fitted as the service fits it: the calibrated logit, then its boosted stumps."""
    apps, y = risk.german_credit()
    cols = risk.columns(apps)
    logit = risk.fit(cols, y, seed=3, stumps=False)
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
    back = risk.Logit.from_bytes(stumped.to_bytes())
    assert np.allclose(back.score(cols).contributions, stumped.score(cols).contributions)
    assert back.hyper["stumps"] == len(stumped.stumps)
    m = model[0]
    old = json.loads(m.to_bytes())
    old["version"] = 1
    del old["stumps"], old["stump_means"]
    assert np.allclose(risk.Logit.from_bytes(json.dumps(old).encode()).probability(cols), m.probability(cols))


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
