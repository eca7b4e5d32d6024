"""What drives: scenarios that write to the stores, their primitives, runner and checkers."""
