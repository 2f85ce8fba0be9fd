-- Drift tests next to the effect sizes, unseen categories, and alerts.

ALTER TABLE drift_windows ADD COLUMN IF NOT EXISTS unseen UInt64 DEFAULT 0;

ALTER TABLE drift_windows ADD COLUMN IF NOT EXISTS unseen_rate Float64 DEFAULT 0;

ALTER TABLE drift_windows ADD COLUMN IF NOT EXISTS wasserstein Float64 DEFAULT nan;

ALTER TABLE drift_windows ADD COLUMN IF NOT EXISTS test LowCardinality(String) DEFAULT '';

ALTER TABLE drift_windows ADD COLUMN IF NOT EXISTS p_value Float64 DEFAULT nan;

ALTER TABLE drift_windows ADD COLUMN IF NOT EXISTS mean_shift Float64 DEFAULT nan;

ALTER TABLE drift_windows ADD COLUMN IF NOT EXISTS mean_p_value Float64 DEFAULT nan;

-- One row per alert record: the window that opened it (state firing), each
-- window that changed its severity (firing again), and the window that
-- cleared it (resolved). alert_id stays the same across all of them.
CREATE TABLE IF NOT EXISTS alerts
(
    alert_id String,
    state LowCardinality(String),
    severity LowCardinality(String),
    pipeline LowCardinality(String),
    model LowCardinality(String),
    model_version LowCardinality(String),
    variant LowCardinality(String),
    metric LowCardinality(String),
    subject String,
    measure LowCardinality(String),
    value Float64,
    threshold Float64,
    window_start DateTime64(3, 'UTC'),
    window_end DateTime64(3, 'UTC'),
    count UInt64,
    message String,
    opened_at DateTime64(3, 'UTC'),
    at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(at)
ORDER BY (pipeline, alert_id, window_start, state);

ALTER TABLE latency_windows
    COMMENT COLUMN pipeline 'Pipeline name (topics are {pipeline}.events, {pipeline}.predictions, ...)',
    COMMENT COLUMN model 'Model name in the registry',
    COMMENT COLUMN model_version 'Model version in the registry',
    COMMENT COLUMN variant 'Role of the version in this window: champion, a split variant, shadow, fallback or rule:FIELD=VALUE',
    COMMENT COLUMN window_start 'Window start, UTC (windows are monitor.window_seconds long, by scoring time)',
    COMMENT COLUMN window_end 'Window end, UTC (exclusive)',
    COMMENT COLUMN count 'Events the version scored in the window',
    COMMENT COLUMN reviews 'Events sent to the review topic (confidence below review_threshold)',
    COMMENT COLUMN latency_p50_ms 'Median end-to-end latency, event time to scoring, milliseconds',
    COMMENT COLUMN latency_p95_ms '95th percentile of end-to-end latency, milliseconds',
    COMMENT COLUMN latency_p99_ms '99th percentile of end-to-end latency, milliseconds',
    COMMENT COLUMN inference_p50_ms 'Median model run time per event (batch run time / batch size), milliseconds',
    COMMENT COLUMN inference_p95_ms '95th percentile of model run time per event, milliseconds',
    COMMENT COLUMN inference_p99_ms '99th percentile of model run time per event, milliseconds',
    COMMENT COLUMN bucket_bounds_ms 'Upper bounds of the latency buckets, milliseconds, the last bucket has no bound',
    COMMENT COLUMN latency_buckets 'End-to-end latency histogram on bucket_bounds_ms (merge windows with sumForEach)',
    COMMENT COLUMN inference_buckets 'Model run time per event histogram on bucket_bounds_ms',
    COMMENT COLUMN labels 'Class labels of the model, in output order',
    COMMENT COLUMN label_counts 'Predictions per label, in the order of labels',
    COMMENT COLUMN score_buckets 'Score histogram, ten bins of width 0.1 on [0, 1]',
    COMMENT COLUMN confidence_buckets 'Confidence histogram, ten bins of width 0.1 on [0, 1]',
    COMMENT COLUMN revision 'Write of this window (0 first, higher after late partials), FINAL keeps the highest',
    COMMENT COLUMN written_at 'When the row was written, UTC';

ALTER TABLE drift_windows
    COMMENT COLUMN pipeline 'Pipeline name',
    COMMENT COLUMN model 'Model name in the registry',
    COMMENT COLUMN model_version 'Model version in the registry',
    COMMENT COLUMN variant 'Role of the version in this window: champion, a split variant, shadow, fallback or rule:FIELD=VALUE',
    COMMENT COLUMN window_start 'Window start, UTC',
    COMMENT COLUMN window_end 'Window end, UTC (exclusive)',
    COMMENT COLUMN feature 'Model input feature, or prediction.score / prediction.confidence for the model output',
    COMMENT COLUMN kind 'numeric, categorical or prediction',
    COMMENT COLUMN count 'Non-null values in the window',
    COMMENT COLUMN nulls 'Null (missing) values in the window',
    COMMENT COLUMN null_rate 'nulls / (count + nulls + unseen)',
    COMMENT COLUMN psi 'Population stability index against the reference histogram (0.1 warn, 0.25 alert by default)',
    COMMENT COLUMN js_distance 'Jensen-Shannon distance to the reference histogram, base 2, in [0, 1]',
    COMMENT COLUMN ks 'Largest gap between the binned cumulative distributions of window and reference',
    COMMENT COLUMN mean 'Mean of the non-null values (numeric features)',
    COMMENT COLUMN std 'Standard deviation of the non-null values (numeric features)',
    COMMENT COLUMN ref_mean 'Mean in the training data',
    COMMENT COLUMN ref_std 'Standard deviation in the training data',
    COMMENT COLUMN status 'ok, warn, alert, or insufficient (fewer samples than monitor.min_samples)',
    COMMENT COLUMN bucket_counts 'Histogram on the reference bins (merge windows with sumForEach)',
    COMMENT COLUMN revision 'Write of this window (0 first, higher after late partials), FINAL keeps the highest',
    COMMENT COLUMN written_at 'When the row was written, UTC',
    COMMENT COLUMN unseen 'Values of a categorical feature the model never saw (those events went to the dead-letter topic)',
    COMMENT COLUMN unseen_rate 'unseen / (count + nulls + unseen)',
    COMMENT COLUMN wasserstein 'Earth mover''s distance on the reference bins, in the feature''s units (numeric and prediction rows)',
    COMMENT COLUMN test 'Two-sample test behind p_value: ks (numeric, prediction) or chi2 (categorical)',
    COMMENT COLUMN p_value 'p-value of that test. PSI flags a row only when it is below monitor.drift_alpha / tests in the window',
    COMMENT COLUMN mean_shift '(mean - ref_mean) / ref_std: the mean''s shift in training standard deviations (numeric features)',
    COMMENT COLUMN mean_p_value 'p-value of a z-test of the mean shift. The shift flags a row only when it is below the same bound';

ALTER TABLE schema_migrations
    COMMENT COLUMN name 'Migration file under ops/clickhouse applied to this database',
    COMMENT COLUMN applied_at 'When it was applied, UTC';

ALTER TABLE model_events
    COMMENT COLUMN pipeline 'Pipeline name',
    COMMENT COLUMN revision 'Deployment revision from stream.control',
    COMMENT COLUMN worker 'Worker id (host:pid) that applied or rejected the revision',
    COMMENT COLUMN kind 'applied (the worker serves the revision) or rejected (it keeps the revision before)',
    COMMENT COLUMN models 'Model versions of the revision and their roles',
    COMMENT COLUMN message 'What happened, in words',
    COMMENT COLUMN at 'When, UTC';

ALTER TABLE alerts
    COMMENT COLUMN alert_id 'Stable id of one alert from firing to resolved: pipeline|model|version|metric|subject|opened window',
    COMMENT COLUMN state 'firing (opened, or severity changed), resolved, or notice (a one-off event such as model_rejected that does not stay open)',
    COMMENT COLUMN severity 'warning or critical',
    COMMENT COLUMN pipeline 'Pipeline name',
    COMMENT COLUMN model 'Model name',
    COMMENT COLUMN model_version 'Model version',
    COMMENT COLUMN variant 'Role of the version in the window',
    COMMENT COLUMN metric 'drift, unseen_categories, latency_p99, cost, quality or model_rejected',
    COMMENT COLUMN subject 'Feature (or prediction.score / prediction.confidence), or segment (channel=web, all events) the metric is about, empty for latency and cost',
    COMMENT COLUMN measure 'What value and threshold are: psi, mean_shift (in std), unseen_share, p99_ms, cpu_s_per_1k, accuracy, revision',
    COMMENT COLUMN value 'Value of the measure in the window',
    COMMENT COLUMN threshold 'Band the value crossed (firing) or the lowest band it is back under (resolved)',
    COMMENT COLUMN window_start 'Start of the window that produced the record, UTC',
    COMMENT COLUMN window_end 'End of that window, UTC',
    COMMENT COLUMN count 'Events behind the value',
    COMMENT COLUMN message 'One sentence for people',
    COMMENT COLUMN opened_at 'Start of the window that opened the alert, UTC',
    COMMENT COLUMN at 'When the record was written, UTC';

-- Views for the common questions. Latency percentiles re-merged from buckets
-- are the upper bound of the bucket holding the percentile (buckets are
-- about 19% wide).

CREATE OR REPLACE VIEW drift_latest AS
SELECT pipeline, model, model_version, variant, feature, kind, window_start, window_end, count,
       psi, js_distance, ks, wasserstein, p_value, mean_shift, mean_p_value, null_rate,
       unseen_rate, status
FROM drift_windows FINAL
ORDER BY window_start DESC
LIMIT 1 BY pipeline, model, model_version, feature
COMMENT 'The newest window of every feature (and of the score and confidence) per model version';

CREATE OR REPLACE VIEW latency_hourly AS
SELECT pipeline, model, model_version, toStartOfHour(window_start) AS hour,
       sum(count) AS events,
       arrayPushBack(any(bucket_bounds_ms), inf) AS bounds,
       sumForEach(latency_buckets) AS buckets,
       arrayCumSum(buckets) AS cumulative,
       bounds[arrayFirstIndex(c -> c >= 0.50 * events, cumulative)] AS p50_ms,
       bounds[arrayFirstIndex(c -> c >= 0.95 * events, cumulative)] AS p95_ms,
       bounds[arrayFirstIndex(c -> c >= 0.99 * events, cumulative)] AS p99_ms
FROM latency_windows FINAL
WHERE count > 0
GROUP BY pipeline, model, model_version, hour
COMMENT 'End-to-end latency percentiles per hour, re-merged from the window histograms';

CREATE OR REPLACE VIEW open_alerts AS
SELECT alert_id, severity, pipeline, model, model_version, metric, subject, value, threshold,
       opened_at, window_start AS last_change, message
FROM alerts FINAL
WHERE state = 'firing'
  AND alert_id NOT IN (SELECT alert_id FROM alerts WHERE state = 'resolved')
ORDER BY window_start DESC
LIMIT 1 BY alert_id
COMMENT 'Alerts that fired and have not resolved, with their latest severity';

CREATE OR REPLACE VIEW variant_comparison AS
SELECT pipeline, model, model_version, variant, toDate(window_start) AS day,
       sum(count) AS events,
       sum(reviews) / sum(count) AS review_rate,
       arrayPushBack(any(bucket_bounds_ms), inf) AS bounds,
       arrayCumSum(sumForEach(latency_buckets)) AS cumulative,
       bounds[arrayFirstIndex(c -> c >= 0.99 * events, cumulative)] AS latency_p99_ms,
       arrayMap(x -> x / events, sumForEach(label_counts)) AS label_shares,
       any(labels) AS labels
FROM latency_windows FINAL
WHERE count > 0
GROUP BY pipeline, model, model_version, variant, day
COMMENT 'Per day and variant: events, review rate, p99 latency and the share of each label';

ALTER TABLE latency_windows MODIFY COMMENT 'Per window and model version: event count, latency and model run time percentiles and histograms, label, score and confidence histograms';

ALTER TABLE drift_windows MODIFY COMMENT 'Per window, model version and feature (or score, confidence): drift against the training reference, with the test behind it';

ALTER TABLE alerts MODIFY COMMENT 'Alert records from {pipeline}.alerts: firing, resolved, notice';

ALTER TABLE model_events MODIFY COMMENT 'What each worker did with each deployment revision from stream.control';

ALTER TABLE schema_migrations MODIFY COMMENT 'Migrations applied by stream db migrate';
