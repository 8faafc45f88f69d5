"""Events between services: the bus interface, its RabbitMQ and in-process
implementations, the exactly-once consumer runner and dead-letter administration."""
