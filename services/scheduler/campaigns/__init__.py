"""Campaigns: the model (states and transitions, no I/O), the use cases (commands over a unit
of work, no SQL or Kafka), and the unit of work they need (protocols)."""
