"""Ways data goes out: the DICOMweb server."""
