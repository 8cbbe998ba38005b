"""The seccomp filter of the sandbox (``rankmix.benchmarks.sandbox``): a second layer under bubblewrap.

The filter is compiled by the system's libseccomp (Debian ``libseccomp2``, called through ``ctypes`` in this, the
trusted process) and handed to ``bwrap --seccomp FD``. Every system call is allowed except those a scored program
never needs and an escape would: mounting and namespaces (``mount``, ``umount2``, ``pivot_root``, ``setns``,
``unshare``, the new mount API, ``clone`` with ``CLONE_NEWUSER``), other processes' memory (``ptrace``,
``process_vm_readv``/``writev``), and kernel interfaces (``bpf``, ``keyctl``, ``perf_event_open``, modules, ...).
They fail with ``EPERM``; ``clone3`` fails with ``ENOSYS`` so that the C library falls back to ``clone``, whose
flags the filter can read. System calls of another architecture (x32, i386) kill the process (libseccomp's
default). Where libseccomp cannot be loaded there is no filter (``bpf()`` is None) and bubblewrap alone holds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools

DENIED = ("mount", "umount2", "pivot_root", "chroot", "setns", "unshare", "move_mount", "open_tree", "fsopen",
          "fsconfig", "fsmount", "fspick", "mount_setattr", "ptrace", "process_vm_readv", "process_vm_writev", "bpf",
          "keyctl", "add_key", "request_key", "perf_event_open", "userfaultfd", "kexec_load", "kexec_file_load",
          "init_module", "finit_module", "delete_module", "swapon", "swapoff", "reboot", "syslog", "acct", "quotactl",
          "iopl", "ioperm", "name_to_handle_at", "open_by_handle_at")
ACT_ALLOW = 0x7FFF0000
CLONE_NEWUSER = 0x10000000
CMP_MASKED_EQ = 7


def act_errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


class ArgCmp(ctypes.Structure):  # struct scmp_arg_cmp
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


def _library():
    name = ctypes.util.find_library("seccomp")
    if name is None:
        return None
    lib = ctypes.CDLL(name, use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(ArgCmp)]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return lib


@functools.cache
def bpf() -> bytes | None:
    """The compiled filter (BPF program bytes for ``bwrap --seccomp``), or None without libseccomp."""
    import tempfile

    lib = _library()
    if lib is None:
        return None
    ctx = lib.seccomp_init(ACT_ALLOW)
    if not ctx:
        return None
    try:
        def deny(name: str, action: int, *conditions: ArgCmp) -> None:
            number = lib.seccomp_syscall_resolve_name(name.encode())
            if number < 0:  # not a system call of this architecture
                return
            array = (ArgCmp * len(conditions))(*conditions) if conditions else None
            if lib.seccomp_rule_add_array(ctx, action, number, len(conditions), array) != 0:
                raise OSError(f"libseccomp refused the rule for {name}")

        for name in DENIED:
            deny(name, act_errno(errno.EPERM))
        deny("clone", act_errno(errno.EPERM), ArgCmp(0, CMP_MASKED_EQ, CLONE_NEWUSER, CLONE_NEWUSER))
        deny("clone3", act_errno(errno.ENOSYS))
        with tempfile.TemporaryFile() as f:
            if lib.seccomp_export_bpf(ctx, f.fileno()) != 0:
                raise OSError("libseccomp could not export the filter")
            f.seek(0)
            return f.read() or None
    finally:
        lib.seccomp_release(ctx)
