"""An interactive explorer for a trained All-in-One model: pick a task, an image, a prompt, K and a threshold.

In Jupyter with ipywidgets it shows controls and redraws the panels (input with the ground-truth outline,
reconstruction, squared error, hallucination map u, final anomaly map, routing weights) on every change.
Anywhere widgets cannot render (the built book, a plain Python session, ``static=True``) it draws one static
matplotlib figure for a fixed set of choices instead, so the same call works in both places.

Typing a new prompt encodes it with the model's frozen text tower (once, then cached) and routes with it.
With a randomly initialised tower (no pretrained CLIP weights offline) a paraphrase is just another random code;
and a router that learned to rely on the image code may ignore the prompt altogether (notebooks/14_allinone_full
shows both). Explained in notebooks/14_allinone_full.ipynb.

Example::

    from medad_edu.interface.explorer import explore
    explore(result.model, result.data, thresholds=result.thresholds)              # widgets in Jupyter
    fig = explore(result.model, result.data, static=True, task="brain_mri", index=3)  # a figure anywhere

Defined in: notebooks/14_allinone_full.ipynb
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..data import MultiTaskData
from ..data.batches import split_tensors


def _widgets_available() -> bool:
    try:
        import ipywidgets  # noqa: F401
        from IPython import get_ipython

        shell = get_ipython()
        return shell is not None and hasattr(shell, "kernel")
    except Exception:
        return False


@torch.no_grad()
def analyse(model, data: MultiTaskData, task: str | int = 0, index: int = 0, split: str = "test",
            prompt: str | None = None, top_k: int | None = None) -> dict[str, Any]:
    """Run the model on one image (``index`` within ``task``'s ``split``) and return everything to draw.

    ``prompt=None`` uses the task's own prompt; another string is encoded and used instead (prompt models only).
    """
    names = data.task_names
    tid = names.index(task) if isinstance(task, str) else int(task)
    if not 0 <= tid < len(names):
        raise ValueError(f"task must be one of {names} or an index < {len(names)}; got {task!r}")
    tensors = split_tensors(data, split)
    rows = torch.nonzero(tensors.task_ids == tid).flatten()
    if not 0 <= index < len(rows):
        raise ValueError(f"index must be in 0..{len(rows) - 1} for task {names[tid]!r} ({split}); got {index}")
    row = int(rows[index])
    device = next(model.parameters()).device
    x = tensors.images[row:row + 1].to(device)
    model_tid = torch.tensor([model.task_names.index(names[tid])], device=device)
    clip = None
    task_prompt = data.tasks[tid].prompt
    if prompt is not None and prompt != task_prompt and getattr(model, "use_prompts", False):
        clip = model.encode_prompts([prompt]).to(device)
    model.eval()
    out = model(x, model_tid, top_k=top_k, clip_features=clip) if hasattr(model, "router") else model(x, model_tid)
    ex = {k: v[0].detach().float().cpu().numpy() for k, v in out.extras.items()}
    return {"task": names[tid], "index": index, "name": tensors.names[row], "label": int(tensors.labels[row]),
            "image": tensors.images[row, 0].numpy(), "mask": tensors.masks[row, 0].numpy(),
            "map": out.anomaly_map[0, 0].cpu().numpy(), "score": float(out.pred_score[0]),
            "prompt": prompt if prompt is not None else task_prompt, "extras": ex}


def draw(result: dict[str, Any], threshold: float | None = None, fig=None):
    """The panels of one ``analyse`` result in one matplotlib figure (returned).

    ``threshold`` (image-score units) only sets the verdict in the title: the image is called abnormal when its
    score (the mean of the anomaly map) reaches it.
    """
    import matplotlib.pyplot as plt

    ex = result["extras"]
    panels = [("input", result["image"], "gray", (0, 1))]
    if "reconstruction" in ex:
        panels.append(("reconstruction", ex["reconstruction"][0], "gray", (0, 1)))
    if "error" in ex:
        panels.append(("squared error", ex["error"][0], "inferno", (0, None)))
    if "hallucination" in ex:
        u = np.abs(ex["hallucination"][0])
        panels.append(("|u| (hallucination)", u, "viridis", (0, None)))
    panels.append(("anomaly map", result["map"], "inferno", (0, None)))
    has_routing = "routing" in ex
    n = len(panels) + int(has_routing)
    if fig is None:
        fig = plt.figure(figsize=(2.0 * n, 2.5))
    axes = fig.subplots(1, n)
    for ax, (title, img, cmap, (lo, hi)) in zip(axes, panels):
        ax.imshow(img, cmap=cmap, vmin=lo, vmax=hi if hi is not None else max(float(np.max(img)), 1e-8),
                  interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    if result["mask"].any():
        axes[0].contour(result["mask"], levels=[0.5], colors="lime", linewidths=0.8)
    if has_routing:
        ax = axes[-1]
        w = ex["routing"]
        ax.bar(np.arange(len(w)), w, color="tab:blue")
        ax.set_ylim(0, 1)
        ax.set_xticks(np.arange(len(w)))
        ax.set_xlabel("expert", fontsize=8)
        ax.set_title("routing s", fontsize=8)
        ax.tick_params(labelsize=7)
    verdict = "" if threshold is None else (" -> ABNORMAL" if result["score"] >= threshold else " -> normal")
    truth = "abnormal" if result["label"] else "normal"
    fig.suptitle(f"{result['task']} #{result['index']} ({truth}); prompt: \"{result['prompt']}\"; "
                 f"score {result['score']:.5f}" + (f" vs threshold {threshold:.5f}{verdict}" if threshold else ""),
                 fontsize=8)
    fig.tight_layout()
    return fig


def explore(model, data: MultiTaskData, thresholds: dict | None = None, split: str = "test",
            static: bool | None = None, task: str | int = 0, index: int = 0, prompt: str | None = None,
            top_k: int | None = None, threshold: float | None = None):
    """Interactive explorer (ipywidgets) or, with ``static=True`` or without widgets, a static figure.

    ``thresholds``: per-task decision thresholds (e.g. ``TrainResult.thresholds``, chosen on validation data)
    used as the slider's starting value. Returns the widget box, or the matplotlib figure when static.
    """
    names = data.task_names
    tname = names[task] if isinstance(task, int) else task
    if tname not in names:
        raise ValueError(f"task must be one of {names}; got {task!r}")
    thresholds = thresholds or {}

    def thr_for(name: str) -> float | None:
        return threshold if threshold is not None else (float(thresholds[name]) if name in thresholds else None)

    if static is None:
        static = not _widgets_available()
    if static:
        return draw(analyse(model, data, tname, index, split, prompt, top_k), thr_for(tname))

    import ipywidgets as W
    import matplotlib.pyplot as plt
    from IPython.display import display

    tensors = split_tensors(data, split)
    counts = {n: int((tensors.task_ids == i).sum()) for i, n in enumerate(names)}
    n_exp = getattr(model, "num_experts", 1)
    w_task = W.Dropdown(options=names, value=tname, description="task")
    w_index = W.IntSlider(value=index, min=0, max=counts[tname] - 1, description="image")
    w_prompt = W.Text(value=prompt or data.tasks[names.index(tname)].prompt, description="prompt",
                      continuous_update=False, layout=W.Layout(width="420px"))
    w_k = W.IntSlider(value=top_k or getattr(model, "top_k", 1), min=1, max=n_exp, description="K")
    t0 = thr_for(tname) or 0.0
    w_thr = W.FloatText(value=round(t0, 6), description="threshold", step=max(t0 / 20, 1e-6))
    out = W.Output()

    def redraw(*_):
        with out:
            out.clear_output(wait=True)
            res = analyse(model, data, w_task.value, w_index.value, split, w_prompt.value, w_k.value)
            fig = draw(res, w_thr.value or None)
            display(fig)
            plt.close(fig)

    def on_task(change):
        name = change["new"]
        w_index.max = counts[name] - 1
        w_prompt.value = data.tasks[names.index(name)].prompt
        if thr_for(name) is not None:
            w_thr.value = round(thr_for(name), 6)
        redraw()

    w_task.observe(on_task, names="value")
    for w in (w_index, w_prompt, w_k, w_thr):
        w.observe(redraw, names="value")
    box = W.VBox([W.HBox([w_task, w_index, w_k]), W.HBox([w_prompt, w_thr]), out])
    display(box)
    redraw()
    return box
