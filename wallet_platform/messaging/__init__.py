"""Messages between services, none of their meaning: the bus interface (``bus``), the
broker layout (``topology``), the RabbitMQ and in-process buses (``rabbit``,
``inprocess``), the transactional outbox and its relay (``outbox``), the exactly-once
consumer runner and its inbox (``consumer``) and dead-letter administration (``dlq``)."""
