"""The report's figures: matplotlib PNGs (the Agg canvas, no pyplot, no display), one per section."""

from __future__ import annotations

from pathlib import Path

from tlexp.report.series import known_strategies, series_names, strategy_order
from tlexp.report.tables import Table, compares_depths
from tlexp.results import Job


PALETTE = [f"C{i}" for i in range(10)] + ["black", "darkgoldenrod", "indigo", "teal", "magenta", "lime", "olive", "navy"]
"""matplotlib's ten default colours and eight more, so that all eighteen strategies differ in one figure."""


def _colors(names) -> dict[str, str]:
    """A strategy keeps its colour in every figure and report: its place in the registry picks it. Where
    some strategy has several series (settings that differ), the series take the colours in turn."""
    palette, known, names = PALETTE, known_strategies(), strategy_order(names)
    if any(" (" in name for name in names):
        return {name: palette[i % len(palette)] for i, name in enumerate(names)}
    return {s: palette[(known.index(s) if s in known else len(known) + i) % len(palette)] for i, s in enumerate(names)}


def _figure(ncols: int, width: float = 5.5, height: float = 4.0):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width * ncols, height), layout="constrained")
    axes = figure.subplots(1, ncols, squeeze=False)[0]
    return figure, axes


def _save(figure, path: Path) -> Path:
    figure.savefig(path, dpi=110)
    return path


def plot_race(curves: dict, fraction: float, path: Path) -> Path | None:
    from matplotlib.ticker import MaxNLocator

    if not curves:
        return None
    figure, (by_epoch, by_time) = _figure(2)
    colors = _colors(curves)
    for strategy, c in curves.items():
        label = f"{strategy} (n={c['runs']})"
        by_epoch.plot(c["epoch"], c["mean"], marker="o", color=colors[strategy], label=label)
        by_epoch.fill_between(c["epoch"], c["min"], c["max"], color=colors[strategy], alpha=0.2)
        if all(t is not None for t in c["elapsed"]):
            by_time.plot(c["elapsed"], c["mean"], marker="o", color=colors[strategy], label=label)
            by_time.fill_between(c["elapsed"], c["min"], c["max"], color=colors[strategy], alpha=0.2)
    by_epoch.set(xlabel="epoch", ylabel="val/acc", title=f"val/acc per epoch (fraction {fraction:g})")
    by_epoch.xaxis.set_major_locator(MaxNLocator(integer=True))
    by_time.set(xlabel="training wall-clock (s)", ylabel="val/acc", title=f"val/acc per second (fraction {fraction:g})")
    for ax in (by_epoch, by_time):
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return _save(figure, path)


SEARCH_COLUMNS = 4
"""Panels per row of the search figure: a race of many strategies wraps onto more rows instead of growing wide."""


def plot_search(cells: list[dict], path: Path) -> Path | None:
    """Each strategy's search (race.json): every trial's val/acc per epoch placed over its time span in the
    search, pruned trials grey and ending in an x, the best trial bold; per cell rows of at most ``SEARCH_COLUMNS``
    panels, one per strategy."""
    rows = [(cell["cell"], e) for cell in cells for e in cell["strategies"]]
    if not any(e.get("trials") for _, e in rows):
        return None
    from matplotlib.figure import Figure

    ncols = min(SEARCH_COLUMNS, max(len(cell["strategies"]) for cell in cells))
    lines = [(cell, cell["strategies"][k:k + ncols]) for cell in cells for k in range(0, len(cell["strategies"]), ncols)]
    figure = Figure(figsize=(3.2 * ncols, 2.8 * len(lines)), layout="constrained")
    axes = figure.subplots(len(lines), ncols, squeeze=False, sharey=True)
    colors = _colors([e["strategy"] for _, e in rows])
    for r, (cell, entries) in enumerate(lines):
        for c in range(ncols):
            ax = axes[r][c]
            if c >= len(entries):
                ax.set_visible(False)
                continue
            e = entries[c]
            for trial in e.get("trials") or []:
                values, start, end = trial["values"], trial["start"], trial["end"]
                if not values or end is None:
                    continue
                times = [start + (k + 1) * (end - start) / len(values) for k in range(len(values))]
                best, pruned = trial["number"] == e.get("best_trial"), trial["state"] == "pruned"
                color = "0.6" if pruned else colors[e["strategy"]]
                ax.plot(times, values, color=color, lw=2.2 if best else 0.9, marker="." if not pruned else None, zorder=3 if best else 2)
                if pruned:
                    ax.plot(times[-1], values[-1], marker="x", color="0.4", ms=5)
            search = e["search"]
            ax.set_title(f"{e['strategy']}: {search['trials']} trials, {search['pruned']} pruned", fontsize="small")
            ax.set_xlabel("search time (s)", fontsize="small")
            ax.grid(alpha=0.3)
        axes[r][0].set_ylabel(f"val/acc\n{cell['cell']}", fontsize="small")
    return _save(figure, path)


