-- One row per transfer syntax conversion attempted by the conversion agent, loaded from topic
-- conversion_log by the Routine Load job medical_conversion_load. Duplicate key: every attempt is kept.
CREATE TABLE IF NOT EXISTS conversion_record
(
    tenant_id           varchar(64)   not null comment 'Tenant ID',
    study_uid           varchar(64)   null,
    series_uid          varchar(64)   null,
    sop_uid             varchar(64)   null,
    source_ts           varchar(64)   null     comment 'Transfer syntax UID of the received file',
    target_ts           varchar(64)   null     comment 'Transfer syntax UID converted to',
    status              varchar(32)   null     comment 'Outcome of the conversion',
    reason              varchar(512)  null     comment 'Why it failed or was skipped',
    trace_id            varchar(36)   not null comment 'Globally unique trace ID',
    worker_node_id      varchar(64)   not null comment 'Worker node ID',
    created_time        datetime      null     comment 'When the conversion finished, UTC'
)
ENGINE=OLAP
DUPLICATE KEY(tenant_id,study_uid,series_uid,sop_uid)
DISTRIBUTED BY HASH(tenant_id) BUCKETS 1
PROPERTIES("replication_num" = "1");
