-- The closed loop: who changed a deployment and why, and the gate's verdicts on
-- retrained candidates.

ALTER TABLE model_events
    ADD COLUMN IF NOT EXISTS actor String DEFAULT '' COMMENT 'Who acted, for steps taken by a person or a policy (user@host, or policy:NAME), empty for a worker''s answer' AFTER worker,
    ADD COLUMN IF NOT EXISTS reason String DEFAULT '' COMMENT 'Why, as the actor gave it or the evidence that decided' AFTER message;

ALTER TABLE model_events
    COMMENT COLUMN worker 'Worker id (host:pid) that applied or rejected the revision, empty for steps taken by an actor',
    COMMENT COLUMN kind 'applied or rejected (a worker''s answer), or changed, retrained, passed_gate, failed_gate, promoted, promotion_refused (an actor''s step)';

ALTER TABLE model_events MODIFY COMMENT 'What each worker did with each deployment revision, and every step of the closed loop (deploy, retrain, validation, promotion) with who took it and why';

CREATE TABLE IF NOT EXISTS model_validations
(
    pipeline LowCardinality(String) COMMENT 'Pipeline name',
    model LowCardinality(String) COMMENT 'Model name',
    model_version LowCardinality(String) COMMENT 'Version of the candidate',
    champion String COMMENT 'The version it was judged against, NAME:VERSION',
    metric LowCardinality(String) COMMENT 'accuracy, brier, log_loss (classifiers), or mae, rmse (regressors)',
    segment LowCardinality(String) COMMENT 'Segment field (quality.segments), or all for every held-out event',
    segment_value String COMMENT 'Value of the segment field (empty for all)',
    labeled UInt64 COMMENT 'Held-out labeled events in the segment',
    candidate_value Float64 COMMENT 'The metric for the candidate',
    champion_value Float64 COMMENT 'The metric for the champion on the same events',
    gain Float64 COMMENT 'How much better the candidate is in the metric''s units (negative: worse)',
    rule String COMMENT 'The rule this row was judged by (gain >= X), empty when it only informs',
    passed UInt8 COMMENT '1 when the row meets its rule (or has none)',
    reason String COMMENT 'Why the row failed its rule, in words',
    validated_at DateTime64(3, 'UTC') COMMENT 'When the gate ran'
)
ENGINE = ReplacingMergeTree
ORDER BY (pipeline, model, model_version, validated_at, metric, segment, segment_value)
COMMENT 'The gate before any traffic: each retrained candidate against the champion on held-out recent events, per metric and segment';
