"""Benchmarks: sampler accuracy vs NFE on exact-score mixtures, train-step throughput."""
