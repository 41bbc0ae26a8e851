-- The index: the seed's dicom_state_meta (one row per series, with its patient and study) and
-- dicom_json_meta (series whose metadata must be regenerated), plus one row per SOP instance so
-- that counts are computed from rows, never incremented (delivery is at least once).
-- Every key starts with tenant_id (Citus-ready). Departures from the seed, where real data needs
-- them: study_date and accession_number may be empty (both are type 2 in DICOM).

CREATE TABLE dicom_state_meta (
    tenant_id                varchar(64) NOT NULL,
    patient_id               varchar(64) NOT NULL,
    study_uid                varchar(64) NOT NULL,
    series_uid               varchar(64) NOT NULL,
    study_uid_hash           varchar(20) NOT NULL,
    series_uid_hash          varchar(20) NOT NULL,
    patient_name             varchar(64),
    patient_sex              varchar(1),
    patient_birth_date       date,
    patient_birth_time       time,
    patient_age              varchar(16),
    patient_size             double precision,
    patient_weight           double precision,
    pregnancy_status         integer,
    study_date               date,
    study_date_origin        varchar(8)  NOT NULL,
    study_time               time,
    accession_number         varchar(16) NOT NULL,
    study_id                 varchar(16),
    study_description        varchar(64),
    modality                 varchar(16),
    series_number            integer,
    series_date              date,
    series_time              time,
    series_description       varchar(256),
    body_part_examined       varchar(64),
    protocol_name            varchar(64),
    series_related_instances integer,
    created_time             timestamp,
    updated_time             timestamp,
    PRIMARY KEY (tenant_id, study_uid, series_uid)
);

CREATE UNIQUE INDEX index_state_unique
    ON dicom_state_meta (tenant_id, study_uid, series_uid, accession_number);

CREATE TABLE dicom_json_meta (
    tenant_id         varchar(64) NOT NULL,
    study_uid         varchar(64) NOT NULL,
    series_uid        varchar(64) NOT NULL,
    study_uid_hash    varchar(20) NOT NULL,
    series_uid_hash   varchar(20) NOT NULL,
    study_date_origin varchar(8)  NOT NULL,
    flag_time         timestamp   NOT NULL,
    created_time      timestamp   NOT NULL DEFAULT current_timestamp(6),
    json_status       int         NOT NULL DEFAULT 0,
    retry_times       int         NOT NULL DEFAULT 0,
    CONSTRAINT pk_dicom_json_meta PRIMARY KEY (tenant_id, study_uid, series_uid)
);

CREATE TABLE dicom_instance_meta (
    tenant_id           varchar(64)  NOT NULL,
    study_uid           varchar(64)  NOT NULL,
    series_uid          varchar(64)  NOT NULL,
    sop_uid             varchar(64)  NOT NULL,
    sop_class_uid       varchar(64)  NOT NULL,
    instance_number     integer,
    transfer_syntax_uid varchar(64)  NOT NULL,
    number_of_frames    integer,
    rows                integer,
    columns             integer,
    file_path           varchar(512) NOT NULL,
    file_size           bigint       NOT NULL,
    received_time       timestamptz  NOT NULL,
    indexed_time        timestamptz  NOT NULL DEFAULT clock_timestamp(),
    trace_id            varchar(36)  NOT NULL,
    PRIMARY KEY (tenant_id, study_uid, series_uid, sop_uid)
);

-- What QIDO-RS searches by.
CREATE INDEX dicom_instance_sop ON dicom_instance_meta (tenant_id, sop_uid);
CREATE INDEX dicom_state_patient_id ON dicom_state_meta (tenant_id, patient_id);
CREATE INDEX dicom_state_patient_name ON dicom_state_meta (tenant_id, lower(patient_name) text_pattern_ops);
CREATE INDEX dicom_state_study_date ON dicom_state_meta (tenant_id, study_date);
CREATE INDEX dicom_state_accession ON dicom_state_meta (tenant_id, accession_number);
CREATE INDEX dicom_state_modality ON dicom_state_meta (tenant_id, modality);
CREATE INDEX dicom_state_series ON dicom_state_meta (tenant_id, series_uid);
CREATE INDEX dicom_json_pending ON dicom_json_meta (json_status, flag_time) WHERE json_status <> 1;
