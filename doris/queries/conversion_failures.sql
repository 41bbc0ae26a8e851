-- title: Conversion failures by transfer syntax
-- description: Conversion attempts for the viewer by the syntax converted from and to: converted, failed and skipped (the instance was replaced or deleted first), the share that failed, and one of the failures' reasons.
-- chart: bar
-- x: source_ts
-- y: failed
SELECT
    source_ts,
    target_ts,
    COUNT(*) AS attempts,
    SUM(CASE WHEN status = 'converted' THEN 1 ELSE 0 END) AS converted,
    SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END) AS failed,
    SUM(CASE WHEN status = 'skipped' THEN 1 ELSE 0 END) AS skipped,
    SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END) / COUNT(*) AS failure_rate,
    MIN(CASE WHEN status = 'failed' THEN reason END) AS a_reason
FROM conversion_record
GROUP BY source_ts, target_ts
ORDER BY failed DESC, source_ts, target_ts
