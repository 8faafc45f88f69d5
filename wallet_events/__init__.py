"""The published language of the ledger: the events WalletService writes to its log
and publishes, shared by every producer and consumer of them.

- :mod:`wallet_events.types`: the event type names (``wallet_events.type`` values);
- :mod:`wallet_events.effects`: what each type does to a balance and to the
  per-wallet statistics counters (one table; pure Python);

Both import nothing but the standard library, so pure domain code may use them (an
import-linter contract in pyproject.toml keeps it so). Their protobuf messages, routing
keys, decoding and outbox rows are the messaging edge's:
:mod:`wallet_platform.messaging.events`.
"""
