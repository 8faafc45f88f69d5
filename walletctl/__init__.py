"""walletctl: the operator CLI of the wallet platform (``walletctl --help``)."""
