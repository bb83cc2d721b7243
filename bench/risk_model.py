"""Model quality of risk-assessment on German credit: nested 5-fold CV AUC and Brier, repeated over seeds.

Every family is fitted on the outer training folds only; whatever it chooses or calibrates
(the logit's L2 strength and Platt map, the forests' calibration) is done on those rows with an
inner cross-validation (the number of stumps on a hold-out of them), so no step sees the outer
test fold. The served model (``served``: the logit with its stumps averaged with the forest, through
Platt's map fitted on inner out-of-fold means) is fitted by the service's own ``risk.fit`` and scored
by its own compiled path; ``blend_mean`` is the same mean without the map. The standardisation and one-hot
encoding are fitted on the training rows too (the category lists are the data dictionary's).

    /work/main/.venv/bin/python bench/risk_model.py --seeds 4 --png bench/risk_calibration.png
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nexus_ray.compute import risk


def _matrix(cols: dict[str, np.ndarray]) -> np.ndarray:
    """Raw attributes as numbers (category index, value): the input of the sklearn pipelines."""
    return np.column_stack([cols[a].astype(np.float64) for a in risk.ATTRIBUTES])


def _plain_lr():
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    cat = [i for i, a in enumerate(risk.ATTRIBUTES) if a in risk.CATEGORIES]
    num = [i for i, a in enumerate(risk.ATTRIBUTES) if a in risk.NUMBERS]
    pre = ColumnTransformer([("cat", OneHotEncoder(handle_unknown="ignore"), cat), ("num", StandardScaler(), num)])
    return make_pipeline(pre, LogisticRegression(C=1.0, max_iter=2000))


def _forest(seed: int):
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.ensemble import RandomForestClassifier

    rf = RandomForestClassifier(n_estimators=300, min_samples_leaf=3, max_features="sqrt", n_jobs=1,
                                random_state=seed)
    return CalibratedClassifierCV(rf, method="sigmoid", cv=5)


def _hgb(seed: int):
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.ensemble import HistGradientBoostingClassifier

    cat = np.array([a in risk.CATEGORIES for a in risk.ATTRIBUTES])
    hgb = HistGradientBoostingClassifier(learning_rate=0.03, max_iter=300, max_leaf_nodes=8, min_samples_leaf=20,
                                         l2_regularization=1.0, categorical_features=cat, random_state=seed)
    return CalibratedClassifierCV(hgb, method="sigmoid", cv=5)


def _boosted_from_logit(logit: risk.Logit, seed: int):
    """Gradient boosting (depth 3, 150 trees, rate 0.02) that starts from the calibrated logit's margin."""
    from sklearn.ensemble import GradientBoostingClassifier

    return GradientBoostingClassifier(init=risk._Margin(logit), n_estimators=150, learning_rate=0.02, max_depth=3,
                                      subsample=0.8, min_samples_leaf=10, random_state=seed)


def _depth2_from_logit(logit: risk.Logit, seed: int):
    """The served model's booster with depth-2 trees instead of stumps (not additive per attribute)."""
    booster = risk.stump_booster(logit, seed)
    booster.set_params(max_depth=2)
    return booster


