-- title: Busiest studies
-- description: The 20 studies with the most DICOMweb requests, with the share answered with an error (4xx or 5xx), the bytes sent and the mean answer time.
-- chart: bar
-- x: study_uid
-- y: requests
SELECT
    tenant_id,
    study_uid,
    COUNT(*) AS requests,
    SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END) AS errors,
    SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END) / COUNT(*) AS error_rate,
    SUM(`bytes`) AS `bytes`,
    AVG(duration_ms) AS mean_ms
FROM wado_access_log
WHERE study_uid IS NOT NULL
GROUP BY tenant_id, study_uid
ORDER BY requests DESC, tenant_id, study_uid
LIMIT 20
