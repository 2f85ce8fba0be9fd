"""Synthetic card payments with a known fraud mechanism, and the demo model trained on them."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from stream.models.manifest import (
    FeatureSpec,
    ModelManifest,
    OutputSpec,
    categorical_reference,
    numeric_reference,
)
from stream.monitor.histograms import score_reference

NUMERIC = [
    "amount", "account_age_days", "txn_count_1h", "txn_count_24h", "avg_amount_30d",
    "distance_from_home_km", "minutes_since_last_txn", "merchant_risk_score", "device_age_days",
    "failed_logins_24h", "hour_of_day", "ip_risk_score", "velocity_ratio", "card_age_days",
    "chargebacks_90d", "basket_items",
]  # fmt: skip
NULLABLE = {"distance_from_home_km", "device_age_days"}
CATEGORIES: dict[str, list[str]] = {
    "channel": ["web", "app", "pos"],
    "country": ["DE", "FR", "GB", "NL", "US", "ES"],
    "card_type": ["debit", "credit", "prepaid"],
}
FEATURES = NUMERIC + list(CATEGORIES)
# Standard deviations of the undrifted numeric features (from 200k rows), so a
# drift of "0.5" means half a standard deviation whatever the feature's scale.
_STD_SAMPLE = 200_000


def _numeric_columns(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    amount = rng.lognormal(3.5, 1.0, n)
    avg = rng.lognormal(3.5, 0.6, n)
    return {
        "amount": amount,
        "account_age_days": rng.exponential(700.0, n),
        "txn_count_1h": rng.poisson(0.5, n).astype(np.float64),
        "txn_count_24h": rng.poisson(3.0, n).astype(np.float64),
        "avg_amount_30d": avg,
        "distance_from_home_km": rng.exponential(20.0, n),
        "minutes_since_last_txn": rng.exponential(600.0, n),
        "merchant_risk_score": rng.beta(2.0, 8.0, n),
        "device_age_days": rng.exponential(300.0, n),
        "failed_logins_24h": rng.poisson(0.2, n).astype(np.float64),
        "hour_of_day": rng.integers(0, 24, n).astype(np.float64),
        "ip_risk_score": rng.beta(1.5, 10.0, n),
        "velocity_ratio": amount / avg,
        "card_age_days": rng.uniform(30.0, 2000.0, n),
        "chargebacks_90d": rng.poisson(0.05, n).astype(np.float64),
        "basket_items": 1.0 + rng.poisson(2.0, n),
    }


_STDS: dict[str, float] = {}


def feature_std(name: str) -> float:
    if not _STDS:
        cols = _numeric_columns(_STD_SAMPLE, np.random.default_rng(12345))
        _STDS.update({k: float(v.std()) for k, v in cols.items()})
    return _STDS[name]


def generate(
    n: int,
    rng: np.random.Generator,
    drift: Mapping[str, float] | None = None,
    concept: bool = False,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Columns of ``n`` payments (NaN where null; categories as codes) and their fraud labels.

    ``drift`` shifts numeric features by that many of their standard deviations.
    ``concept`` changes what fraud looks like (concept drift): the features keep
    their distributions, the labels follow another mechanism, so a model trained
    before the change loses accuracy that no input drift statistic shows.
    """
    cols = _numeric_columns(n, rng)
    cols["channel"] = rng.choice(3, n, p=[0.45, 0.35, 0.20]).astype(np.float64)
    cols["country"] = rng.choice(6, n, p=[0.35, 0.15, 0.15, 0.1, 0.15, 0.1]).astype(np.float64)
    cols["card_type"] = rng.choice(3, n, p=[0.6, 0.32, 0.08]).astype(np.float64)
    cols["distance_from_home_km"][rng.random(n) < 0.08] = np.nan
    cols["device_age_days"][cols["channel"] == 2] = np.nan  # card-present: no device
    logit = _new_mechanism(cols, n, rng) if concept else _mechanism(cols, n, rng)
    labels = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)
    for name, shift in (drift or {}).items():
        if name not in NUMERIC:
            raise ValueError(f"can only drift numeric features, not {name!r}")
        cols[name] = cols[name] + shift * feature_std(name)
    return cols, labels


def _mechanism(cols: dict[str, np.ndarray], n: int, rng: np.random.Generator) -> np.ndarray:
    return (
        -6.0
        + 1.1 * np.log(cols["velocity_ratio"] + 0.1)
        + 6.0 * cols["ip_risk_score"]
        + 4.0 * cols["merchant_risk_score"]
        + 0.9 * cols["failed_logins_24h"]
        + 0.6 * cols["txn_count_1h"]
        + 0.8 * (cols["channel"] == 0)
        + 0.4 * (cols["country"] == 4)
        + 1.2 * (cols["card_type"] == 2)
        + 1.0 * cols["chargebacks_90d"]
        - 0.0008 * cols["account_age_days"]
        + rng.normal(0.0, 0.5, n)
    )


