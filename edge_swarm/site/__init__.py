"""Operator tasks: provisioning, device profiles, bundles, broker config, demo, launch."""
