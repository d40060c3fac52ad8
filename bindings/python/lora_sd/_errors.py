"""Statuses and the exceptions that carry them."""
import enum

from . import _native as N


class Status(enum.IntEnum):
    """lsd_status: pinned numbers (include/lora_sd.h)."""
    OK = 0
    INVALID_ARGUMENT = 1
    IO = 2
    FORMAT = 3
    UNSUPPORTED = 4
    SHAPE_MISMATCH = 5
    OUT_OF_MEMORY = 6
    DEVICE = 7
    CANCELLED = 8
    NOT_FOUND = 9
    NUMERIC = 10
    INTERNAL = 11


class Error(Exception):
    """A failed call: .status (a Status) and .message (the library's, naming the file, key or argument at fault)."""

    def __init__(self, status, message):
        try:
            status = Status(status)
        except ValueError:
            pass
        self.status = status
        self.message = message
        name = N.status_string(int(status)).decode()
        super().__init__(f"{message} [{name}]")


class Cancelled(Error):
    """A progress callback asked to stop (returned a true value)."""


def check(status):
    """Raises the failure of the call that just returned status. ctypes runs the call on this Python thread's own
    OS thread, so the library's thread-local message is this call's."""
    if status == Status.OK:
        return
    message = N.last_error().decode("utf-8", "replace")
    raise (Cancelled if status == Status.CANCELLED else Error)(status, message)
