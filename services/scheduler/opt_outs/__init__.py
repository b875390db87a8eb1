"""Rule: an address is opted out only in a use case, its event in the same unit of work; an
opted-out address is never messaged again."""
