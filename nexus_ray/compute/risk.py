"""Credit risk for risk-assessment: the German credit attributes, a calibrated logit and a forest, reasons in words.

**Applications** are dicts with the readable keys of :data:`CATEGORIES` and :data:`NUMBERS`
(the Statlog German credit attributes, UCI, with the A-codes of ``german.doc`` turned into
words). Two attributes of the data set are not used at all: personal status *and sex* and
*foreign worker* (sex, marital status and national origin may not be grounds of a credit
decision: US ECOA/Regulation B, EU anti-discrimination law); an application does not carry them.

**The served model** (:class:`Blend`, :func:`fit`) is the mean of two probabilities, a calibrated
logit with boosted stumps (:class:`Logit`) and a random forest (:class:`Forest`) on the logit's
design columns, through a Platt map fitted on inner out-of-fold means (nested CV in bench/RESULTS.md:
AUC 0.8015, Brier 0.1582; the logit with its stumps alone 0.7929 / 0.1622).

**The logit** is a logistic regression over a design matrix built here with numpy
(:class:`Design`): one indicator column per category of each categorical attribute, and for
the numbers the value, its logarithm where it is skewed (amount, duration, age) and the monthly
amount (amount / duration). Numeric columns are standardised with the means and deviations of
the training rows only. The L2 strength is chosen by an inner cross-validation on the training
rows, then a Platt (sigmoid) calibration fitted on out-of-fold predictions of those rows maps
the score to a probability of default; Platt's map is affine on the logit, so it folds into the
coefficients and the whole model stays one dot product. Then **boosted stumps** start from that
calibrated margin (:func:`with_stumps`): gradient boosting of depth-1 trees, each a step on one
design column, so on one attribute, their number chosen on a 20 % hold-out of the training rows.
They bend the numbers' curves and adjust categories where the straight logit is off; the logit
stays *additive per attribute*.

**The forest** (200 trees of depth at most 8, fitted by scikit-learn) catches what no additive
model can: interactions of several attributes. It is stored as its node arrays and walked by one
compiled loop (:mod:`nexus_ray.compute.forest_walk`); each leaf's value is its root's plus the
change at each split on its path, so the forest too is ``baseline + one term per attribute``
(each change given to the attribute split on), tabled once per leaf.

**Reasons** (adverse-action style): the logit is exactly ``baseline + sum of contributions``,
the contribution of an attribute being ``sum_j coef_j * (x_j - mean_j)`` over its design
columns, with ``mean_j`` the training population's mean (the baseline applicant), plus each of
its stumps' value less that stump's mean over the training rows. The blend carries the logit's
terms into probability by one positive factor per row (:class:`Blend`) and adds the forest's, so a
served score is exactly the baseline probability plus one contribution per attribute. The
attributes with the largest positive contributions are the ones that pushed this score up most;
each is said in words (:data:`PHRASES`) chosen by the applicant's own value (a category's own
sentence, or "high"/"low" for a number on the side of the population's mean it lies). Attributes
that lowered the risk are never given as reasons.

Everything scores columns (numpy arrays, and the forest's compiled walk), so a batch of a million
applications takes seconds; an application dict is a batch of one. No Ray here (nexus_ray.compute).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np

# -- the attributes --------------------------------------------------------------------------------

#: Categorical attributes: readable value for each A-code of german.doc, in the data's order.
CATEGORIES: dict[str, dict[str, str]] = {
    "checking_account": {"A11": "negative", "A12": "under_200", "A13": "200_or_more", "A14": "none"},
    "credit_history": {"A30": "no_credits_or_all_paid", "A31": "all_paid_at_this_bank",
                       "A32": "existing_paid_duly", "A33": "past_delays", "A34": "critical_account"},
    "purpose": {"A40": "new_car", "A41": "used_car", "A42": "furniture_equipment", "A43": "radio_tv",
                "A44": "domestic_appliances", "A45": "repairs", "A46": "education", "A47": "vacation",
                "A48": "retraining", "A49": "business", "A410": "other"},
    "savings": {"A61": "under_100", "A62": "100_to_500", "A63": "500_to_1000", "A64": "1000_or_more",
                "A65": "unknown_or_none"},
    "employment_since": {"A71": "unemployed", "A72": "under_1_year", "A73": "1_to_4_years",
                         "A74": "4_to_7_years", "A75": "7_years_or_more"},
    "other_debtors": {"A101": "none", "A102": "co_applicant", "A103": "guarantor"},
    "property": {"A121": "real_estate", "A122": "savings_agreement_or_life_insurance", "A123": "car_or_other",
                 "A124": "unknown_or_none"},
    "other_installment_plans": {"A141": "bank", "A142": "stores", "A143": "none"},
    "housing": {"A151": "rent", "A152": "own", "A153": "for_free"},
    "job": {"A171": "unemployed_or_unskilled_non_resident", "A172": "unskilled_resident", "A173": "skilled",
            "A174": "management_or_self_employed"},
    "telephone": {"A191": "none", "A192": "registered"},
}

#: Numeric attributes: (lowest, highest) accepted. The data's ranges sit well inside them.
NUMBERS: dict[str, tuple[int, int]] = {
    "duration_months": (1, 120),
    "credit_amount": (1, 1_000_000),
    "installment_rate": (1, 4),
    "residence_since": (1, 4),
    "age": (18, 120),
    "existing_credits": (1, 10),
    "dependents": (1, 10),
}

#: german.data's columns (0-based) of each attribute used; 8 (personal status and sex) and 19
#: (foreign worker) are left out on purpose (module docstring), 20 is the class.
_COLUMNS = {"checking_account": 0, "duration_months": 1, "credit_history": 2, "purpose": 3, "credit_amount": 4,
            "savings": 5, "employment_since": 6, "installment_rate": 7, "other_debtors": 9,
            "residence_since": 10, "property": 11, "age": 12, "other_installment_plans": 13, "housing": 14,
            "existing_credits": 15, "job": 16, "dependents": 17, "telephone": 18}
ATTRIBUTES: tuple[str, ...] = tuple(_COLUMNS)
VALUES: dict[str, tuple[str, ...]] = {k: tuple(v.values()) for k, v in CATEGORIES.items()}

#: What each attribute's value says when it raised the risk: per category for a categorical attribute
#: (only the categories that can raise it are worded specifically), ``high``/``low`` for a number.
PHRASES: dict[str, dict[str, str]] = {
    "checking_account": {"negative": "Your checking account balance is below zero",
                         "under_200": "Your checking account balance is low (under 200 DM)",
                         "200_or_more": "Your checking account status",
                         "none": "You have no checking account with us"},
    "credit_history": {"no_credits_or_all_paid": "You have little or no credit history",
                       "all_paid_at_this_bank": "Your credit history with this bank is short",
                       "existing_paid_duly": "You have other credits still being repaid",
                       "past_delays": "You have been late with payments in the past",
                       "critical_account": "You have a critical account or credits at other banks"},
    "purpose": {"*": "The purpose of the loan ({value})"},
    "savings": {"under_100": "Your savings are low (under 100 DM)",
                "100_to_500": "Your savings are limited (100 to 500 DM)",
                "500_to_1000": "Your savings (500 to 1,000 DM)",
                "1000_or_more": "Your savings",
                "unknown_or_none": "We have no record of savings"},
    "employment_since": {"unemployed": "You are not employed",
                         "under_1_year": "You have been in your job for less than a year",
                         "1_to_4_years": "You have been in your job for less than four years",
                         "4_to_7_years": "Your length of employment",
                         "7_years_or_more": "Your length of employment"},
    "other_debtors": {"none": "There is no co-applicant or guarantor",
                      "co_applicant": "The co-applicant arrangement",
                      "guarantor": "The guarantor arrangement"},
    "property": {"real_estate": "Your property", "savings_agreement_or_life_insurance": "Your property",
                 "car_or_other": "You own no real estate or life insurance",
                 "unknown_or_none": "You have no property we know of"},
    "other_installment_plans": {"bank": "You have installment plans with other banks",
                                "stores": "You have installment plans with stores",
                                "none": "Your other installment plans"},
    "housing": {"rent": "You rent your home", "own": "Your housing", "for_free": "You live rent-free, not owning"},
    "job": {"unemployed_or_unskilled_non_resident": "Your job is unskilled or you are not resident",
            "unskilled_resident": "Your job is unskilled", "skilled": "Your type of job",
            "management_or_self_employed": "You are self-employed or in management"},
    "telephone": {"none": "There is no telephone registered in your name", "registered": "Your telephone"},
    "duration_months": {"high": "The loan is for a long time", "low": "The loan is for a short time"},
    "credit_amount": {"high": "The amount asked for is high", "low": "The amount asked for is low"},
    "installment_rate": {"high": "The installment is a large share of your disposable income",
                         "low": "The installment is a small share of your disposable income"},
    "residence_since": {"high": "Your time at your present address", "low": "You have lived at your address "
                        "for a short time"},
    "age": {"high": "Your age", "low": "Your age (younger applicants repay less often)"},
    "existing_credits": {"high": "You have several credits with this bank already",
                         "low": "You have few credits with this bank"},
    "dependents": {"high": "Several people depend on you", "low": "The number of people depending on you"},
}

#: Risk bands by calibrated probability of default: (upper bound, exclusive; name). The data's
#: base rate is 0.30; the first bound, 1/6, is where the data's own cost matrix (a missed bad
#: loan costs 5, a refused good one 1) would stop lending.
BANDS: tuple[tuple[float, str], ...] = ((0.10, "low"), (1 / 6, "moderate"), (0.30, "elevated"), (0.50, "high"),
                                        (1.01, "very_high"))
BAND_NAMES: tuple[str, ...] = tuple(name for _, name in BANDS)


def band_of(probability: np.ndarray) -> np.ndarray:
    """Index into :data:`BAND_NAMES` of each probability."""
    return np.searchsorted(np.array([b for b, _ in BANDS[:-1]]), probability, side="right")


# -- data ------------------------------------------------------------------------------------------


def german_credit() -> tuple[list[dict[str, Any]], np.ndarray]:
    """The 1,000 applications of german.data (shipped in nexus_ray/data/credit) and their class (1 = bad)."""
    text = (resources.files("nexus_ray") / "data" / "credit" / "german.data").read_text()
    apps: list[dict[str, Any]] = []
    bad: list[int] = []
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        app: dict[str, Any] = {}
        for name, col in _COLUMNS.items():
            raw = parts[col]
            app[name] = CATEGORIES[name][raw] if name in CATEGORIES else int(raw)
        apps.append(app)
        bad.append(1 if parts[20] == "2" else 0)
    return apps, np.array(bad, dtype=np.int8)


def columns(apps: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Applications as columns: category indexes (into :data:`VALUES`) and numbers (float64)."""
    out: dict[str, np.ndarray] = {}
    for name in ATTRIBUTES:
        if name in CATEGORIES:
            index = {v: i for i, v in enumerate(VALUES[name])}
            out[name] = np.fromiter((index[a[name]] for a in apps), dtype=np.int16, count=len(apps))
        else:
            out[name] = np.fromiter((a[name] for a in apps), dtype=np.float64, count=len(apps))
    return out


