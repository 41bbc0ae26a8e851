-- title: Ingest latency per hour
-- description: Seconds from an instance's receipt (C-STORE or STOW-RS) to its indexing, per hour of receipt (UTC): median, 95th and 99th percentile and maximum. Each instance is paired with its last receipt before it was indexed. Both times are whole seconds, and so are the latencies.
-- chart: line
-- x: hour
-- y: p50_s, p95_s, p99_s
WITH paired AS (
    SELECT
        i.created_time AS indexed_time,
        MAX(o.created_time) AS received_time
    FROM dicom_image_meta AS i
    JOIN dicom_object_meta AS o
        ON o.tenant_id = i.tenant_id
        AND o.study_uid = i.study_uid
        AND o.series_uid = i.series_uid
        AND o.sop_uid = i.sop_uid
        AND o.created_time <= i.created_time
    GROUP BY i.tenant_id, i.study_uid, i.series_uid, i.sop_uid, i.created_time
)
SELECT
    DATE_TRUNC(received_time, 'hour') AS `hour`,
    COUNT(*) AS instances,
    PERCENTILE(TIMESTAMPDIFF(SECOND, received_time, indexed_time), 0.5) AS p50_s,
    PERCENTILE(TIMESTAMPDIFF(SECOND, received_time, indexed_time), 0.95) AS p95_s,
    PERCENTILE(TIMESTAMPDIFF(SECOND, received_time, indexed_time), 0.99) AS p99_s,
    MAX(TIMESTAMPDIFF(SECOND, received_time, indexed_time)) AS max_s
FROM paired
GROUP BY DATE_TRUNC(received_time, 'hour')
ORDER BY `hour`
