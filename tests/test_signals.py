"""SIGINT reaches the long commands even when they start with SIGINT ignored (a background job)."""

import signal
import threading

from resnet_fused.signals import honor_sigint


def test_restores_the_handler_only_when_sigint_is_ignored():
    saved = signal.getsignal(signal.SIGINT)
    try:
        def mine(signum, frame):
            pass

        signal.signal(signal.SIGINT, mine)
        assert honor_sigint() is False
        assert signal.getsignal(signal.SIGINT) is mine  # a deliberate handler is kept

        signal.signal(signal.SIGINT, signal.SIG_IGN)
        assert honor_sigint() is True
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, saved)


def test_is_a_no_op_outside_the_main_thread():
    saved = signal.getsignal(signal.SIGINT)
    result = []
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        thread = threading.Thread(target=lambda: result.append(honor_sigint()))
        thread.start()
        thread.join()
        assert result == [False]
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, saved)
