-- Topic log_queue into table dicom_object_meta, one field of DicomObjectMeta per line below.
-- ${KAFKA_BROKERS} stands for the broker list as the Doris backends reach it, e.g. kafka:9092.
-- No kafka_partitions: Doris reads every partition of the topic, from the beginning.
CREATE ROUTINE LOAD medical_object_load ON dicom_object_meta
COLUMNS (
    trace_id,
    worker_node_id,
    tenant_id,
    patient_id,
    study_uid,
    series_uid,
    sop_uid,
    file_size,
    file_path,
    transfer_syntax_uid,
    number_of_frames,
    created_time,
    series_uid_hash,
    study_uid_hash,
    accession_number,
    target_ts,
    study_date,
    transfer_status,
    source_ip,
    source_ae
)
PROPERTIES (
    "desired_concurrent_number" = "3",
    "max_batch_interval" = "10",
    "max_batch_rows" = "300000",
    "max_batch_size" = "209715200",
    "format" = "json",
    "max_error_number" = "1000"
)
FROM KAFKA (
    "kafka_broker_list" = "${KAFKA_BROKERS}",
    "kafka_topic" = "log_queue",
    "property.kafka_default_offsets" = "OFFSET_BEGINNING"
);
