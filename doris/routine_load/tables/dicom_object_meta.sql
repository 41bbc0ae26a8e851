-- One row per received object, loaded from topic log_queue by the Routine Load job
-- medical_object_load. The seed design table, unchanged.
CREATE TABLE IF NOT EXISTS dicom_object_meta
(
    tenant_id           varchar(64)   not null comment 'Tenant ID',
    patient_id          varchar(64)   not null comment 'Patient ID',
    study_uid           varchar(64)   null,
    series_uid          varchar(64)   null,
    sop_uid             varchar(64)   null,
    file_size           bigint        null,
    file_path           varchar(512)  null,
    transfer_syntax_uid varchar(64)   null,
    number_of_frames    int           null,
    created_time        datetime      null,
    series_uid_hash     VARCHAR(20)   null,
    study_uid_hash      VARCHAR(20)   null,
    accession_number    varchar(64)   null,
    target_ts           varchar(64)   null,
    study_date          date          null,
    transfer_status     varchar(64)   null,
    source_ip           varchar(24)   null,
    source_ae           varchar(64)   null,
    trace_id            varchar(36)   not null comment 'Globally unique trace ID, as primary key',
    worker_node_id      varchar(64)   not null comment 'Worker node ID'
)
ENGINE=OLAP
DUPLICATE KEY(tenant_id,patient_id,study_uid,series_uid,sop_uid)
DISTRIBUTED BY HASH(tenant_id) BUCKETS 1
PROPERTIES("replication_num" = "1");
