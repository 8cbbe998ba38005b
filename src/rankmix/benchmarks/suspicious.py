"""Completions that reach for the interpreter's internals, found in their text before they run.

A program runs in the same interpreter as the check that scores it, so one written to deceive could still make a
wrong answer look like a finished check (``sandbox_child``). Legitimate solutions of HumanEval and DS-1000 have no
need for these means, so a completion that names one is flagged, and a flagged completion whose check finished is
scored ``suspicious``, never ``passed``; the flags go into the per-sample records and the count into the metrics
(``<benchmark>/suspicious``).

Flagged, by name in the completion's code or in a string literal that is that name or holds it with an
underscore (comments and prose excluded): exit functions other
than ``sys.exit`` (``os._exit``, ``abort``, ``kill``, ``raise_signal``, the ``exec*`` family, ``atexit``), ``ctypes``
and other native bridges, ``posix``, ``sys.modules``, ``__main__``, ``builtins``, ``globals()``, dynamic imports,
tracing and frames (``settrace``, ``_getframe``, ``f_back``, ``f_locals``, ``inspect``, ``gc``), raw file
descriptors (``os.read``/``os.write``, ``dup2``, ``/proc/``), and comparison or truth methods (``__eq__``,
``__ne__``, ``__lt__``, ..., ``__bool__``) whether defined in a class or set by name. Text built at run time
(``eval("os._" + "exit(0)")``) escapes any such scan: the flags catch the plain forms, not a determined forger.
"""

from __future__ import annotations

import io
import re
import tokenize

NAMES = {
    "exit function": {"_exit", "abort", "kill", "killpg", "raise_signal", "pthread_kill", "execv", "execve",
                      "execvp", "execvpe", "execl", "execle", "execlp", "execlpe", "atexit", "quit"},
    "native code": {"ctypes", "_ctypes", "cffi", "posix", "_posixsubprocess", "faulthandler"},
    "interpreter internals": {"builtins", "__builtins__", "__main__", "globals", "__import__", "importlib",
                              "import_module", "__code__", "__globals__", "__closure__", "__dict__", "__class__",
                              "__subclasses__", "__mro__", "addaudithook"},
    "tracing or frames": {"settrace", "setprofile", "gettrace", "monitoring", "_getframe", "_current_frames",
                          "f_back", "f_locals", "f_globals", "f_builtins", "f_code", "tb_frame", "gi_frame",
                          "cr_frame", "ag_frame", "inspect", "gc"},
    "raw file descriptor": {"dup", "dup2", "fdopen", "pread", "pwrite", "readv", "writev", "sendfile", "openpty"},
    "comparison override": {"__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "__bool__", "__len__",
                            "__hash__", "__instancecheck__"},
}
ATTRIBUTES = {("sys", "modules"): "interpreter internals", ("sys", "exit"): None, ("os", "read"): "raw file descriptor",
              ("os", "write"): "raw file descriptor"}
PATHS = re.compile(r"/proc/|/dev/fd|/dev/mem")
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
REASON = {name: reason for reason, names in NAMES.items() for name in names}


def _tokens(source: str) -> list[tuple[int, str]]:
    """(token type, text) of ``source`` without comments; the raw identifiers where it does not tokenize."""
    try:
        return [(t.type, t.string) for t in tokenize.generate_tokens(io.StringIO(source).readline)
                if t.type != tokenize.COMMENT]
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return [(tokenize.NAME, name) for name in IDENTIFIER.findall(source)]


def _in_string(literal: str) -> list[str]:
    """The names a string literal may stand for: its whole text when that is one name, and every name in it that
    no prose holds (with an underscore, e.g. ``_exit``, ``__eq__``)."""
    text = literal.strip("\"'").lstrip("rbuRBUfF").strip("\"'")
    names = [n for n in IDENTIFIER.findall(text) if "_" in n]
    return [text, *names] if IDENTIFIER.fullmatch(text) else names


def flags(source: str) -> list[str]:
    """Why the model-written ``source`` is suspicious ("<reason>: <name>", sorted), or [] when nothing is."""
    found: set[str] = set()
    tokens = _tokens(source)
    for i, (kind, text) in enumerate(tokens):
        names = _in_string(text) if kind == tokenize.STRING else [text] if kind == tokenize.NAME else []
        if kind == tokenize.STRING and PATHS.search(text):
            found.add(f"raw file descriptor: {PATHS.search(text).group()}")
        for name in names:
            owner = tokens[i - 2][1] if kind == tokenize.NAME and i >= 2 and tokens[i - 1][1] == "." else None
            if (owner, name) in ATTRIBUTES:
                reason = ATTRIBUTES[(owner, name)]
            else:
                reason = REASON.get(name) or ("exit function" if name == "exit" else None)
            if reason:
                found.add(f"{reason}: {owner + '.' if owner else ''}{name}")
    return sorted(found)


def status(outcome_status: str, flagged: list[str]) -> str:
    """A finished check of a flagged completion is ``suspicious``, not ``passed``; other statuses stand."""
    return "suspicious" if outcome_status == "passed" and flagged else outcome_status
