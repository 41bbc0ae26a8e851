"""The analysts' reports, written once in Doris SQL; run locally through sqlglot on DuckDB."""
