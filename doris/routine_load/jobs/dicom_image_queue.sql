-- Topic dicom_image_queue into table dicom_image_meta: one row per instance, last write wins;
-- a record with deleted = 1 removes the row (merge mode: Doris's hidden delete sign).
-- ${KAFKA_BROKERS} stands for the broker list as the Doris backends reach it, e.g. kafka:9092.
-- No kafka_partitions: Doris reads every partition of the topic, from the beginning.
CREATE ROUTINE LOAD medical_image_load ON dicom_image_meta
WITH MERGE
COLUMNS (
    tenant_id,
    patient_id,
    study_uid,
    series_uid,
    sop_uid,
    study_uid_hash,
    series_uid_hash,
    study_date_origin,
    content_date,
    content_time,
    instance_number,
    image_type,
    image_orientation_patient,
    image_position_patient,
    slice_thickness,
    spacing_between_slices,
    slice_location,
    samples_per_pixel,
    photometric_interpretation,
    width,
    `columns`,
    bits_allocated,
    bits_stored,
    high_bit,
    pixel_representation,
    rescale_intercept,
    rescale_slope,
    rescale_type,
    window_center,
    window_width,
    transfer_syntax_uid,
    pixel_data_location,
    thumbnail_location,
    sop_class_uid,
    image_status,
    space_size,
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
    "kafka_topic" = "dicom_image_queue",
    "property.kafka_default_offsets" = "OFFSET_BEGINNING"
);
