"""SIGTERM (kill, timeout, Slurm's end of a job) taken as Ctrl-C: what undoes or checkpoints an
interrupted run (an output put back, a lock let go) runs, instead of the process dying mid-write."""
from __future__ import annotations

import contextlib
import signal
import threading


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C's KeyboardInterrupt would be."""


@contextlib.contextmanager
def sigterm_as_ctrl_c(wanted: bool = True):
    """Within the block SIGTERM raises :class:`Terminated`. Left alone when not ``wanted``, off the
    main thread (signals go there), or where a handler is set already (an outer block, a server)."""
    if not wanted or threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def terminated(signum, frame):
        raise Terminated("terminated (SIGTERM)")
    signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def stop_with_launcher() -> None:
    """A process ``accelerate launch`` started gets SIGTERM when the launcher dies (``kill -9``), so it
    stops as after Ctrl-C instead of training on unseen, holding the output (Linux; elsewhere nothing).
    The kernel sends it when the *thread* that started this process ends: only for launchers that
    start their workers from their main thread, as torch's does."""
    import ctypes
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)     # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
