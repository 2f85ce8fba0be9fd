"""Deployment state: which model versions serve a pipeline, and how traffic is routed."""
