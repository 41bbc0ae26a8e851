-- The DICOMweb read path. ReferringPhysicianName is a study attribute OHIF's study list shows and
-- QIDO-RS matches on. frame_index says where each frame's bytes are in the instance's file
-- (pipeline/frames.py), so that a frame of a 1,000-frame instance costs one seek; NULL where it
-- could not be computed (deflated files, rows indexed before this migration): frames are then
-- read by parsing the file.
ALTER TABLE dicom_state_meta ADD COLUMN referring_physician_name varchar(64);
ALTER TABLE dicom_instance_meta ADD COLUMN frame_index bytea;
CREATE INDEX dicom_state_referring ON dicom_state_meta (tenant_id, lower(referring_physician_name) text_pattern_ops);
CREATE INDEX dicom_state_study_order ON dicom_state_meta (tenant_id, study_date DESC NULLS LAST, study_time DESC NULLS LAST, study_uid);
