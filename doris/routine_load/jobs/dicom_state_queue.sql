-- Topic dicom_state_queue into table dicom_state_meta: one row per series, last write wins;
-- a record with deleted = 1 removes the row (merge mode: Doris's hidden delete sign).
-- ${KAFKA_BROKERS} stands for the broker list as the Doris backends reach it, e.g. kafka:9092.
-- No kafka_partitions: Doris reads every partition of the topic, from the beginning.
CREATE ROUTINE LOAD medical_state_load ON dicom_state_meta
WITH MERGE
COLUMNS (
    tenant_id,
    patient_id,
    study_uid,
    series_uid,
    study_uid_hash,
    series_uid_hash,
    study_date_origin,
    patient_name,
    patient_sex,
    patient_birth_date,
    patient_birth_time,
    patient_age,
    patient_size,
    patient_weight,
    pregnancy_status,
    study_date,
    study_time,
    accession_number,
    study_id,
    study_description,
    modality,
    series_number,
    series_date,
    series_time,
    series_description,
    body_part_examined,
    protocol_name,
    series_related_instances,
    created_time,
    deleted,
    updated_time = NOW()
),
DELETE ON deleted = 1
PROPERTIES (
    "desired_concurrent_number" = "3",
    "max_batch_interval" = "10",
    "max_batch_rows" = "300000",
    "max_batch_size" = "209715200",
    "format" = "json",
    "max_error_number" = "1000",
    "strip_outer_array" = "false"
)
FROM KAFKA (
    "kafka_broker_list" = "${KAFKA_BROKERS}",
    "kafka_topic" = "dicom_state_queue",
    "property.kafka_default_offsets" = "OFFSET_BEGINNING"
);
