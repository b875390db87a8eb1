"""Rule: a sender or a template is added or edited only in a use case; a template's edit adds a
version, and a campaign keeps the version it pinned."""