def _plot_per_strategy(table: Table, path: Path, y_key: str, ylabel: str, title: str, errors: bool = False,
                       zero_line: bool = False) -> Path | None:
    """One line per strategy of ``y_key`` against the training-set size (log scale)."""
    rows = table.as_dicts()
    if not rows:
        return None
    figure, (ax,) = _figure(1, 6.5, 4.5)
    strategies = strategy_order(r["strategy"] for r in rows)
    colors = _colors(strategies)
    for strategy in strategies:
        mine = [r for r in rows if r["strategy"] == strategy]
        x, y = [r["train_size"] for r in mine], [r[y_key] for r in mine]
        if errors:
            err = [[r[y_key] - r["test_acc_min"] for r in mine], [r["test_acc_max"] - r[y_key] for r in mine]]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, color=colors[strategy], label=strategy)
        else:
            ax.plot(x, y, marker="o", color=colors[strategy], label=strategy)
    if zero_line:
        ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set(xlabel="training images (log scale)", ylabel=ylabel, title=title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    return _save(figure, path)


def plot_few_shot(table: Table, path: Path) -> Path | None:
    return _plot_per_strategy(table, path, "test_acc_mean", "test/acc", "few-shot: test/acc vs training-set size", errors=True)


def plot_gain(table: Table, path: Path) -> Path | None:
    return _plot_per_strategy(table, path, "gain", "test/acc - scratch test/acc", "transfer gain over scratch", zero_line=True)


def plot_cost(jobs: list[Job], path: Path) -> Path | None:
    done = [j for j in jobs if j.completed and j.test_acc is not None]
    if not done:
        return None
    figure, (by_params, by_time) = _figure(2)
    series = series_names(done)
    strategies = strategy_order(series.values())
    colors = _colors(strategies)
    for strategy in strategies:
        mine = [j for j in done if series[j.name] == strategy]
        with_params = [j for j in mine if j.trainable_params is not None]
        with_time = [j for j in mine if j.seconds_per_epoch is not None]
        by_params.scatter([j.trainable_params for j in with_params], [j.test_acc for j in with_params],
                          color=colors[strategy], label=strategy)
        by_time.scatter([j.seconds_per_epoch for j in with_time], [j.test_acc for j in with_time],
                        color=colors[strategy], label=strategy)
    by_params.set_xscale("log")
    by_params.set(xlabel="trainable parameters", ylabel="test/acc", title="test/acc vs trainable parameters")
    by_time.set(xlabel="seconds per training epoch", ylabel="test/acc", title="test/acc vs seconds per epoch")
    for ax in (by_params, by_time):
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return _save(figure, path)


def plot_depth(table: Table, path: Path) -> Path | None:
    from matplotlib.ticker import MaxNLocator

    if not compares_depths(table):
        return None
    rows = table.as_dicts()
    figure, axes = _figure(3, 4.5, 3.8)
    for name, fraction in sorted({(r["strategy"], r["fraction"]) for r in rows}, key=lambda k: (k[0], k[1] is None, k[1])):
        mine = [r for r in rows if (r["strategy"], r["fraction"]) == (name, fraction)]
        depth = [r["frozen_depth"] for r in mine]
        label = (f"fraction {fraction:g}" if fraction is not None else "fraction ?") + name.removeprefix("partial")
        axes[0].errorbar(depth, [r["test_acc_mean"] for r in mine], yerr=[r["test_acc_std"] for r in mine],
                         marker="o", capsize=3, label=label)
        axes[1].plot(depth, [r["params_trainable"] for r in mine], marker="o", label=label)
        axes[2].plot(depth, [r["s_per_epoch"] for r in mine], marker="o", label=label)
    for ax, ylabel in zip(axes, ("test/acc", "trainable parameters", "seconds per epoch")):
        ax.set(xlabel="frozen stages (from the input)", ylabel=ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    axes[1].set_yscale("log")
    figure.suptitle("partial fine-tuning: how deep to freeze")
    return _save(figure, path)


def plot_movement(table: Table, path: Path) -> Path | None:
    """Per backbone stage (input to head): CKA of its outputs start vs end, and its weights' relative distance."""
    rows = table.as_dicts()
    if not rows:
        return None
    figure, (by_cka, by_distance) = _figure(2, 6.0, 4.0)
    keys = list(dict.fromkeys((r["strategy"], r["fraction"]) for r in rows))
    colors = _colors(dict.fromkeys(name for name, _ in keys))
    for name, fraction in keys:
        mine = [r for r in rows if (r["strategy"], r["fraction"]) == (name, fraction)]
        label = name + (f" @ {fraction:g}" if fraction is not None and len({f for _, f in keys}) > 1 else "")
        stages = [r["stage"] for r in mine]
        by_cka.plot(stages, [r["cka"] for r in mine], marker="o", color=colors[name], label=label)
        by_distance.plot(stages, [r["weight_distance"] for r in mine], marker="o", color=colors[name], label=label)
    by_cka.set(ylabel="linear CKA, start vs end (1 = unchanged)", title="which layers moved: representations")
    by_distance.set(ylabel="||w - w_start|| / ||w_start||", title="which layers moved: weights")
    for ax in (by_cka, by_distance):
        ax.tick_params(axis="x", labelrotation=45)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return _save(figure, path)
