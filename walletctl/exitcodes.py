"""Exit codes, the part of the CLI that scripts depend on most.

They are few on purpose, so that a shell script can branch on them without reading
the output: success, "the operation was refused or found something wrong", "you
typed something wrong", and "try again later".
"""

from __future__ import annotations

import grpc

OK = 0
# The server refused the operation (not found, insufficient funds, frozen, ...), a
# transfer ended FAILED/COMPENSATED, or `reconcile` found drift.
FAILED = 1
# Bad command line, or the server rejected the input as INVALID_ARGUMENT.
USAGE = 2
# A server, the database or the broker could not be reached (or did not answer in
# time); the operation may be retried (with the same --request-id for writes).
UNAVAILABLE = 3

_TRANSIENT = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.CANCELLED,
}


def for_status(code: grpc.StatusCode) -> int:
    """The exit code for a failed RPC."""
    if code in _TRANSIENT:
        return UNAVAILABLE
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return USAGE
    return FAILED
