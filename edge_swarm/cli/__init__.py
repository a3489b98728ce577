"""The command line, one module per command group; only ``edge_swarm.__main__`` imports it."""
