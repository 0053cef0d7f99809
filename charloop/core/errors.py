"""The kinds of failure a user can act on, each with its own exit code.

Every error charloop raises on purpose derives from one of three classes, so the CLI maps
it to an exit code and a one-line message, and the Prefect tasks know not to retry it
(retrying cannot fix a bad input or a refused check; it only hides the message):

- :class:`BadInput` (exit 2): the params file, an argument or a path is wrong; fix it.
- :class:`Refused` (exit 3): a gate or an integrity check said no (a hash mismatch, a
  broken lineage, a corrupt seal, too few images kept); nothing was changed.
- :class:`CharloopError` (exit 1): the work failed (a diverged loss, a review that timed out).
"""

from __future__ import annotations

EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_REFUSED = 3


class CharloopError(Exception):
    """A failure charloop explains itself; not worth retrying."""

    exit_code = EXIT_FAILURE


class BadInput(CharloopError):
    """Input the user must fix: params, arguments, paths, an unreachable model."""

    exit_code = EXIT_BAD_INPUT


class Refused(CharloopError):
    """A gate or integrity check refused; nothing was changed."""

    exit_code = EXIT_REFUSED
