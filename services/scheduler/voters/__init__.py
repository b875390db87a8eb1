"""Voter directory: voters kept across campaigns, static lists of them, campaigns that target
lists, and a voter's page (details, lists, campaigns, export, erasure).

The same rooms as a service: `service` (the streamed CSV import), `domain` (pure validation
and parsing), `repo` (SQL on the scheduler's schema), `views` (the answers' JSON); its HTTP
routes are ../entrypoints/http/voters.py.
"""
