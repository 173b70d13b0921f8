"""Deployment tests: the Dockerfile and compose files, checked and run without a Docker engine."""
