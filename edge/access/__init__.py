"""Who may connect and how much: tokens, origins, stream quotas and frame budgets."""
