-- title: Transfer syntaxes received
-- description: Objects received in each transfer syntax (every store counted, a re-sent instance again), the distinct instances and the bytes, with the first and last receipt (UTC).
-- chart: bar
-- x: transfer_syntax_uid
-- y: objects
SELECT
    transfer_syntax_uid,
    COUNT(*) AS objects,
    COUNT(DISTINCT tenant_id, sop_uid) AS instances,
    SUM(file_size) AS `bytes`,
    MIN(created_time) AS first_received,
    MAX(created_time) AS last_received
FROM dicom_object_meta
GROUP BY transfer_syntax_uid
ORDER BY objects DESC, transfer_syntax_uid
