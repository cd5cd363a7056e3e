"""Errors a user can act on.

Every problem caused by the user's input or environment (an unreadable image,
missing weights, an empty phrase) is raised as a :class:`GlobalLocalError`
whose message is one line naming the problem and the fix. The CLI prints that
line and exits non-zero without a traceback; anything else is a bug.
"""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (or its type), for one-line errors."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


class GlobalLocalError(Exception):
    """A problem the user can fix; ``str(error)`` is a one-line explanation."""


class ImageError(GlobalLocalError):
    """An image (or mask image) could not be read or is unusable."""


class WeightsError(GlobalLocalError):
    """Model weights are missing, unreachable or do not match the model."""


class InputError(GlobalLocalError):
    """A phrase, mask set, option value or data file is unusable."""


class NoProposalsError(InputError):
    """An image has no mask proposals to choose from."""


class VlmEndpointError(GlobalLocalError):
    """A VLM endpoint did not give a usable reply; the message names the URL and the status.

    ``transport`` is True when the fault was in reaching or hearing the
    endpoint (no connection, a timeout, 408/409/429/5xx, a body that is not a
    chat completion): asking again later may succeed. It is False when the
    endpoint refused the request itself (another 4xx: a bad key, an unknown
    model, a prompt too long).
    """

    def __init__(self, message: str, *, transport: bool) -> None:
        super().__init__(message)
        self.transport = transport
