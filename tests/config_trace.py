"""Run ``python -m rankmix.train`` with a profiler that follows the config object from ``train(cfg)`` and prints, as
``CONFIG_TRACE <json>``, the ``rankmix`` modules whose functions receive it as an argument, in the order the run is
in them (consecutive repeats merged): a call goes down into the callee's module, a return comes back to the
caller's. Usage: ``python tests/config_trace.py [overrides ...]``."""

import json
import sys
import threading

import rankmix.train as entry

state = {"cfg": None, "stack": [], "sequence": []}


def _visit(module: str) -> None:
    if not state["sequence"] or state["sequence"][-1] != module:
        state["sequence"].append(module)


def _profile(frame, event, arg):
    if event not in ("call", "return"):
        return
    module, code = frame.f_globals.get("__name__", ""), frame.f_code
    if state["cfg"] is None:
        if event == "call" and module == "rankmix.train" and code.co_name == "train":
            state["cfg"] = frame.f_locals["cfg"]
            state["stack"].append(frame)
            _visit(module)
    elif not module.startswith("rankmix."):
        return
    elif event == "call":
        arguments = code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]
        if any(frame.f_locals.get(a) is state["cfg"] for a in arguments):
            state["stack"].append(frame)
            _visit(module)
    elif state["stack"] and state["stack"][-1] is frame:
        state["stack"].pop()
        if state["stack"]:
            _visit(state["stack"][-1].f_globals["__name__"])


if __name__ == "__main__":
    sys.argv = ["rankmix.train", *sys.argv[1:]]
    sys.setprofile(_profile)
    threading.setprofile(_profile)
    try:
        entry.main()
    except SystemExit:
        pass
    finally:
        sys.setprofile(None)
        print("CONFIG_TRACE " + json.dumps(state["sequence"]))
