"""The ``charloop`` command: the application layer above flows, tasks and the library."""
