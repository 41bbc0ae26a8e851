"""pacsflow: a DICOMweb service built as a Kafka stream-processing pipeline."""

__version__ = "0.1.0"
