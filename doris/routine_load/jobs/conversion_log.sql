-- Topic conversion_log into table conversion_record: one row per conversion attempt.
-- ${KAFKA_BROKERS} stands for the broker list as the Doris backends reach it, e.g. kafka:9092.
-- No kafka_partitions: Doris reads every partition of the topic, from the beginning.
CREATE ROUTINE LOAD medical_conversion_load ON conversion_record
COLUMNS (
    tenant_id,
    study_uid,
    series_uid,
    sop_uid,
    source_ts,
    target_ts,
    status,
    reason,
    trace_id,
    worker_node_id,
    created_time
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
    "kafka_topic" = "conversion_log",
    "property.kafka_default_offsets" = "OFFSET_BEGINNING"
);
