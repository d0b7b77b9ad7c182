"""induction: task-agnostic head scores (prefix matching, copying) and capacity retained under pruning."""
