-- title: Storage per tenant
-- description: Bytes of the instances each tenant holds (as received; converted copies for the viewer are not counted), with its studies, series and instances. Deleted instances are not counted.
-- chart: bar
-- x: tenant_id
-- y: bytes
SELECT
    tenant_id,
    COUNT(DISTINCT study_uid) AS studies,
    COUNT(DISTINCT series_uid) AS series,
    COUNT(*) AS instances,
    SUM(space_size) AS `bytes`
FROM dicom_image_meta
GROUP BY tenant_id
ORDER BY `bytes` DESC, tenant_id
