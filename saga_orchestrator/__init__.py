"""The transfer saga orchestrator (TransferService)."""
