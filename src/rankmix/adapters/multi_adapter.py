"""Multiple adapters, one per task (VL-Adapter's "Multiple Adapters", Sung et al., 2022; the routing-functions
paper's §5 and Tab. 8), method "multi_adapter".

Each task t has its own sequential bottleneck adapter (``rankmix.adapters.adapter``), optionally with its own
routing function f_t (``fns``; Tab. 8's comb1-comb4 pick one per task, see ``rankmix.adapters.routing``).
Example b of a batch, with task id τ_b = ``context["task_ids"][b]`` (an index into ``tasks``), gets

    y_b = h_b + up_τ(act(f_τ(down_τ(dropout(h_b)), down_τ(dropout(x_R,b))))),   h = W0 x,

so examples of one task never touch another task's weights. x_R comes from ``context["x_r"]`` (needed only
when some f_t is not ``none``), mean-pooled over its tokens after down_τ as in ``routing``. The forward pass
loops over the tasks, not over the examples. ``cross_attention`` is not offered per task.

Parameter names (a public API): ``adapters.<task>.adapter_down.weight``/``.bias`` (r×d) and
``adapters.<task>.adapter_up.weight``/``.bias`` (d×r), with the inits of ``adapter`` (``zero_up`` default).
"""

from __future__ import annotations

import torch
from torch import nn

from rankmix.adapters.adapter import BottleneckLayer, bottleneck, dropout_module, make_activation
from rankmix.adapters.context import per_example
from rankmix.adapters.registry import register
from rankmix.adapters.routing import ROUTING_FUNCTIONS, route, visual_input
from rankmix.checked import choice, positive_int
from rankmix.errors import ConfigError


class TaskAdapter(nn.Module):
    """One task's down/up pair."""

    def __init__(self, d: int, r: int, init: str):
        super().__init__()
        self.adapter_down, self.adapter_up = bottleneck(d, r, r, d, init)


@register("multi_adapter")
class MultiAdapterLayer(BottleneckLayer):
    """One sequential bottleneck adapter per task: example b uses only its task τ_b's adapter (and routing function
    f_τ), y_b = h_b + up_τ(act(f_τ(down_τ(dropout(h_b)), down_τ(dropout(x_R,b))))), h = W0 x."""
    sequential = True

    def __init__(self, base_layer: nn.Module, tasks=("vqa", "gqa", "nlvr", "caption"), r: int = 96,
                 activation: str = "swish", dropout: float = 0.0, init: str = "zero_up", fns=None):
        super().__init__(base_layer)
        tasks = [tasks] if isinstance(tasks, str) else list(tasks or ())
        if not tasks or len(set(tasks)) < len(tasks) or not all(isinstance(t, str) and t and "." not in t
                                                                for t in tasks):
            raise ConfigError("tasks", tasks, "must be a non-empty list of distinct names without dots")
        fns = dict(fns or {})
        for task, fn in fns.items():
            if task not in tasks:
                raise ConfigError("fns", fns, f"names task {task!r}, which is not in tasks: {', '.join(tasks)}")
            choice(f"fns.{task}", fn, ROUTING_FUNCTIONS)
        self.tasks = tasks
        self.fns = {t: fns.get(t, "none") for t in tasks}
        self.r = positive_int("r", r)
        self.act = make_activation(activation)
        self.dropout = dropout_module(dropout)
        self.adapters = nn.ModuleDict({t: TaskAdapter(self.out_features, r, init) for t in tasks})

    def required_context(self) -> set[str]:
        return {"task_ids"} | ({"x_r"} if any(fn != "none" for fn in self.fns.values()) else set())

    def task_ids(self, h: torch.Tensor) -> torch.Tensor:
        ids = self.call_context().get("task_ids")
        if ids is None:
            raise RuntimeError(
                "multi_adapter: each example needs its task; wrap the model call in "
                "`with rankmix.adapters.adapter_context(model, task_ids=ids):` with ids of shape (B,), "
                f"indices into tasks {self.tasks}"
            )
        ids = per_example(ids, h.shape[0]).to(h.device)
        if ids.shape != h.shape[:1] or ids.is_floating_point() or ids.min() < 0 or ids.max() >= len(self.tasks):
            raise RuntimeError(
                f"multi_adapter: context task_ids must be integers in [0, {len(self.tasks)}) of shape "
                f"({h.shape[0]},), one per example; got {ids.tolist()}"
            )
        return ids

    def adapt(self, h: torch.Tensor) -> torch.Tensor:
        h = h.to(self.adapters[self.tasks[0]].adapter_down.weight.dtype)
        ids = self.task_ids(h)
        routed = any(fn != "none" for fn in self.fns.values())
        x_r = self.dropout(visual_input(self, h)) if routed else None
        h = self.dropout(h)
        out = h.new_zeros(*h.shape[:-1], self.out_features)
        for i, (task, adapter) in enumerate(self.adapters.items()):
            rows = ids == i
            z = adapter.adapter_down(h[rows])
            if self.fns[task] != "none":
                z = route(self.fns[task], z, adapter.adapter_down, x_r[rows])
            out[rows] = adapter.adapter_up(self.act(z))
        return out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, r={self.r}, fns={self.fns}"
