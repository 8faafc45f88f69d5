"""The saga's persistence adapters: every SQL statement on the saga tables.

- ``rows``: domain transfer <-> table rows;
- ``queries``: the reads (one saga, pages, the summary, the watch poll);
- ``unit_of_work``: :class:`SagaUnitOfWork`, the writes of one transaction;
- ``grouped``: the same writes as rows for PostgreSQL's group commit
  (``saga_orchestrator.group_commit``).

``saga_orchestrator.repository`` chooses between the last two and is the only user of
this package; what a write contains is decided by the domain (``saga_orchestrator.domain``).
"""
