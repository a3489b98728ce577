"""The processes: the shared node runtime, agent, gateway, presence, serving, fleet control."""
