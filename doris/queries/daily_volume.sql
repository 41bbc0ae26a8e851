-- title: Studies, series and instances per day
-- description: Instances indexed each day (UTC), by tenant and modality, with the studies and series they belong to. Deleted instances are not counted; a modality is empty until its series' record has arrived.
-- chart: bar
-- x: day
-- y: instances
SELECT
    DATE(i.created_time) AS `day`,
    i.tenant_id,
    s.modality,
    COUNT(DISTINCT i.study_uid) AS studies,
    COUNT(DISTINCT i.series_uid) AS series,
    COUNT(*) AS instances
FROM dicom_image_meta AS i
LEFT JOIN dicom_state_meta AS s
    ON s.tenant_id = i.tenant_id
    AND s.patient_id = i.patient_id
    AND s.study_uid = i.study_uid
    AND s.series_uid = i.series_uid
GROUP BY DATE(i.created_time), i.tenant_id, s.modality
ORDER BY `day`, i.tenant_id, s.modality
