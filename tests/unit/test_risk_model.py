"""The credit-risk model's arithmetic: the fast scoring path equals the design matrix's, the model survives
its JSON form, bands follow their stated bounds, and reasons are the attributes that raised the score."""

from __future__ import annotations

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