def take(cols: Mapping[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[rows] for k, v in cols.items()}


def data_hash(cols: Mapping[str, np.ndarray], y: np.ndarray) -> str:
    """SHA-256 of the training rows (columns in attribute order, then the class): what a model was fitted on."""
    h = hashlib.sha256()
    for name in ATTRIBUTES:
        h.update(name.encode())
        h.update(np.ascontiguousarray(cols[name]).tobytes())
    h.update(np.ascontiguousarray(y, dtype=np.int8).tobytes())
    return h.hexdigest()


def synthetic(n: int, *, seed: int) -> dict[str, np.ndarray]:
    """``n`` applications drawn from the data's distribution (seeded): each attribute from its marginal,
    conditioned on the checking account and credit history of a resampled real row, so the strongest
    attributes keep their joint shape; numbers jittered within their accepted range."""
    rng = np.random.default_rng(seed)
    apps, _ = german_credit()
    real = columns(apps)
    base = rng.integers(0, len(apps), size=n)
    out: dict[str, np.ndarray] = {}
    for name in ATTRIBUTES:
        if name in ("checking_account", "credit_history", "duration_months", "credit_amount"):
            src = base  # the joint of the strongest attributes, as in the data
        else:
            src = rng.integers(0, len(apps), size=n)
        v = real[name][src]
        if name in NUMBERS:
            lo, hi = NUMBERS[name]
            if name in ("duration_months", "credit_amount", "age"):
                v = np.rint(v * rng.uniform(0.9, 1.1, size=n))
            v = np.clip(v, lo, hi)
        out[name] = v
    return out


# -- the design matrix -----------------------------------------------------------------------------

def _log(name: str) -> Callable[[Mapping[str, np.ndarray]], np.ndarray]:
    return lambda c: np.log(c[name].astype(np.float64))


def _value(name: str) -> Callable[[Mapping[str, np.ndarray]], np.ndarray]:
    return lambda c: c[name].astype(np.float64)


#: The numeric design columns: (name, the attribute it belongs to, how it is computed from the columns).
#: The monthly amount belongs to credit_amount: the amount is what an applicant can change, and the
#: duration has its own columns.
NUMERIC_FEATURES: list[tuple[str, str, Callable[[Mapping[str, np.ndarray]], np.ndarray]]] = [
    (f, name, fn) for name in NUMBERS for f, fn in (
        ((name, _value(name)), (f"log({name})", _log(name))) if name in ("duration_months", "credit_amount", "age")
        else ((name, _value(name)),))
] + [("log(monthly_amount)", "credit_amount",
      lambda c: np.log(c["credit_amount"].astype(np.float64) / c["duration_months"]))]


def _raw_design(cols: Mapping[str, np.ndarray]) -> tuple[np.ndarray, list[str], list[str]]:
    """Unstandardised design columns, their names and the attribute each belongs to."""
    n = len(next(iter(cols.values())))
    parts: list[np.ndarray] = []
    names: list[str] = []
    groups: list[str] = []
    for name in CATEGORIES:
        k = len(VALUES[name])
        onehot = np.zeros((n, k))
        onehot[np.arange(n), cols[name].astype(np.intp)] = 1.0
        parts.append(onehot)
        names += [f"{name}={v}" for v in VALUES[name]]
        groups += [name] * k
    for f, group, fn in NUMERIC_FEATURES:
        parts.append(fn(cols)[:, None])
        names.append(f)
        groups.append(group)
    return np.hstack(parts), names, groups


@dataclass
class Design:
    """The design matrix's standardisation, fitted on training rows only."""

    names: list[str]
    groups: list[str]
    center: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, cols: Mapping[str, np.ndarray]) -> Design:
        raw, names, groups = _raw_design(cols)
        numeric = np.array(["=" not in n for n in names])
        center = np.where(numeric, raw.mean(axis=0), 0.0)
        scale = np.where(numeric, raw.std(axis=0), 1.0)
        scale[scale == 0] = 1.0
        return cls(names, groups, center, scale)

    def transform(self, cols: Mapping[str, np.ndarray]) -> np.ndarray:
        raw, _, _ = _raw_design(cols)
        return (raw - self.center) / self.scale


