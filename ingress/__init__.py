"""Ways instances come in: the DICOM C-STORE SCP."""
