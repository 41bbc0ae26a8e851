-- title: Busiest routes
-- description: The 20 DICOMweb routes with the most requests, with the share answered with an error (4xx or 5xx) and with a server error (5xx), the bytes sent, and the mean and 95th percentile answer time.
-- chart: bar
-- x: route
-- y: requests
SELECT
    route,
    COUNT(*) AS requests,
    SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END) AS errors,
    SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END) / COUNT(*) AS error_rate,
    SUM(CASE WHEN status >= 500 THEN 1 ELSE 0 END) / COUNT(*) AS server_error_rate,
    SUM(`bytes`) AS `bytes`,
    AVG(duration_ms) AS mean_ms,
    PERCENTILE(duration_ms, 0.95) AS p95_ms
FROM wado_access_log
GROUP BY route
ORDER BY requests DESC, route
LIMIT 20
