"""The report's views as W&B custom charts and tables, for the sweep's summary run: a user opening the
group sees the race, the few-shot curve, the transfer gain and which layers moved without building a panel.

Keys (one panel each): ``charts/race`` (val/acc per epoch, one line per series), ``charts/few_shot`` (test/acc
against training images), ``charts/transfer_gain`` (bars: series @ fraction), ``charts/movement_cka`` and
``charts/movement_distance`` (per backbone stage, input to head); ``tables/<view>`` hold the numbers.
"""

from __future__ import annotations

from tlexp.report.series import choose_fraction
from tlexp.report.tables import Table, few_shot_table, gain_table, movement_table, race_curves, race_table
from tlexp.results import Job


def _table(table: Table):
    import wandb

    return wandb.Table(columns=table.columns, data=table.rows, allow_mixed_types=True)


def _lines(rows: list[dict], series_key: str, x: str, y: str):
    """(xs, ys, keys) for ``wandb.plot.line_series``: one line per value of ``series_key``."""
    keys = list(dict.fromkeys(r[series_key] for r in rows))
    xs = [[r[x] for r in rows if r[series_key] == key] for key in keys]
    ys = [[r[y] for r in rows if r[series_key] == key] for key in keys]
    return xs, ys, keys


def charts(jobs: list[Job]) -> dict:
    """Every view that has data, as ``{key: wandb chart or table}``."""
    import wandb

    out = {}
    fraction = choose_fraction(jobs)
    curves = race_curves(jobs, fraction) if fraction is not None else {}
    if curves:
        out["tables/race"] = _table(race_table(curves))
        out["charts/race"] = wandb.plot.line_series(
            xs=[c["epoch"] for c in curves.values()], ys=[c["mean"] for c in curves.values()], keys=list(curves),
            title=f"The race: val/acc per epoch (fraction {fraction:g}, mean over seeds)", xname="epoch")
    few_shot = few_shot_table(jobs)
    if few_shot.rows:
        out["tables/few_shot"] = _table(few_shot)
        xs, ys, keys = _lines(few_shot.as_dicts(), "strategy", "train_size", "test_acc_mean")
        out["charts/few_shot"] = wandb.plot.line_series(xs=xs, ys=ys, keys=keys, title="Few-shot: test/acc vs training images",
                                                        xname="training images")
    gain = gain_table(few_shot)
    if gain.rows:
        bars = Table(["series", "gain"], [[f"{r['strategy']} @ {r['fraction']:g}", r["gain"]] for r in gain.as_dicts()])
        out["tables/transfer_gain"] = _table(gain)
        out["charts/transfer_gain"] = wandb.plot.bar(_table(bars), "series", "gain", title="Transfer gain over scratch (test/acc)")
    movement = movement_table(jobs)
    if movement.rows:
        rows = [{**r, "series": f"{r['strategy']} @ {r['fraction']:g}" if r["fraction"] is not None else r["strategy"]}
                for r in movement.as_dicts()]
        stage_index = {}
        for r in rows:
            r["stage_index"] = stage_index.setdefault((r["series"], r["stage"]), sum(1 for s, _ in stage_index if s == r["series"]))
        out["tables/movement"] = _table(movement)
        for value, title in (("cka", "CKA of each stage's outputs, start vs end (1 = unchanged)"),
                             ("weight_distance", "Relative weight distance from the start, per stage")):
            xs, ys, keys = _lines(rows, "series", "stage_index", value)
            out[f"charts/movement_{'cka' if value == 'cka' else 'distance'}"] = wandb.plot.line_series(
                xs=xs, ys=ys, keys=keys, title=title + " (x: stage, input to head)", xname="stage")
    return out
