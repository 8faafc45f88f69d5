"""Shared plumbing for every wallet platform process.

Configuration, logging, failpoints, database engines and migrations, the table
definitions, domain error types and their gRPC mapping, input validation and the
gRPC server builder. Nothing here knows about a particular service's rules.
"""
