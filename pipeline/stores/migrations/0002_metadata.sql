-- Series and study metadata. Each instance row keeps its DICOM JSON fragment (built once, at
-- indexing) so that metadata is built from rows, never by parsing files. dicom_json_meta (the
-- seed's table) says per series what is pending (json_status 0), done (1) or failed (2), and
-- which version of the series the metadata files were built from: `version` goes up with every
-- index write that touches the series, so "the file is current" is one primary-key lookup.
ALTER TABLE dicom_instance_meta ADD COLUMN json_fragment bytea;

ALTER TABLE dicom_json_meta
    ADD COLUMN version             bigint      NOT NULL DEFAULT 1,
    ADD COLUMN built_version       bigint,
    ADD COLUMN study_built_version bigint,
    ADD COLUMN built_time          timestamptz,
    ADD COLUMN regenerations       integer     NOT NULL DEFAULT 0,
    ADD COLUMN attempt_time        timestamptz,
    ADD COLUMN last_error          text;
