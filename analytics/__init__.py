"""The analysts' end on one machine: the Doris tables as Parquet (the sink) and DuckDB over them."""
