"""charloop: a declarative loop that makes one character consistent in text-to-image models.

The library layer: pure, testable logic. It never imports prefect; ``tasks/`` and ``flows/``
wrap it for orchestration, and the CLI and DVC stages call the same functions.
"""

__version__ = "0.1.0"
