"""The published language of the ledger: the events WalletService writes to its log
and publishes, shared by every producer and consumer of them.

- :mod:`wallet_events.types`: the event type names (``wallet_events.type`` values);
- :mod:`wallet_events.effects`: what each type does to a balance and to the
  per-wallet statistics counters (one table; pure Python);
- :mod:`wallet_events.messages`: their protobuf messages, routing keys, decoding and
  outbox rows.

``types`` and ``effects`` import nothing but the standard library, so pure domain code
may use them; ``messages`` needs the generated protobuf code.
"""
