"""The transactional outbox: rows written in the business transaction (``rows``),
moved onto the bus by the relay (``relay``), all of its SQL in ``store``.

Every service that announces something writes an outbox row in the same transaction as
the change (the wallet service its log entries, the saga its milestones, the fraud
worker its alerts); one relay per database publishes them all.
"""
