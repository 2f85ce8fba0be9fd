-- Cost: process CPU time per model version and window, and batch sizes.

ALTER TABLE latency_windows ADD COLUMN IF NOT EXISTS cpu_seconds Float64 DEFAULT 0 COMMENT 'Process CPU time attributed to the version''s events: each batch takes the CPU the process used since the previous one, shared among the versions it scored by events';

ALTER TABLE latency_windows ADD COLUMN IF NOT EXISTS cpu_seconds_per_1k Float64 DEFAULT nan COMMENT 'cpu_seconds per 1,000 events scored (the cost of a thousand predictions)';

ALTER TABLE latency_windows ADD COLUMN IF NOT EXISTS model_runs UInt64 DEFAULT 0 COMMENT 'ONNX runs of the version in the window (one per batch and version)';

ALTER TABLE latency_windows ADD COLUMN IF NOT EXISTS batch_bounds Array(UInt64) DEFAULT [] COMMENT 'Upper bounds of the batch size buckets: 1, 2, 4 ... 16384, the last bucket has no bound';

ALTER TABLE latency_windows ADD COLUMN IF NOT EXISTS batch_buckets Array(UInt64) DEFAULT [] COMMENT 'Batch size histogram on batch_bounds: one count per model run';

CREATE OR REPLACE VIEW cost_hourly AS
SELECT pipeline, model, model_version, variant, toStartOfHour(window_start) AS hour,
       sum(count) AS events,
       sum(cpu_seconds) AS cpu_total_seconds,
       1000 * cpu_total_seconds / events AS cpu_seconds_per_1k,
       events / sum(model_runs) AS mean_batch_size
FROM latency_windows FINAL
WHERE count > 0
GROUP BY pipeline, model, model_version, variant, hour
COMMENT 'Per hour and model version: events, process CPU seconds, CPU seconds per 1,000 predictions, mean batch size';
