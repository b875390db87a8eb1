"""Rule: users, their tokens and passwords change only in a use case, in one unit of work."""
