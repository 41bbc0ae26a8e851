-- The change feed (GET .../dicomweb/changefeed, as Microsoft's DICOM service has it): one row per
-- create, update (a re-send of an instance already stored: it replaces it) and delete of an
-- instance, written by the index agent in the transaction that changes the index rows
-- (pipeline/stores/changefeed.py). ``state`` is what the metadata a row points at is now: a
-- create or update is 'current' until a later row of the same instance makes it 'replaced' (a
-- re-send) or 'deleted'; a delete is 'deleted'. Sequences are taken under a per-tenant lock held
-- until commit, so within a tenant they are committed in order and a reader never skips one that
-- commits later. The key starts with tenant_id (Citus-ready) and serves reads by sequence.
CREATE TABLE dicom_change_feed (
    tenant_id  varchar(64) NOT NULL,
    sequence   bigint      GENERATED ALWAYS AS IDENTITY,
    study_uid  varchar(64) NOT NULL,
    series_uid varchar(64) NOT NULL,
    sop_uid    varchar(64) NOT NULL,
    action     text        NOT NULL CHECK (action IN ('create', 'update', 'delete')),
    state      text        NOT NULL CHECK (state IN ('current', 'replaced', 'deleted')),
    timestamp  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (tenant_id, sequence)
);

-- An instance's earlier rows, whose state a new row changes. ``state`` is in no index, so that
-- change is a HOT update.
CREATE INDEX dicom_change_feed_instance ON dicom_change_feed (tenant_id, study_uid, series_uid, sop_uid);
-- startTime / endTime.
CREATE INDEX dicom_change_feed_time ON dicom_change_feed (tenant_id, timestamp);

-- The instances indexed before this migration: a 'create' entry each, dated and numbered in the
-- order they were indexed, so that a client reading the feed from its start sees the whole archive
-- (one sort of the instance table, once).
INSERT INTO dicom_change_feed (tenant_id, study_uid, series_uid, sop_uid, action, state, timestamp)
SELECT tenant_id, study_uid, series_uid, sop_uid, 'create', 'current', indexed_time
FROM dicom_instance_meta
ORDER BY indexed_time, tenant_id, study_uid, series_uid, sop_uid;
