-- Monitor windows. One row per pipeline, model version and window (latency),
-- or per feature as well (drift). A window re-written after late partials
-- carries a higher revision; ReplacingMergeTree keeps the newest, so query
-- with FINAL (or argMax by revision). Bucket counts are stored next to the
-- finished statistics so that SQL can re-merge any range of windows with
-- sumForEach.

CREATE TABLE IF NOT EXISTS latency_windows
(
    pipeline LowCardinality(String),
    model LowCardinality(String),
    model_version LowCardinality(String),
    window_start DateTime64(3, 'UTC'),
    window_end DateTime64(3, 'UTC'),
    count UInt64,
    reviews UInt64,
    latency_p50_ms Float64,
    latency_p95_ms Float64,
    latency_p99_ms Float64,
    inference_p50_ms Float64,
    inference_p95_ms Float64,
    inference_p99_ms Float64,
    -- Bucket i counts values <= bucket_bounds_ms[i] (and above the previous
    -- bound); the last bucket counts everything above the last bound.
    bucket_bounds_ms Array(Float64),
    latency_buckets Array(UInt64),
    inference_buckets Array(UInt64),
    labels Array(String),
    label_counts Array(UInt64),
    score_buckets Array(UInt64),
    confidence_buckets Array(UInt64),
    revision UInt32,
    written_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(revision)
ORDER BY (pipeline, model, model_version, window_start);

CREATE TABLE IF NOT EXISTS drift_windows
(
    pipeline LowCardinality(String),
    model LowCardinality(String),
    model_version LowCardinality(String),
    window_start DateTime64(3, 'UTC'),
    window_end DateTime64(3, 'UTC'),
    feature LowCardinality(String),
    kind LowCardinality(String),
    count UInt64,
    nulls UInt64,
    null_rate Float64,
    psi Float64,
    js_distance Float64,
    ks Float64,
    mean Float64,
    std Float64,
    ref_mean Float64,
    ref_std Float64,
    -- ok | warn | alert | insufficient (fewer samples than monitor.min_samples)
    status LowCardinality(String),
    bucket_counts Array(UInt64),
    revision UInt32,
    written_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(revision)
ORDER BY (pipeline, model, model_version, feature, window_start);