def _new_mechanism(cols: dict[str, np.ndarray], n: int, rng: np.random.Generator) -> np.ndarray:
    """Fraud moved: far from home, at night, on young cards and new devices; the IP's
    risk no longer tells."""
    distance = np.nan_to_num(cols["distance_from_home_km"], nan=20.0)
    night = (cols["hour_of_day"] < 6) | (cols["hour_of_day"] >= 22)
    device = np.nan_to_num(cols["device_age_days"], nan=300.0)
    return (
        -4.0
        + 0.08 * distance
        + 2.5 * night
        - 0.002 * cols["card_age_days"]
        + 2.5 * (device < 30)
        + 0.6 * cols["txn_count_1h"]
        + 0.9 * (cols["channel"] == 1)
        + rng.normal(0.0, 0.5, n)
    )


def events(
    n: int,
    rng: np.random.Generator,
    now_ms: int,
    drift: Mapping[str, float] | None = None,
    run_id: str | None = None,
    first_index: int = 0,
    truth: list[tuple[str, str]] | None = None,
    concept: bool = False,
) -> Iterator[dict[str, Any]]:
    """Payment events as the Avro schema ``payments_event.avsc`` describes them.

    Event ids are ``{run_id}-{index}``, unique within a run. ``truth``, when
    given, receives each event's id and true label (fraud or legit), in order;
    ``concept`` labels them by the changed fraud mechanism.
    """
    cols, labels = generate(n, rng, drift, concept)
    run = run_id or uuid.uuid4().hex[:8]
    for i in range(n):
        event: dict[str, Any] = {
            "event_id": f"{run}-{first_index + i}",
            "event_time": now_ms,
            "customer_id": f"c{int(rng.integers(0, 50_000))}",
        }
        for name in NUMERIC:
            value = float(cols[name][i])
            event[name] = None if np.isnan(value) else value
        for name, cats in CATEGORIES.items():
            event[name] = cats[int(cols[name][i])]
        if truth is not None:
            truth.append((event["event_id"], "fraud" if labels[i] else "legit"))
        yield event


def train_demo_model(
    name: str = "payments-fraud",
    version: str = "1",
    rows: int = 20_000,
    seed: int = 7,
    trees: int = 100,
    depth: int = 3,
) -> tuple[bytes, ModelManifest]:
    """Train gradient boosting on synthetic payments; return ONNX bytes and the manifest."""
    from sklearn.metrics import roc_auc_score

    from stream.demo.trainer import gradient_boosting_onnx

    rng = np.random.default_rng(seed)
    cols, labels = generate(rows, rng)
    raw = np.column_stack([cols[f] for f in FEATURES])
    fills = {f: float(np.nanmedian(cols[f])) for f in NULLABLE}
    fill_row = np.array([fills.get(f, 0.0) for f in FEATURES])
    x = np.where(np.isnan(raw), fill_row, raw).astype(np.float32)
    split = int(rows * 0.8)
    onnx_bytes, clf = gradient_boosting_onnx(
        x[:split], labels[:split], "features", trees, depth, seed
    )
    scores = clf.predict_proba(x)[:, 1]
    auc = float(roc_auc_score(labels[split:], scores[split:]))
    specs = []
    for j, f in enumerate(FEATURES):
        if f in CATEGORIES:
            ref = categorical_reference(raw[:, j], len(CATEGORIES[f]))
            specs.append(
                FeatureSpec(name=f, type="categorical", categories=CATEGORIES[f], reference=ref)
            )
        else:
            specs.append(
                FeatureSpec(
                    name=f,
                    type="numeric",
                    nullable=f in NULLABLE,
                    fill=fills.get(f, 0.0),
                    reference=numeric_reference(raw[:, j]),
                )
            )
    # Fresh rows for the output's reference: scores on training rows would be
    # more confident than on any live traffic.
    fresh, _ = generate(rows // 2, np.random.default_rng(seed + 1))
    fresh_raw = np.column_stack([fresh[f] for f in FEATURES])
    fresh_scores = clf.predict_proba(
        np.where(np.isnan(fresh_raw), fill_row, fresh_raw).astype(np.float32)
    )[:, 1]
    confidences = np.maximum(fresh_scores, 1.0 - fresh_scores)
    manifest = ModelManifest(
        name=name,
        version=version,
        onnx_sha256=hashlib.sha256(onnx_bytes).hexdigest(),
        input_name="features",
        features=specs,
        output=OutputSpec(
            kind="classifier", labels=["legit", "fraud"], positive_label="fraud", threshold=0.5
        ),
        score_reference=score_reference(fresh_scores),
        confidence_reference=score_reference(confidences),
        training={
            "algorithm": (
                f"sklearn GradientBoostingClassifier(n_estimators={trees}, max_depth={depth})"
            ),
            "rows": rows,
            "fraud_rate": float(labels.mean()),
            "holdout_auc": round(auc, 4),
            "data": "synthetic payments (stream.demo.data.generate)",
        },
    )
    return onnx_bytes, manifest
