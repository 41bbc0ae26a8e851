-- Topic wado_access_log into table wado_access_log: one row per DICOMweb request.
-- ${KAFKA_BROKERS} stands for the broker list as the Doris backends reach it, e.g. kafka:9092.
-- No kafka_partitions: Doris reads every partition of the topic, from the beginning.
CREATE ROUTINE LOAD medical_access_load ON wado_access_log
COLUMNS (
    tenant_id,
    route,
    study_uid,
    series_uid,
    sop_uid,
    status,
    bytes,
    duration_ms,
    client_address,
    trace_id,
    created_time,
    worker_node_id
)
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
    "kafka_topic" = "wado_access_log",
    "property.kafka_default_offsets" = "OFFSET_BEGINNING"
);
