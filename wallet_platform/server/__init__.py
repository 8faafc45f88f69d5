"""Serving gRPC: one way to assemble a server (interceptors, security, health,
reflection), the process life cycle, and several processes on one port."""
