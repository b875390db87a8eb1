"""The console: the web UI for election staff and texters. A client of the scheduler's and the
tracker's public HTTP APIs only; it owns no tables and no topics."""