# -- the model -------------------------------------------------------------------------------------


@dataclass
class Logit:
    """A fitted, calibrated logit in closed form: ``p = sigmoid(intercept + X @ coef)`` on :class:`Design`'s X."""

    design: Design
    coef: np.ndarray
    intercept: float
    mean: np.ndarray  # the training population's mean design row: the baseline of the reasons
    hyper: dict[str, float] = field(default_factory=dict)
    #: Boosted stumps on the margin, one row each: design column, threshold (on the standardised
    #: column: at or below it the left value, above it the right value), left value, right value.
    stumps: np.ndarray = field(default_factory=lambda: np.empty((0, 4)))
    stump_means: np.ndarray = field(default_factory=lambda: np.empty(0))  # each stump's mean over training rows
    _fast: Any = field(default=None, repr=False, compare=False)

    # -- scoring
    def _parts(self, cols: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(logit, per-attribute contributions) without building the design matrix.

        A category's contribution is one number per category (a table lookup, its stumps folded in);
        a number's is a weighted sum of its few features plus, per feature with stumps, one step
        function (a sorted search). Equal to :meth:`contributions_by_design` (tested).
        """
        tables, numeric, baseline = self._compiled()
        n = len(cols[ATTRIBUTES[0]])
        contributions = np.empty((n, len(ATTRIBUTES)))
        for a, name in enumerate(ATTRIBUTES):
            if name in tables:
                contributions[:, a] = tables[name][cols[name].astype(np.intp)]
            else:
                terms, const = numeric[name]
                acc = np.full(n, -const)
                for fn, w, cuts, steps in terms:
                    value = fn(cols)
                    acc += w * value
                    if cuts.size:
                        acc += steps[np.searchsorted(cuts, value, side="left")]
                contributions[:, a] = acc
        return baseline + contributions.sum(axis=1), contributions

    def contributions_by_design(self, cols: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(logit, contributions) the long way: the standardised design matrix times the coefficients, plus
        every stump evaluated on its column."""
        x = self.design.transform(cols)
        groups = _group_matrix(self.design.groups)
        contributions = ((x - self.mean) * self.coef) @ groups
        if len(self.stumps):
            by_attribute = groups[self.stumps[:, 0].astype(np.intp)]
            contributions += (_stump_values(self.stumps, x) - self.stump_means) @ by_attribute
        baseline = self.intercept + float(self.mean @ self.coef) + float(self.stump_means.sum())
        return baseline + contributions.sum(axis=1), contributions

    def _compiled(self) -> tuple[dict[str, np.ndarray], dict[str, tuple[list[Any], float]], float]:
        if self._fast is None:
            names, groups = self.design.names, self.design.groups
            center, scale = self.design.center, self.design.scale
            col = {n: j for j, n in enumerate(names)}
            tables: dict[str, np.ndarray] = {}
            for name in CATEGORIES:
                js = [col[f"{name}={v}"] for v in VALUES[name]]
                offset = float(sum(self.coef[j] * self.mean[j] for j in js))
                tables[name] = np.array([self.coef[j] for j in js]) - offset
            cuts: dict[int, list[tuple[float, float, float]]] = {}  # numeric column -> its stumps, in raw units
            cut_means: dict[int, float] = {}  # numeric column -> the sum of its stumps' training means
            for (jf, threshold, left, right), mu in zip(self.stumps, self.stump_means, strict=True):
                j = int(jf)
                if "=" in names[j]:  # an indicator (0 or 1, not standardised): a step between two categories' sets
                    name, _, category = names[j].partition("=")
                    step = np.full(len(VALUES[name]), left if threshold >= 0 else right)
                    step[VALUES[name].index(category)] = left if threshold >= 1 else right
                    tables[name] = tables[name] + step - mu
                else:  # standardised: x <= t exactly when the raw value <= t * scale + center
                    cuts.setdefault(j, []).append((threshold * scale[j] + center[j], left, right))
                    cut_means[j] = cut_means.get(j, 0.0) + float(mu)
            numeric: dict[str, tuple[list[Any], float]] = {}
            for f, group, fn in NUMERIC_FEATURES:
                j = col[f]
                w = float(self.coef[j] / scale[j])
                const = float(self.coef[j] * (center[j] / scale[j] + self.mean[j])) + cut_means.get(j, 0.0)
                mine = sorted(cuts.get(j, []))
                at = np.array([c for c, _, _ in mine])
                # the step function: every left value, plus (right - left) of each cut below the value
                rises = np.cumsum([r - lft for _, lft, r in mine])
                steps = sum(lft for _, lft, _ in mine) + np.concatenate([[0.0], rises])
                terms, c = numeric.get(group, ([], 0.0))
                numeric[group] = ([*terms, (fn, w, at, steps)], c + const)
            assert set(groups) == set(ATTRIBUTES)
            baseline = self.intercept + float(self.mean @ self.coef) + float(self.stump_means.sum())
            self._fast = (tables, numeric, baseline)
        return self._fast

    def probability(self, cols: Mapping[str, np.ndarray]) -> np.ndarray:
        logit, _ = self._parts(cols)
        return _sigmoid(logit)

    def baseline(self) -> float:
        """The logit of the baseline applicant: every attribute's contribution is measured from it."""
        return self._compiled()[2]

    def score(self, cols: Mapping[str, np.ndarray], *, top: int = 4) -> Scores:
        """Probabilities, bands and the ``top`` reasons of every application (phrase ids, most first);
        contributions in log-odds."""
        logit, contrib = self._parts(cols)
        return _scores(_sigmoid(logit), contrib, cols, self.design, top)

    # -- storage: JSON, never pickle (a model is data read back from the database)
    family = "calibrated_logit"

    def to_bytes(self) -> bytes:
        """JSON numbers. Version 2 adds the stumps; a version 1 model (no stumps) still loads (:func:`load`)."""
        return json.dumps(self.as_dict()).encode()

    def as_dict(self) -> dict[str, Any]:
        return {
            "family": self.family, "version": 2, "names": self.design.names, "groups": self.design.groups,
            "center": self.design.center.tolist(), "scale": self.design.scale.tolist(), "coef": self.coef.tolist(),
            "intercept": self.intercept, "mean": self.mean.tolist(), "hyper": self.hyper,
            "stumps": self.stumps.tolist(), "stump_means": self.stump_means.tolist(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Logit:
        design = Design(list(d["names"]), list(d["groups"]), np.array(d["center"]), np.array(d["scale"]))
        stumps = np.array(d.get("stumps", []), dtype=np.float64).reshape(-1, 4)
        return cls(design, np.array(d["coef"]), float(d["intercept"]), np.array(d["mean"]), dict(d["hyper"]),
                   stumps, np.array(d.get("stump_means", []), dtype=np.float64))

    def feature_schema(self) -> dict[str, Any]:
        """The attributes a model reads, with their categories or ranges, and its design columns."""
        return {"categorical": {k: list(VALUES[k]) for k in CATEGORIES},
                "numeric": {k: list(v) for k, v in NUMBERS.items()}, "design_columns": self.design.names}


# -- the forest and the served blend ---------------------------------------------------------------

#: The forest's settings, fixed before they were measured (bench/RESULTS.md): 200 trees of depth at
#: most 8, leaves of at least 5 rows, 30 % of the design columns tried at each split.
FOREST_TREES = 200
FOREST_DEPTH = 8
FOREST_LEAF = 5
FOREST_FEATURES = 0.3


def forest_model(seed: int) -> Any:
    """The unfitted random forest :func:`fit_forest` fits (scikit-learn's), with :data:`FOREST_TREES` etc."""
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=FOREST_TREES, max_depth=FOREST_DEPTH, min_samples_leaf=FOREST_LEAF,
                                  max_features=FOREST_FEATURES, n_jobs=1, random_state=seed)


@dataclass
class Forest:
    """A fitted random forest on a :class:`Design`'s standardised columns, as flat node arrays.

    Its probability is the mean over its trees of the bad fraction in the leaf a row reaches. A tree's
    leaf value is its root's value plus the change at each split on the way down; giving each change to
    the attribute of the column split on makes the forest's probability exactly ``mean of the roots +
    one contribution per attribute``. That sum is fixed per leaf, so it is tabled once per leaf
    (:meth:`_compiled`) and scoring adds one table row per tree (:mod:`nexus_ray.compute.forest_walk`).
    """

    feature: np.ndarray  # per node: the design column split on (-2 at a leaf)
    threshold: np.ndarray  # per node: left when the float32 value is at or below it
    left: np.ndarray  # per node: the left child, -1 at a leaf
    right: np.ndarray
    value: np.ndarray  # per node: the (bootstrap-weighted) fraction of bad outcomes in it
    roots: np.ndarray  # the first node of each tree
    groups: list[str]  # the attribute of each design column
    _fast: Any = field(default=None, repr=False, compare=False)

    @classmethod
    def from_sklearn(cls, rf: Any, groups: Sequence[str]) -> Forest:
        feature, threshold, left, right, value, roots = [], [], [], [], [], []
        at = 0
        for tree in rf.estimators_:
            t = tree.tree_
            v = t.value[:, 0, :]
            leaf = t.children_left < 0
            roots.append(at)
            feature.append(np.where(leaf, -2, t.feature))
            threshold.append(t.threshold)
            left.append(np.where(leaf, -1, t.children_left + at))
            right.append(np.where(leaf, -1, t.children_right + at))
            value.append(v[:, 1] / v.sum(axis=1))
            at += t.node_count
        return cls(np.concatenate(feature).astype(np.int32), np.concatenate(threshold).astype(np.float64),
                   np.concatenate(left).astype(np.int32), np.concatenate(right).astype(np.int32),
                   np.concatenate(value).astype(np.float64), np.array(roots, dtype=np.int32), list(groups))

    def _compiled(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, np.ndarray, float]:
        """The walking layout of :mod:`nexus_ray.compute.forest_walk` and the leaves' table.

        Nodes renumbered tree by tree, level by level, so that siblings are adjacent; a leaf points to
        itself with threshold +inf. ``table[node]`` holds the changes of value on the path to the node,
        each given to the attribute of the column split on, divided by the number of trees. Returns
        (feature, threshold, left, roots, depth, table, the roots' mean value).
        """
        if self._fast is None:
            attribute = [ATTRIBUTES.index(g) for g in self.groups]
            trees = len(self.roots)
            feature: list[int] = []
            threshold: list[float] = []
            left: list[int] = []
            rows: list[np.ndarray] = []
            roots: list[int] = []
            depth = 0
            for root in self.roots.tolist():
                at = len(feature)
                roots.append(at)
                order, level, paths = [root], [0], [np.zeros(len(ATTRIBUTES))]
                k = 0
                while k < len(order):  # breadth first: a node's children are numbered together
                    node, path = order[k], paths[k]
                    k += 1
                    rows.append(path)
                    if self.left[node] < 0:
                        feature.append(0)
                        threshold.append(np.inf)
                        left.append(at + k - 1)
                        continue
                    a = attribute[self.feature[node]]
                    feature.append(int(self.feature[node]))
                    threshold.append(float(self.threshold[node]))
                    left.append(at + len(order))
                    for child in (int(self.left[node]), int(self.right[node])):
                        step = path.copy()
                        step[a] += (self.value[child] - self.value[node]) / trees
                        order.append(child)
                        level.append(level[k - 1] + 1)
                        paths.append(step)
                depth = max(depth, max(level))
            self._fast = (np.array(feature, dtype=np.int32), np.array(threshold, dtype=np.float64),
                          np.array(left, dtype=np.int32), np.array(roots, dtype=np.int32), depth,
                          np.array(rows), float(self.value[self.roots].mean()))
        return self._fast

    def parts(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probability, per-attribute contributions) of the rows of the standardised design matrix ``x``."""
        from nexus_ray.compute.forest_walk import walk

        feature, threshold, left, roots, depth, table, base = self._compiled()
        out = np.zeros((len(x), table.shape[1]))
        walk(np.ascontiguousarray(x, dtype=np.float32), feature, threshold, left, roots, depth, table, out)
        return base + out.sum(axis=1), out

    def baseline(self) -> float:
        return self._compiled()[6]

    def as_dict(self) -> dict[str, Any]:
        return {"feature": self.feature.tolist(), "threshold": self.threshold.tolist(), "left": self.left.tolist(),
                "right": self.right.tolist(), "value": self.value.tolist(), "roots": self.roots.tolist(),
                "groups": self.groups}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Forest:
        return cls(np.array(d["feature"], dtype=np.int32), np.array(d["threshold"], dtype=np.float64),
                   np.array(d["left"], dtype=np.int32), np.array(d["right"], dtype=np.int32),
                   np.array(d["value"], dtype=np.float64), np.array(d["roots"], dtype=np.int32), list(d["groups"]))


@dataclass
class Blend:
    """The served model: the mean of the calibrated logit's probability (with its stumps) and the forest's,
    mapped by a Platt calibration fitted on out-of-fold blends of the training rows (:func:`fit`).

    Both halves are ``baseline + one term per attribute``: the forest's in probability, the logit's in
    log-odds. The logit's half is carried into probability by the slope of the secant of the sigmoid
    between the baseline logit and this row's, and the calibration's map likewise by its secant between
    the baseline blend and this row's (each one positive factor per row, so the terms keep their signs
    and order and still sum exactly to the change). A score is therefore exactly ``the baseline
    probability + one contribution per attribute`` (probability points), and the reasons are the largest
    positive ones, as for the logit alone.
    """

    logit: Logit
    forest: Forest
    #: Platt's (a, b): ``p = sigmoid(a * logit(mean) + b)``; None: the mean itself
    calibration: tuple[float, float] | None = None
    family = "logit_forest_blend"

    @property
    def design(self) -> Design:
        return self.logit.design

    @property
    def hyper(self) -> dict[str, float]:
        a, b = self.calibration or (1.0, 0.0)
        return {**self.logit.hyper, "forest_trees": float(len(self.forest.roots)), "blend_platt_a": a,
                "blend_platt_b": b}

    def _mean_baseline(self) -> float:
        return 0.5 * float(_sigmoid(np.array(self.logit.baseline()))) + 0.5 * self.forest.baseline()

    def baseline(self) -> float:
        """The baseline applicant's probability of default."""
        return float(self._calibrated(np.array([self._mean_baseline()]))[0])

    def _calibrated(self, p: np.ndarray) -> np.ndarray:
        if self.calibration is None:
            return p
        a, b = self.calibration
        return _sigmoid(a * _log_odds(p) + b)

    def _parts(self, cols: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        margin, by_logit = self.logit._parts(cols)
        base = self.logit.baseline()
        p_logit = _sigmoid(margin)
        p_base = float(_sigmoid(np.array(base)))
        slope = _secant(p_logit, p_base, margin - base, p_base * (1 - p_base))
        p_forest, by_forest = self.forest.parts(self.design.transform(cols))
        mean, contrib = 0.5 * (p_logit + p_forest), 0.5 * (by_logit * slope[:, None] + by_forest)
        if self.calibration is None:
            return mean, contrib
        mean_base = self._mean_baseline()
        p, p0 = self._calibrated(mean), float(self._calibrated(np.array([mean_base]))[0])
        a = self.calibration[0]
        m0 = min(max(mean_base, 1e-12), 1 - 1e-12)
        slope = _secant(p, p0, mean - mean_base, a * p0 * (1 - p0) / (m0 * (1 - m0)))
        return p, contrib * slope[:, None]

    def probability(self, cols: Mapping[str, np.ndarray]) -> np.ndarray:
        return self._parts(cols)[0]

    def score(self, cols: Mapping[str, np.ndarray], *, top: int = 4) -> Scores:
        """As :meth:`Logit.score`; contributions in probability points."""
        p, contrib = self._parts(cols)
        return _scores(p, contrib, cols, self.design, top)

    def to_bytes(self) -> bytes:
        """JSON numbers, version 3: the logit (as its own version 2), the forest's node arrays, the calibration."""
        return json.dumps({"family": self.family, "version": 3, "logit": self.logit.as_dict(),
                           "forest": self.forest.as_dict(),
                           "calibration": list(self.calibration) if self.calibration else None}).encode()

    def feature_schema(self) -> dict[str, Any]:
        return self.logit.feature_schema()


def _secant(f_x: np.ndarray, f_0: float, step: np.ndarray, slope_at_0: float) -> np.ndarray:
    """Per row, ``(f(x) - f(x0)) / (x - x0)`` of an increasing map ``f`` (its slope at ``x0`` where ``x == x0``):
    the one factor that carries a row's additive terms in ``x`` over to ``f``, exactly."""
    flat = np.abs(step) < 1e-9
    return np.where(flat, slope_at_0, (f_x - f_0) / np.where(flat, 1.0, step))


def _log_odds(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-12, 1 - 1e-12)
    return np.log(q / (1 - q))


Model = Logit | Blend


def load(raw: bytes) -> Model:
    """A stored model (:meth:`Logit.to_bytes`, :meth:`Blend.to_bytes`) back; JSON only, never a pickle."""
    d = json.loads(raw)
    family = d.get("family")
    if family == Logit.family:
        return Logit.from_dict(d)
    if family == Blend.family:
        calibration = d.get("calibration")
        return Blend(Logit.from_dict(d["logit"]), Forest.from_dict(d["forest"]),
                     (float(calibration[0]), float(calibration[1])) if calibration else None)
    raise ValueError(f"unknown model family: {family!r}")


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


_GROUP_MATRICES: dict[tuple[str, ...], np.ndarray] = {}


def _group_matrix(groups: Sequence[str]) -> np.ndarray:
    """(design columns x attributes) indicator: sums per-column contributions into per-attribute ones."""
    key = tuple(groups)
    m = _GROUP_MATRICES.get(key)
    if m is None:
        m = np.zeros((len(groups), len(ATTRIBUTES)))
        for j, g in enumerate(groups):
            m[j, ATTRIBUTES.index(g)] = 1.0
        _GROUP_MATRICES[key] = m
    return m


# -- reasons ---------------------------------------------------------------------------------------

#: Every reason sentence, indexed by phrase id; NO_REASON (-1) pads rows with fewer reasons than asked.
REASON_TEXTS: list[str] = []
_PHRASE_IDS: dict[str, np.ndarray] = {}  # attribute -> phrase id per category index, or [low, high]
NO_REASON = -1


def _build_phrases() -> None:
    for name in ATTRIBUTES:
        words = PHRASES[name]
        if name in CATEGORIES:
            ids = []
            for v in VALUES[name]:
                text = words.get(v) or words["*"].format(value=v.replace("_", " "))
                ids.append(len(REASON_TEXTS))
                REASON_TEXTS.append(text)
            _PHRASE_IDS[name] = np.array(ids)
        else:
            _PHRASE_IDS[name] = np.array([len(REASON_TEXTS), len(REASON_TEXTS) + 1])
            REASON_TEXTS.extend([words["low"], words["high"]])


_build_phrases()


_PHRASE_TABLE: np.ndarray | None = None


def _phrase_table() -> np.ndarray:
    """(attribute, value index) -> phrase id; a number's value index is 1 above the population's mean, else 0."""
    global _PHRASE_TABLE
    if _PHRASE_TABLE is None:
        width = max(len(v) for v in _PHRASE_IDS.values())
        table = np.full((len(ATTRIBUTES), width), NO_REASON, dtype=np.int32)
        for a, name in enumerate(ATTRIBUTES):
            table[a, : len(_PHRASE_IDS[name])] = _PHRASE_IDS[name]
        _PHRASE_TABLE = table
    return _PHRASE_TABLE


def _scores(p: np.ndarray, contrib: np.ndarray, cols: Mapping[str, np.ndarray], design: Design, top: int
            ) -> Scores:
    attributes, reasons = _reasons(contrib, cols, design, top)
    return Scores(probability=p, band=band_of(p), reasons=reasons, reason_attributes=attributes,
                  contributions=contrib)


def _reasons(contrib: np.ndarray, cols: Mapping[str, np.ndarray], design: Design, top: int
             ) -> tuple[np.ndarray, np.ndarray]:
    """The ``top`` attributes of largest positive contribution per row, and their phrase ids.

    Picked by ``top`` passes of argmax (each one vectorised over all rows) rather than a sort of
    every row: four passes over 18 columns cost less than one argsort.
    """
    n, width = contrib.shape
    top = min(top, width)
    rows = np.arange(n)
    work = contrib.copy()
    order = np.empty((n, top), dtype=np.intp)
    chosen = np.empty((n, top))
    for k in range(top):
        best = work.argmax(axis=1)
        order[:, k] = best
        chosen[:, k] = work[rows, best]
        work[rows, best] = -np.inf
    value = np.empty((n, top), dtype=np.intp)
    for a, name in enumerate(ATTRIBUTES):
        hit = order == a
        if not hit.any():
            continue
        if name in CATEGORIES:
            v = cols[name].astype(np.intp)
        else:
            v = (cols[name] > design.center[design.names.index(name)]).astype(np.intp)
        at_row, at_rank = np.nonzero(hit)
        value[at_row, at_rank] = v[at_row]
    ids = _phrase_table()[order, value]
    return order, np.where(chosen > 1e-9, ids, NO_REASON)


@dataclass
class Scores:
    probability: np.ndarray
    band: np.ndarray  # index into BAND_NAMES
    reasons: np.ndarray  # (n, top) phrase ids into REASON_TEXTS, NO_REASON where fewer
    reason_attributes: np.ndarray  # (n, top) index into ATTRIBUTES of each reason
    #: (n, attributes) each attribute's contribution against the population baseline, in the model's units
    #: (log-odds for a :class:`Logit`, probability points for the served :class:`Blend`)
    contributions: np.ndarray

    def reason_texts(self, row: int) -> list[str]:
        return [REASON_TEXTS[i] for i in self.reasons[row] if i != NO_REASON]


# -- fitting ---------------------------------------------------------------------------------------

C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0)


def fit(cols: Mapping[str, np.ndarray], y: np.ndarray, *, seed: int = 0, inner_folds: int = 5,
        c_grid: Iterable[float] = C_GRID) -> Blend:
    """Fit the served model on these rows only: the calibrated logit with its stumps (:func:`fit_logit`)
    and the forest (:func:`fit_forest`) on the logit's design columns, then Platt's map of their mean,
    fitted on the out-of-fold means of an inner ``inner_folds``-fold split of these rows (each fold's
    blend fitted the same way on the other folds, with the L2 strength chosen here for all the rows)."""
    from sklearn.model_selection import StratifiedKFold

    logit = fit_logit(cols, y, seed=seed, inner_folds=inner_folds, c_grid=c_grid)
    oof = np.empty(len(y))
    for tr, va in StratifiedKFold(inner_folds, shuffle=True, random_state=seed + 1).split(np.zeros(len(y)), y):
        part = take(cols, tr)
        inner = fit_logit(part, y[tr], seed=seed, inner_folds=inner_folds, c_grid=(logit.hyper["C"],))
        oof[va] = Blend(inner, fit_forest(inner.design, part, y[tr], seed=seed)).probability(take(cols, va))
    return Blend(logit, fit_forest(logit.design, cols, y, seed=seed), _platt(_log_odds(oof), y))


def fit_forest(design: Design, cols: Mapping[str, np.ndarray], y: np.ndarray, *, seed: int = 0) -> Forest:
    """:func:`forest_model` fitted on these rows' standardised design columns."""
    rf = forest_model(seed).fit(design.transform(cols), y)
    return Forest.from_sklearn(rf, design.groups)


def fit_logit(cols: Mapping[str, np.ndarray], y: np.ndarray, *, seed: int = 0, inner_folds: int = 5,
              c_grid: Iterable[float] = C_GRID, stumps: bool = True) -> Logit:
    """Fit the logit on these rows only: C by inner CV (log loss), Platt on out-of-fold scores, then the
    boosted stumps (:func:`with_stumps`; ``stumps=False`` stops at the calibrated logit)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    design = Design.fit(cols)
    x = design.transform(cols)
    inner = list(StratifiedKFold(inner_folds, shuffle=True, random_state=seed).split(x, y))
    best: tuple[float, float, np.ndarray] | None = None
    for c in c_grid:
        oof = np.empty(len(y))
        for tr, va in inner:
            # The design's standardisation is the outer training rows'; a per-inner-fold refit changes
            # nothing the penalty sees but the scale, and the held-out inner rows never set a coefficient.
            m = LogisticRegression(C=c, max_iter=2000).fit(x[tr], y[tr])
            oof[va] = m.decision_function(x[va])
        loss = _log_loss(y, _sigmoid(oof))
        if best is None or loss < best[0]:
            best = (loss, c, oof)
    assert best is not None
    _, c, oof = best
    a, b = _platt(oof, y)
    m = LogisticRegression(C=c, max_iter=2000).fit(x, y)
    coef = a * m.coef_[0]
    intercept = a * float(m.intercept_[0]) + b
    logit = Logit(design, coef, intercept, x.mean(axis=0), {"C": c, "platt_a": a, "platt_b": b})
    return with_stumps(logit, cols, y, seed=seed) if stumps else logit


STUMPS_MOST = 1000
STUMP_RATE = 0.05


class _Margin:
    """Gradient boosting's starting point: the calibrated logit's probability (already fitted)."""

    def __init__(self, logit: Logit) -> None:
        self.logit = logit

    def fit(self, x: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None) -> _Margin:
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        p = _sigmoid(x @ self.logit.coef + self.logit.intercept)
        return np.column_stack([1 - p, p])


def stump_booster(logit: Logit, seed: int) -> Any:
    """The unfitted booster :func:`with_stumps` fits (depth 1, rate 0.05, subsample 0.8, at most 1,000 stumps,
    stopped after 30 without gain on a 20 % hold-out of the training rows)."""
    from sklearn.ensemble import GradientBoostingClassifier

    return GradientBoostingClassifier(init=_Margin(logit), n_estimators=STUMPS_MOST, learning_rate=STUMP_RATE,
                                      max_depth=1, subsample=0.8, min_samples_leaf=10, validation_fraction=0.2,
                                      n_iter_no_change=30, random_state=seed)


def with_stumps(logit: Logit, cols: Mapping[str, np.ndarray], y: np.ndarray, *, seed: int = 0) -> Logit:
    """``logit`` with boosted stumps on its margin, fitted on these rows (the logit's own training rows)."""
    x = logit.design.transform(cols)
    booster = stump_booster(logit, seed).fit(x, y)
    intercept = logit.intercept
    rows = []
    for tree in booster.estimators_[:, 0]:
        t = tree.tree_
        if t.node_count == 1:  # no split found: a constant
            intercept += STUMP_RATE * float(t.value[0, 0, 0])
            continue
        left, right = t.children_left[0], t.children_right[0]
        rows.append((t.feature[0], t.threshold[0], STUMP_RATE * t.value[left, 0, 0], STUMP_RATE * t.value[right, 0, 0]))
    stumps = np.array(rows, dtype=np.float64).reshape(-1, 4)
    means = _stump_values(stumps, x).mean(axis=0)
    hyper = {**logit.hyper, "stumps": float(len(stumps)), "stump_rate": STUMP_RATE}
    return Logit(logit.design, logit.coef, intercept, logit.mean, hyper, stumps, means)


def _stump_values(stumps: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(rows x stumps): each stump's value on the standardised design matrix ``x`` (left at or below its threshold)."""
    return np.where(x[:, stumps[:, 0].astype(np.intp)] <= stumps[:, 1], stumps[:, 2], stumps[:, 3])


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _platt(z: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Platt scaling: ``sigmoid(a * z + b)`` fitted by (almost unpenalised) logistic regression on one score."""
    from sklearn.linear_model import LogisticRegression

    m = LogisticRegression(C=1e6, max_iter=1000).fit(z[:, None], y)
    return float(m.coef_[0, 0]), float(m.intercept_[0])


def metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """AUC, Brier score and log loss of probabilities ``p`` for outcomes ``y`` (1 = bad)."""
    from sklearn.metrics import roc_auc_score

    return {"auc": float(roc_auc_score(y, p)), "brier": float(np.mean((p - y) ** 2)), "log_loss": _log_loss(y, p),
            "n": len(y), "bad_rate": float(np.mean(y))}
