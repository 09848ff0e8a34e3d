"""Management layer: topology, placement, node health, the object write/read path, repair."""
