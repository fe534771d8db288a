"""The embed job (Ray Data): manifest → decode tasks → frozen-encoder actors → feature store, resumable."""
