"""SIGINT for the long jobs: stop, and report what finished.

The CLI's long commands (``sweep``, ``bench``, ``predict``/``extract``) and the GPU session's
steps are cut with SIGINT (``timeout -s INT``) and then print what they finished. A process
started with SIGINT *ignored*, as every background job of a non-interactive shell is (``cmd &``
in a script, a CI runner's children), inherits that, and Python then never raises
``KeyboardInterrupt``: the cut does nothing until the SIGKILL that follows, and the partial
results are lost. :func:`honor_sigint` restores Python's handler in that one case.
"""

from __future__ import annotations

import signal
import threading

__all__ = ["honor_sigint"]


def honor_sigint() -> bool:
    """Makes SIGINT raise ``KeyboardInterrupt`` here if it was inherited as ignored.

    A handler someone installed on purpose is left alone, and so is everything outside the main
    thread (only it may set handlers). Returns True if the handler was restored.
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        return False
    signal.signal(signal.SIGINT, signal.default_int_handler)
    return True
