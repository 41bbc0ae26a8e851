-- Conversion: an instance stored in a transfer syntax the viewer cannot decode gets a converted
-- copy beside its file (StorageLayout.converted_path: <sop>.converted). conversion_status is NULL
-- (none needed), 0 (pending), 1 (done: converted_syntax and converted_frame_index describe the
-- copy) or 2 (failed: conversion_error says why). A new store of the instance resets all four.
ALTER TABLE dicom_instance_meta
    ADD COLUMN conversion_status     smallint,
    ADD COLUMN converted_syntax      varchar(64),
    ADD COLUMN converted_frame_index bytea,
    ADD COLUMN conversion_error      text;
CREATE INDEX dicom_instance_conversion ON dicom_instance_meta (conversion_status)
    WHERE conversion_status IN (0, 2);
