"""What ``xpdl tune`` prints and writes: progress lines, the best-trials table, ``summary.json``, ``tune.png``.

Works on Optuna ``FrozenTrial`` objects (``number``, ``state``, ``value``,
``params``, ``user_attrs``, ``datetime_start`` / ``datetime_complete``) but does
not import Optuna itself.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any

from xpdl.runs.atomic import atomic_write
from xpdl.runs.history import write_json
from xpdl.tune.space import SearchParam

SUMMARY_FILE = "summary.json"
PLOT_FILE = "tune.png"
#: Labelled ticks of a choice axis in tune.png: every choice up to this many, else evenly spaced ones.
MAX_TICKS = 30


def state_name(trial: Any) -> str:
    """``COMPLETE``, ``PRUNED``, ``FAIL``, ``RUNNING`` or ``WAITING``."""
    return trial.state.name


def seconds(trial: Any) -> float | None:
    """Wall seconds from the trial's start to its end (None while it runs)."""
    if trial.datetime_start is None or trial.datetime_complete is None:
        return None
    return (trial.datetime_complete - trial.datetime_start).total_seconds()


#: How a parameter is shown where its option name would mislead: ``--dropout`` is a keep probability.
DISPLAY_NAMES = {"dropout": "dropout-keep"}


def format_params(params: dict[str, Any]) -> str:
    """E.g. ``lr=0.00123 hidden-dims=256,256 dropout-keep=0.651`` (``--dropout`` is the keep probability)."""
    return " ".join(
        f"{DISPLAY_NAMES.get(k, k)}={v:.3g}" if isinstance(v, float) else f"{DISPLAY_NAMES.get(k, k)}={v}"
        for k, v in params.items()
    )


def progress_line(trial: Any) -> str:
    """One line for a finished trial: number, state, value, params, seconds (and the error of a failure)."""
    value = "" if trial.value is None else f"val acc {trial.value:.4f}"
    secs = seconds(trial)
    line = f"trial {trial.number:>3} {state_name(trial):<8} {value:<14} {format_params(trial.params)}" + (
        f"  {secs:.1f} s" if secs is not None else ""
    )
    if "error" in trial.user_attrs:
        line += f"  ({trial.user_attrs['error']})"
    return line


def ranked(trials: list[Any]) -> list[Any]:
    """Completed trials, best validation accuracy first (ties: lower number first)."""
    done = [t for t in trials if state_name(t) == "COMPLETE" and t.value is not None]
    return sorted(done, key=lambda t: (-t.value, t.number))


def best_table(trials: list[Any], top: int = 5) -> str:
    """The ``top`` best completed trials as a text table, plus counts of trials per state."""
    counts: dict[str, int] = {}
    for t in trials:
        counts[state_name(t)] = counts.get(state_name(t), 0) + 1
    lines = [f"{len(trials)} trials: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))]
    best = ranked(trials)[:top]
    if not best:
        return "\n".join([*lines, "no trial completed"])
    lines.append(f"best {len(best)} (validation accuracy):")
    lines.append(f"{'trial':>5}  {'val acc':>7}  {'seconds':>7}  {'run':<18}  params")
    for t in best:
        secs = seconds(t)
        lines.append(
            f"{t.number:>5}  {t.value:>7.4f}  {secs if secs is not None else float('nan'):>7.1f}  "
            f"{t.user_attrs.get('run', ''):<18}  {format_params(t.params)}"
        )
    return "\n".join(lines)


def _entry(trial: Any) -> dict[str, Any]:
    return {
        "number": trial.number,
        "state": state_name(trial),
        "value": trial.value,
        "params": dict(trial.params),
        "run": trial.user_attrs.get("run"),
    }


def summary_doc(trials: list[Any]) -> dict[str, Any]:
    """``{"best": {number, value, params, run} or None, "trials": [{number, state, value, params, run}]}``.

    ``run`` is the trial's run folder relative to the tune folder (on the machine that ran it).
    """
    best = ranked(trials)
    return {
        "best": _entry(best[0]) if best else None,
        "trials": [_entry(t) for t in sorted(trials, key=lambda t: t.number)],
    }


def write_summary(out: str | os.PathLike[str], trials: list[Any]) -> Path:
    """Write ``OUT/summary.json`` (atomically)."""
    return write_json(Path(out) / SUMMARY_FILE, summary_doc(trials))


def plot_study(trials: list[Any], space: list[SearchParam], path: str | os.PathLike[str]) -> Path | None:
    """Draw the optimization history and each searched parameter against validation accuracy into ``path``.

    Every finished trial with a value is a point (pruned ones at their last reported
    accuracy, hollow); the history panel adds the best value so far. Log ranges get
    log axes; choices are drawn at their position in the choice list. Returns
    ``path``, or None (with a note on stderr) when matplotlib is not installed.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        print("xpdl: matplotlib is not installed; skipping tune.png (pip install matplotlib)", file=sys.stderr)
        return None
    points = sorted(
        (t for t in trials if t.value is not None and state_name(t) in ("COMPLETE", "PRUNED")), key=lambda t: t.number
    )
    panels = 1 + len(space)
    cols = min(panels, 3)
    rows = math.ceil(panels / cols)
    fig = Figure(figsize=(4.2 * cols, 3.4 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(panels)]
    _history_panel(axes[0], points)
    for ax, param in zip(axes[1:], space):
        _param_panel(ax, points, param)
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=90))


def _scatter(ax: Any, xs: list[Any], points: list[Any]) -> None:
    for state, style in (("COMPLETE", {"color": "C0"}), ("PRUNED", {"facecolors": "none", "edgecolors": "C1"})):
        sel = [(x, t.value) for x, t in zip(xs, points) if state_name(t) == state]
        if sel:
            ax.scatter(*zip(*sel), s=18, label=state.lower(), **style)
    ax.set_ylabel("validation accuracy")
    ax.grid(alpha=0.3)


def _history_panel(ax: Any, points: list[Any]) -> None:
    _scatter(ax, [t.number for t in points], points)
    best, running = [], -math.inf
    for t in points:
        if state_name(t) == "COMPLETE":
            running = max(running, t.value)
        best.append(running if running > -math.inf else math.nan)
    if points:
        ax.step([t.number for t in points], best, where="post", color="C2", label="best so far")
        ax.legend(fontsize=7, loc="lower right")
    ax.set_xlabel("trial")
    ax.set_title("optimization history", fontsize=9)


def _param_panel(ax: Any, points: list[Any], param: SearchParam) -> None:
    have = [t for t in points if param.name in t.params]
    if param.kind == "choice":
        xs = [param.choices.index(str(t.params[param.name])) for t in have]
        ticks = range(0, len(param.choices), -(-len(param.choices) // MAX_TICKS))
        ax.set_xticks(ticks, [param.choices[i][:24] for i in ticks], fontsize=7, rotation=20)
        ax.set_xlim(-0.5, len(param.choices) - 0.5)
    else:
        xs = [t.params[param.name] for t in have]
        if param.log:
            ax.set_xscale("log")
        ax.set_xlim(param.low, param.high)
    _scatter(ax, xs, have)
    ax.set_xlabel(param.name + (" (log)" if param.log else ""))
    ax.set_title(f"{param.name} = {param.spec}", fontsize=9)
