"""Evaluation of a model artifact: retrieval metrics, the report (zero-shot, modality gap, plots) and the
jointly trained baseline it is compared with."""
