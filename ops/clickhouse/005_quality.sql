-- Quality from labels: the logged predictions, the labels, and quality per
-- window, model version, variant and segment. The log holds one row per
-- event and model version (a re-delivered event replaces its row).

CREATE TABLE IF NOT EXISTS prediction_log
(
    pipeline LowCardinality(String) COMMENT 'Pipeline name',
    event_id String COMMENT 'Id of the scored event',
    model LowCardinality(String) COMMENT 'Model name',
    model_version LowCardinality(String) COMMENT 'Model version',
    variant LowCardinality(String) COMMENT 'Role of the version for this event: champion, a split variant, shadow, fallback or rule:FIELD=VALUE',
    label String COMMENT 'Predicted label (classifiers) or the value as text (regressors)',
    score Float64 COMMENT 'Probability of the positive class (binary), of the predicted label (multiclass), or the predicted value',
    confidence Float64 COMMENT 'Confidence of the prediction, in [0, 1]',
    event_time DateTime64(3, 'UTC') COMMENT 'Event time of the scored event',
    scored_time DateTime64(3, 'UTC') COMMENT 'When it was scored: quality windows are by this time',
    latency_ms Float64 COMMENT 'End-to-end latency, event time to scoring',
    features Map(String, Float64) COMMENT 'The model''s input values (quality.log_features): categories as their index in the manifest, NaN for null',
    segments Map(String, String) COMMENT 'The event''s segment fields (quality.segments)',
    INDEX scored_time_range scored_time TYPE minmax GRANULARITY 1
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMMDD(scored_time)
ORDER BY (pipeline, event_id, model, model_version, variant)
COMMENT 'Every prediction and shadow prediction, with its inputs and segments, sampled by quality.log_sample_rate (by a hash of the Kafka key)';

CREATE TABLE IF NOT EXISTS feedback
(
    pipeline LowCardinality(String) COMMENT 'Pipeline name',
    event_id String COMMENT 'Id of the event the label is for',
    label String COMMENT 'True label (classifiers) or value as text (regressors)',
    label_time DateTime64(3, 'UTC') COMMENT 'When the label became known',
    received_at DateTime64(3, 'UTC') COMMENT 'When the label was read from {pipeline}.feedback'
)
ENGINE = ReplacingMergeTree(received_at)
ORDER BY (pipeline, event_id)
COMMENT 'Labels from {pipeline}.feedback, the newest per event (a correction replaces a label)';

CREATE TABLE IF NOT EXISTS quality_windows
(
    pipeline LowCardinality(String) COMMENT 'Pipeline name',
    model LowCardinality(String) COMMENT 'Model name',
    model_version LowCardinality(String) COMMENT 'Model version',
    variant LowCardinality(String) COMMENT 'Role of the version for the events',
    window_start DateTime64(3, 'UTC') COMMENT 'Window start by scoring time, UTC',
    window_end DateTime64(3, 'UTC') COMMENT 'Window end, UTC (exclusive)',
    segment LowCardinality(String) COMMENT 'Segment field (quality.segments), or all for every event',
    segment_value String COMMENT 'Value of the segment field (empty for all)',
    predictions UInt64 COMMENT 'Logged predictions in the window and segment',
    labeled UInt64 COMMENT 'Of those, with a label within quality.label_horizon_seconds of the prediction',
    late_labels UInt64 COMMENT 'Labels that came later than the horizon: counted here, left out of the metrics',
    label_coverage Float64 COMMENT 'labeled / predictions',
    accuracy Float64 COMMENT 'Share of labeled predictions whose label matches (classifiers)',
    precision Float64 COMMENT 'Of the labeled events predicted positive, the share that are positive (binary classifiers)',
    recall Float64 COMMENT 'Of the labeled positive events, the share predicted positive (binary classifiers)',
    brier Float64 COMMENT 'Mean squared gap between the positive probability and the outcome (binary classifiers)',
    log_loss Float64 COMMENT 'Mean negative log-likelihood of the outcome, probabilities clipped to [1e-15, 1 - 1e-15] (binary classifiers)',
    positives UInt64 COMMENT 'Labeled events whose label is the positive label (binary classifiers)',
    predicted_positives UInt64 COMMENT 'Labeled events predicted positive (binary classifiers)',
    true_positives UInt64 COMMENT 'Labeled events predicted positive that are positive (binary classifiers)',
    mae Float64 COMMENT 'Mean absolute error (regressors)',
    rmse Float64 COMMENT 'Root mean squared error (regressors)',
    final UInt8 COMMENT '1 once the horizon has passed for the whole window: no label can still change it',
    revision UInt64 COMMENT 'When the row was computed, epoch ms: FINAL keeps the newest',
    computed_at DateTime64(3, 'UTC') COMMENT 'When the row was computed, UTC'
)
ENGINE = ReplacingMergeTree(revision)
ORDER BY (pipeline, model, model_version, variant, segment, segment_value, window_start)
COMMENT 'Quality per window (monitor.window_seconds), model version, variant and segment, from prediction_log joined with feedback';

CREATE OR REPLACE VIEW quality_by_segment AS
SELECT pipeline, model, model_version, variant, segment, segment_value,
       sum(predictions) AS predictions_total,
       sum(labeled) AS labeled_total,
       sum(late_labels) AS late_labels_total,
       labeled_total / predictions_total AS label_coverage,
       sum(accuracy * labeled) / labeled_total AS accuracy,
       sum(true_positives) / sum(predicted_positives) AS precision,
       sum(true_positives) / sum(positives) AS recall,
       sum(brier * labeled) / labeled_total AS brier,
       sum(log_loss * labeled) / labeled_total AS log_loss,
       sum(mae * labeled) / labeled_total AS mae,
       min(window_start) AS since,
       max(window_end) AS until
FROM quality_windows FINAL
WHERE labeled > 0
GROUP BY pipeline, model, model_version, variant, segment, segment_value
COMMENT 'Quality per model version, variant and segment over every window with labels';
