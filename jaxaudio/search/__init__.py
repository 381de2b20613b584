"""Query-by-example search: an incremental window index of a folder and exact or HNSW queries."""
