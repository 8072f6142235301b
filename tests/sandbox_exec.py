"""Run a command under the system call filter systemd's ProtectClock=yes installs: every call that
can change a clock (adjtimex even when it only reads, clock_adjtime, clock_settime, settimeofday)
fails with EPERM. Uses libseccomp (a dependency of systemd) through ctypes.

    python tests/sandbox_exec.py PROGRAM ARG...
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import sys

CLOCK_CALLS = (
    b"adjtimex",
    b"clock_adjtime",
    b"clock_adjtime64",
    b"clock_settime",
    b"clock_settime64",
    b"settimeofday",
)
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_ACT_ERRNO = 0x00050000


def protect_clock() -> None:
    lib = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
    for name in CLOCK_CALLS:
        number = lib.seccomp_syscall_resolve_name(name)
        # (not every architecture has the *64 variants: they resolve to a negative number)
        if number >= 0 and lib.seccomp_rule_add(ctx, SCMP_ACT_ERRNO | errno.EPERM, number, 0) != 0:
            raise SystemExit(f"sandbox: cannot filter {name.decode()}")
    if lib.seccomp_load(ctx) != 0:
        raise SystemExit("sandbox: seccomp_load failed")


if __name__ == "__main__":
    protect_clock()
    os.execv(sys.argv[1], sys.argv[1:])
