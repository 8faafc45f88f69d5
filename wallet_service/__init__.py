"""WalletService: wallets, deposits, withdrawals, history, freeze, transfer steps."""
