"""OneEncoder on Ray: the library behind the jobs (embed now; train and serve build on it)."""
