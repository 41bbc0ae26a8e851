-- One row per series, with patient and study attributes, loaded from topic dicom_state_queue by
-- the Routine Load job medical_state_load. The seed design table, unchanged.
CREATE TABLE IF NOT EXISTS dicom_state_meta (
    -- Basic identification information
    tenant_id VARCHAR(64) NOT NULL,
    patient_id VARCHAR(64) NOT NULL,
    study_uid VARCHAR(64) NOT NULL,
    series_uid VARCHAR(64) NOT NULL,
    study_uid_hash VARCHAR(20) NOT NULL,
    series_uid_hash VARCHAR(20) NOT NULL,
    study_date_origin VARCHAR(8) NOT NULL,

    -- Patient information
    patient_name VARCHAR(64) NULL,
    patient_sex VARCHAR(1) NULL,
    patient_birth_date DATE NULL,
    patient_birth_time VARCHAR(16) NULL,
    patient_age VARCHAR(16) NULL,
    patient_size DOUBLE NULL,
    patient_weight DOUBLE NULL,
    pregnancy_status INT NULL,

    -- Study information
    study_date DATE NOT NULL,
    study_time VARCHAR(16) NULL,
    accession_number VARCHAR(16) NOT NULL,
    study_id VARCHAR(16) NULL,
    study_description VARCHAR(64) NULL,

    -- Series information
    modality VARCHAR(16) NULL,
    series_number INT NULL,
    series_date DATE NULL,
    series_time VARCHAR(16) NULL,
    series_description VARCHAR(256) NULL,
    body_part_examined VARCHAR(64) NULL,
    protocol_name VARCHAR(64) NULL,

    -- Timestamps
    created_time DATETIME NULL,
    deleted TINYINT NULL COMMENT "1 on the record that deleted the series (never stored: merged as a delete)",
    updated_time DATETIME NULL
)
ENGINE=OLAP
UNIQUE KEY(tenant_id, patient_id, study_uid, series_uid)
DISTRIBUTED BY HASH(tenant_id) BUCKETS 1
PROPERTIES("replication_num" = "1");
