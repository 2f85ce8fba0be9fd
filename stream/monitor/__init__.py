"""Mergeable window statistics, drift measures and the monitor agent."""
