"""Thin job entrypoints: each parses arguments, loads config, starts Ray and calls one pipeline function."""
