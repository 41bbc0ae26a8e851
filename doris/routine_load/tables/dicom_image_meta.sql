-- One row per instance, with image attributes, loaded from topic dicom_image_queue by the
-- Routine Load job medical_image_load. The seed design table, unchanged but for quoting the
-- column named `columns`, a keyword in Doris SQL.
CREATE TABLE IF NOT EXISTS dicom_image_meta (
    -- Basic identification information
    tenant_id VARCHAR(64) NOT NULL COMMENT "Tenant ID",
    patient_id VARCHAR(64) NOT NULL COMMENT "Patient ID",
    study_uid VARCHAR(64) NOT NULL COMMENT "Study UID",
    series_uid VARCHAR(64) NOT NULL COMMENT "Series UID",
    sop_uid VARCHAR(64) NOT NULL COMMENT "Instance UID",

    -- Hash values
    study_uid_hash VARCHAR(20) NOT NULL COMMENT "Study UID hash value",
    series_uid_hash VARCHAR(20) NOT NULL COMMENT "Series UID hash value",

    -- Time related
    study_date_origin DATE NOT NULL COMMENT "Study date (original format)",
    content_date DATE COMMENT "Content date",
    content_time VARCHAR(32) COMMENT "Content time",

    -- Image basic information
    instance_number INT COMMENT "Instance number",
    image_type VARCHAR(128) COMMENT "Image type",
    image_orientation_patient VARCHAR(128) COMMENT "Image orientation (patient coordinate system)",
    image_position_patient VARCHAR(64) COMMENT "Image position (patient coordinate system)",

    -- Image dimension parameters
    slice_thickness DOUBLE COMMENT "Slice thickness",
    spacing_between_slices DOUBLE COMMENT "Spacing between slices",
    slice_location DOUBLE COMMENT "Slice location",

    -- Pixel data attributes
    samples_per_pixel INT COMMENT "Samples per pixel",
    photometric_interpretation VARCHAR(32) COMMENT "Photometric interpretation",
    width INT COMMENT "Image rows",
    `columns` INT COMMENT "Image columns",
    bits_allocated INT COMMENT "Bits allocated",
    bits_stored INT COMMENT "Bits stored",
    high_bit INT COMMENT "High bit",
    pixel_representation INT COMMENT "Pixel representation",

    -- Reconstruction parameters
    rescale_intercept DOUBLE COMMENT "Reconstruction intercept",
    rescale_slope DOUBLE COMMENT "Reconstruction slope",
    rescale_type VARCHAR(64) COMMENT "Reconstruction type",
    window_center VARCHAR(64) COMMENT "Window center",
    window_width VARCHAR(64) COMMENT "Window width",

    -- Transfer and classification information
    transfer_syntax_uid VARCHAR(64) NOT NULL COMMENT "Transfer syntax UID",
    pixel_data_location VARCHAR(512) COMMENT "Pixel data location",
    thumbnail_location VARCHAR(512) COMMENT "Thumbnail location",
    sop_class_uid VARCHAR(64) NOT NULL COMMENT "SOP class UID",
    image_status VARCHAR(32) COMMENT "Image status",
    space_size BIGINT COMMENT "Occupied space size",
    created_time DATETIME COMMENT "Creation time",
    deleted TINYINT COMMENT "1 on the record that deleted the instance (never stored: merged as a delete)",
    updated_time DATETIME COMMENT "Update time"
)
ENGINE=OLAP
UNIQUE KEY(tenant_id, patient_id, study_uid, series_uid, sop_uid)
DISTRIBUTED BY HASH(tenant_id) BUCKETS 1
PROPERTIES("replication_num" = "1");
