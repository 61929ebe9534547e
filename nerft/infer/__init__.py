"""Batched generation and answer decoding."""
