"""Network namespaces for test clients: a thread enters a host of the topology
(deploy/netns/topology.sh) and every socket it opens there belongs to that host.

A network namespace is a per-thread property in Linux, so one test process can drive visitors
from the `client` host and agents from the `agents` host at once, each thread in its own."""

import contextlib
import ctypes
import os
import threading

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd):
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"setns: {os.strerror(error)}")


@contextlib.contextmanager
def inside(namespace):
    """Runs the body with the calling thread in `namespace` (a name under /run/netns)."""
    with open("/proc/thread-self/ns/net") as own, open(f"/run/netns/{namespace}") as target:
        _setns(target.fileno())
        try:
            yield
        finally:
            _setns(own.fileno())


def thread(namespace, target, *args, **kwargs):
    """A daemon thread that runs `target(*args)` inside `namespace`."""
    def body():
        with inside(namespace):
            target(*args, **kwargs)
    return threading.Thread(target=body, daemon=True)
