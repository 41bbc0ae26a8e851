"""The Doris DDL (tables/) and Routine Load jobs (jobs/), as ``doris.schema`` generates them from
``pipeline/models``: regenerate with ``python -m doris.schema``, never edit by hand (a test compares)."""
