-- Model deployments: the role (variant) a version played in each window, and
-- what every worker did with each deployment revision.

ALTER TABLE latency_windows ADD COLUMN IF NOT EXISTS variant LowCardinality(String) DEFAULT 'champion' AFTER model_version;

ALTER TABLE drift_windows ADD COLUMN IF NOT EXISTS variant LowCardinality(String) DEFAULT 'champion' AFTER model_version;

-- kind: applied (the worker serves the revision) or rejected (a model failed
-- to load; the worker keeps serving the revision before it).
CREATE TABLE IF NOT EXISTS model_events
(
    pipeline LowCardinality(String),
    revision UInt64,
    worker String,
    kind LowCardinality(String),
    models String,
    message String,
    at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (pipeline, revision, worker, kind, at);
