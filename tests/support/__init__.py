"""Real peers and real data for the tests: DICOM files, a Tansu broker, pacsflow processes."""
