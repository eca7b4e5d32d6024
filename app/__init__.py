"""What people use: the CLI, the local cluster, the TUI and the web view."""
