-- The study list. A QIDO-RS study search walks dicom_state_study_order from the newest study and
-- stops once it has a page (pipeline/stores/search.py), so its cost does not grow with the
-- archive. A condition on PatientName is checked on every entry the walk passes (about 19,000
-- for SMI* at 1M studies): with the name in the index, that walk never leaves it (an index-only
-- scan) instead of reading a heap page per entry: at 1M studies (tests/bench/growth.py's archive)
-- a name prefix search took 47 ms (p50) before, 11 ms after. The index is rebuilt in this
-- migration's transaction, which holds the series table exclusively until it commits: reads and
-- writes of dicom_state_meta wait for it (2.3 s for 1.75M series here). Run `pacsflow migrate`
-- for this version at a quiet time on a big archive.
DROP INDEX dicom_state_study_order;
CREATE INDEX dicom_state_study_order ON dicom_state_meta
    (tenant_id, study_date DESC NULLS LAST, study_time DESC NULLS LAST, study_uid) INCLUDE (patient_name);
