"""edge-swarm's standard workload on Flower 1.42 (benchmarks/bench_lean.py --flower)."""
