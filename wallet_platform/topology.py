"""The broker layout every process shares: exchanges, the consumer queues, their
dead-letter queues and the binding between them.

These names are the platform's public contract (operators, dashboards and
``walletctl dlq`` use them); they say where messages go, not what they mean. What a
message means is the publisher's business (``wallet_events`` for the ledger's events).
"""

from __future__ import annotations

EXCHANGE = "wallet.events"  # topic exchange every outbox row is published to
DEAD_LETTER_EXCHANGE = "wallet.events.dlx"  # direct exchange feeding the DLQs
ANALYTICS_QUEUE = "analytics.wallet-events"
FRAUD_QUEUE = "fraud.wallet-events"
ANALYTICS_DLQ = "analytics.wallet-events.dlq"
FRAUD_DLQ = "fraud.wallet-events.dlq"
CONTENT_TYPE = "application/x-protobuf"

# Each consumer queue is bound with BINDING_KEY and dead-letters through the DLX with
# its own routing key (= its DLQ's name) into its DLQ.
BINDING_KEY = "wallet.#"
QUEUES: dict[str, str] = {
    ANALYTICS_QUEUE: ANALYTICS_DLQ,
    FRAUD_QUEUE: FRAUD_DLQ,
}
DLQ_TO_QUEUE: dict[str, str] = {dlq: queue for queue, dlq in QUEUES.items()}
# Each consumer's name (its ``inbox.consumer`` rows, its metrics label) -> its queue.
CONSUMER_QUEUES: dict[str, str] = {"analytics": ANALYTICS_QUEUE, "fraud": FRAUD_QUEUE}
