"""What every scenario shares: its context, history, faults, processes and registry entry."""
