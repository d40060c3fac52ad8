"""Python callables as the library's progress and metrics callbacks. An exception raised inside one cancels the call
(the callback returns non-zero) and is raised again from the call once the library has returned."""
import collections

from . import _errors
from . import _native as N

ProgressInfo = collections.namedtuple("ProgressInfo", "stage step total elapsed_seconds")
Metrics = collections.namedtuple("Metrics", "step epoch loss val_loss lr_unet lr_text_encoder grad_norm "
                                            "images_per_second elapsed_seconds sample_path")


class Callback:
    """Holds the ctypes function object (alive as long as the library may call it) and the first exception raised
    inside the Python callable."""

    def __init__(self, fn, kind):
        self.fn = fn
        self.exception = None
        self.c = (N.PROGRESS_FN if kind == "progress" else N.METRICS_FN)(self._progress if kind == "progress"
                                                                         else self._metrics)

    def _progress(self, p, _user):
        if self.exception is not None:
            return 1
        try:
            q = p.contents
            return 1 if self.fn(ProgressInfo(q.stage, q.step, q.total, q.elapsed_seconds)) else 0
        except BaseException as e:  # noqa: B902 - KeyboardInterrupt too: it must stop the library's loop
            self.exception = e
            return 1

    def _metrics(self, m, _user):
        if self.exception is not None:
            return
        try:
            q = m.contents
            self.fn(Metrics(q.step, q.epoch, q.loss, q.val_loss, q.lr_unet, q.lr_text_encoder, q.grad_norm,
                            q.images_per_second, q.elapsed_seconds,
                            q.sample_path.decode() if q.sample_path else None))
        except BaseException as e:  # noqa: B902
            self.exception = e

    def check(self, status):
        """The call's outcome: the callback's own exception first (chained to the library's error), else the
        library's."""
        if self.exception is not None:
            e, self.exception = self.exception, None
            try:
                _errors.check(status)
            except _errors.Error as lib_error:
                raise e from lib_error
            raise e
        _errors.check(status)


def check(status, *callbacks):
    for cb in callbacks:
        if cb is not None and cb.exception is not None:
            cb.check(status)
    _errors.check(status)


def make(fn, kind):
    return Callback(fn, kind) if fn is not None else None