def _hgb_additive(seed: int):
    """Histogram boosting with no interactions (each tree on one attribute), stopped on an inner hold-out."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    cat = np.array([a in risk.CATEGORIES for a in risk.ATTRIBUTES])
    return HistGradientBoostingClassifier(learning_rate=0.05, max_iter=1000, max_leaf_nodes=6, min_samples_leaf=20,
                                          l2_regularization=1.0, categorical_features=cat,
                                          interaction_cst="no_interactions", early_stopping=True,
                                          validation_fraction=0.2, n_iter_no_change=30, random_state=seed)


ALWAYS = ["plain_lr", "logit", "logit_stumps", "blend_mean", "served"]
"""Always run: the plain logit, the calibrated logit alone, with its boosted stumps (served until
2026-12-01 10:43 UTC), that averaged with the forest (served until 12:00 UTC), and the served model
(the same mean through Platt's map fitted on inner out-of-fold means: ``risk.fit``)."""

FAMILIES = [*ALWAYS, "calibrated_rf", "calibrated_hgb", "avg_logit_rf", "avg_logit_forest", "logit_boosted",
            "logit_depth2", "hgb_additive"]


def _fold(job: tuple[int, int]) -> tuple[int, np.ndarray, dict[str, np.ndarray]]:
    """Out-of-fold predictions of every family for outer fold ``k`` of repetition ``seed``."""
    from sklearn.model_selection import StratifiedKFold

    seed, k = job
    apps, y = risk.german_credit()
    cols = risk.columns(apps)
    xm = _matrix(cols)
    tr, te = list(StratifiedKFold(5, shuffle=True, random_state=1000 + seed).split(xm, y))[k]
    out: dict[str, np.ndarray] = {}
    out["plain_lr"] = _plain_lr().fit(xm[tr], y[tr]).predict_proba(xm[te])[:, 1]
    logit = risk.fit_logit(risk.take(cols, tr), y[tr], seed=seed, stumps=False)
    out["logit"] = logit.probability(risk.take(cols, te))
    stumped = risk.with_stumps(logit, risk.take(cols, tr), y[tr], seed=seed)
    out["logit_stumps"] = stumped.probability(risk.take(cols, te))
    mean = risk.Blend(stumped, risk.fit_forest(stumped.design, risk.take(cols, tr), y[tr], seed=seed))
    out["blend_mean"] = mean.probability(risk.take(cols, te))
    out["served"] = risk.fit(risk.take(cols, tr), y[tr], seed=seed).probability(risk.take(cols, te))
    if {"avg_logit_forest", "logit_boosted", "logit_depth2"} & set(FAMILIES):
        xd = logit.design.transform(cols)  # standardised on the training rows only
        if "avg_logit_forest" in FAMILIES:
            out["avg_logit_forest"] = (out["logit"] + mean.forest.parts(xd[te])[0]) / 2
        if "logit_boosted" in FAMILIES:
            out["logit_boosted"] = _boosted_from_logit(logit, seed).fit(xd[tr], y[tr]).predict_proba(xd[te])[:, 1]
        if "logit_depth2" in FAMILIES:
            out["logit_depth2"] = _depth2_from_logit(logit, seed).fit(xd[tr], y[tr]).predict_proba(xd[te])[:, 1]
    if "hgb_additive" in FAMILIES:
        out["hgb_additive"] = _hgb_additive(seed).fit(xm[tr], y[tr]).predict_proba(xm[te])[:, 1]
    if "calibrated_rf" in FAMILIES:
        out["calibrated_rf"] = _forest(seed).fit(xm[tr], y[tr]).predict_proba(xm[te])[:, 1]
        out["avg_logit_rf"] = (out["logit"] + out["calibrated_rf"]) / 2
    if "calibrated_hgb" in FAMILIES:
        out["calibrated_hgb"] = _hgb(seed).fit(xm[tr], y[tr]).predict_proba(xm[te])[:, 1]
    return seed, te, out


def run(seeds: int, png: str | None, jobs: int) -> dict[str, dict[str, list[float]]]:
    from concurrent.futures import ProcessPoolExecutor

    _, y = risk.german_credit()
    t0 = time.perf_counter()
    preds = {seed: {f: np.empty(len(y)) for f in FAMILIES} for seed in range(seeds)}
    work = [(seed, k) for seed in range(seeds) for k in range(5)]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        for seed, te, out in pool.map(_fold, work):
            for f in FAMILIES:
                preds[seed][f][te] = out[f]
    scores: dict[str, dict[str, list[float]]] = {f: {"auc": [], "brier": [], "ece": []} for f in FAMILIES}
    for seed in range(seeds):
        for f in FAMILIES:
            m = risk.metrics(y, preds[seed][f])
            scores[f]["auc"].append(m["auc"])
            scores[f]["brier"].append(m["brier"])
            scores[f]["ece"].append(_calibration_error(y, preds[seed][f]))
        print(f"seed {seed}: " + ", ".join(
            f"{f} {scores[f]['auc'][-1]:.4f}/{scores[f]['brier'][-1]:.4f}" for f in FAMILIES), flush=True)
    print(f"\n{seeds} x nested 5-fold CV in {time.perf_counter() - t0:.0f} s ({jobs} processes)")
    print("family              AUC mean (sd)      Brier mean (sd)    ECE mean (sd)     "
          "[per seed: out-of-fold predictions of all 5 folds]")
    for f in FAMILIES:
        a, b, e = (np.array(scores[f][k]) for k in ("auc", "brier", "ece"))
        print(f"{f:<18}  {a.mean():.4f} ({a.std():.4f})   {b.mean():.4f} ({b.std():.4f})   "
              f"{e.mean():.4f} ({e.std():.4f})")
    if png:
        _calibration_png({f: [(y, preds[s][f]) for s in range(seeds)] for f in FAMILIES}, png)
    return scores


def _calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: over deciles of the prediction, the row-weighted mean of
    |mean predicted - observed rate|."""
    order = np.argsort(p, kind="stable")
    return float(sum(len(b) * abs(p[b].mean() - y[b].mean()) for b in np.array_split(order, bins)) / len(p))


def _calibration_png(pooled: dict[str, list[tuple[np.ndarray, np.ndarray]]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.calibration import calibration_curve

    fig, ax = plt.subplots(figsize=(6, 6))
    ax.plot([0, 1], [0, 1], "k:", label="perfectly calibrated")
    for f in [f for f in ("plain_lr", "logit_stumps", "blend_mean", "served", "calibrated_rf") if f in pooled]:
        y = np.concatenate([a for a, _ in pooled[f]])
        p = np.concatenate([b for _, b in pooled[f]])
        frac, mean = calibration_curve(y, p, n_bins=10, strategy="quantile")
        ax.plot(mean, frac, "o-", label=f)
    ax.set_xlabel("predicted probability of default (out of fold, nested CV)")
    ax.set_ylabel("observed default rate")
    ax.set_title("German credit: calibration, all seeds pooled (deciles)")
    ax.legend(loc="upper left")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    print(f"calibration curve: {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=4, help="repetitions of the outer 5-fold split (default 4)")
    ap.add_argument("--png", default="bench/risk_calibration.png", help="where the calibration curve goes")
    ap.add_argument("--jobs", type=int, default=2, help="processes (default 2)")
    ap.add_argument("--logit-only", action="store_true", help=f"only {', '.join(ALWAYS)} (fast)")
    ap.add_argument("--families",
                    help=f"comma-separated subset of {','.join(FAMILIES)} ({', '.join(ALWAYS)} always run)")
    ap.add_argument("--forest-cost", action="store_true",
                    help="also time scoring 50,000 synthetic applications with reasons: served model, logit alone")
    args = ap.parse_args()
    if args.logit_only:
        FAMILIES[:] = ALWAYS
    elif args.families:
        wanted = set(args.families.split(","))
        FAMILIES[:] = [f for f in FAMILIES if f in wanted | set(ALWAYS)]
    run(args.seeds, args.png, args.jobs)
    if args.forest_cost:
        _forest_cost()


def _forest_cost() -> None:
    """Seconds for 50,000 applications scored with their reasons: the served blend, its logit alone, its forest."""
    apps, y = risk.german_credit()
    cols = risk.columns(apps)
    model = risk.fit(cols, y)
    batch = risk.synthetic(50_000, seed=1)
    model.score(risk.take(batch, np.arange(10)))  # compiles (or loads) the forest's walk
    times = {"served": [], "logit": [], "forest": []}
    for _ in range(5):
        t0 = time.perf_counter()
        model.score(batch)
        t1 = time.perf_counter()
        model.logit.score(batch)
        t2 = time.perf_counter()
        model.forest.parts(model.design.transform(batch))
        t3 = time.perf_counter()
        for k, v in zip(times, (t1 - t0, t2 - t1, t3 - t2), strict=True):
            times[k].append(v)
    print("50,000 applications, best of 5: " + ", ".join(f"{k} {min(v):.3f} s" for k, v in times.items())
          + " (served and logit with their reasons; forest: design columns and walk)")


if __name__ == "__main__":
    main()
