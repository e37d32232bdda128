"""goalkeeper.protocol."""
