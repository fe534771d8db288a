"""Where data lives: manifests and media URIs (local or S3, size-limited reads), the Parquet feature store
(its layout, commits and resume records), atomic local files, and features joined into training pairs."""
