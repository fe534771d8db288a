"""The index job and search over its segments (aligned vectors on disk, exact or HNSW)."""
