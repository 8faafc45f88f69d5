"""walletctl: the operator CLI."""
