-- One row per DICOMweb request answered by `pacsflow web`, loaded from topic wado_access_log by
-- the Routine Load job medical_access_load. Duplicate key: every request is kept, none merged.
CREATE TABLE IF NOT EXISTS wado_access_log
(
    tenant_id           varchar(64)   not null comment 'Tenant ID',
    route               varchar(128)  null     comment 'Route pattern, not the URL with its UIDs',
    study_uid           varchar(64)   null,
    series_uid          varchar(64)   null,
    sop_uid             varchar(64)   null,
    status              int           null     comment 'HTTP status',
    bytes               bigint        null     comment 'Bytes sent for the answer: status line, headers, body',
    duration_ms         double        null     comment 'Time to answer, milliseconds',
    client_address      varchar(64)   null     comment 'Client address, from X-Forwarded-For behind nginx',
    trace_id            varchar(36)   not null comment 'Globally unique trace ID',
    created_time        datetime      null     comment 'When the request arrived, UTC',
    worker_node_id      varchar(64)   not null comment 'Node that answered'
)
ENGINE=OLAP
DUPLICATE KEY(tenant_id,route,study_uid,series_uid,sop_uid)
DISTRIBUTED BY HASH(tenant_id) BUCKETS 1
PROPERTIES("replication_num" = "1");
