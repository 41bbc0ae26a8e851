"""The aiohttp DICOMweb server (QIDO-RS, WADO-RS, STOW-RS)."""
