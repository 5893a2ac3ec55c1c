"""Benchmark CLI (`starfish bench`): back-end latency, throughput, memory and accuracy; compare; pipeline."""
