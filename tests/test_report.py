"""Report on synthetic workdirs written by the test: finished, in-progress, missing runs."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from entry_points import run_module
from PIL import Image

from mtcolor.eval import report


def _write_run(workdir: Path, experiment: str, epochs: int, *, finished: bool, offset: float = 0.0):
    workdir.mkdir(parents=True)
    (workdir / "config.json").write_text(json.dumps({"experiment": experiment}))
    rows = []
    for i in range(1, 2 * epochs + 1):  # logged twice per epoch, like the paper
        row = {"step": 100 * i, "epoch": i / 2}
        for split in ("train", "val"):
            if experiment in ("colorization", "multitask"):
                row[f"{split}/l1"] = 0.2 - 0.01 * i + offset
                row[f"{split}/loss_l1"] = 100 * row[f"{split}/l1"]
                row[f"{split}/loss_gan"] = 1.0 + 0.1 * i
            if experiment in ("classification", "multitask"):
                row[f"{split}/loss_cls"] = 1.5 / i
                row[f"{split}/accuracy"] = 0.5 + 0.01 * i + offset
        rows.append(row)
    lines = [json.dumps(row) for row in rows]
    if not finished:
        lines.append('{"step": 99999, "epoch": 9')  # a line the running job is still writing
    (workdir / "scalars.jsonl").write_text("\n".join(lines) + "\n")
    if finished:
        last = rows[-1]
        final = {
            split: {k.split("/")[1]: v for k, v in last.items() if k.startswith(split + "/")}
            for split in ("train", "val")
        }
        (workdir / "summary.json").write_text(
            json.dumps(
                {
                    "experiment": experiment,
                    "steps": last["step"],
                    "epochs": last["epoch"],
                    "final": final,
                }
            )
        )
    return rows


@pytest.fixture
def three_runs(tmp_path):
    rows = {
        "classification": _write_run(tmp_path / "cls", "classification", 4, finished=True),
        "colorization": _write_run(
            tmp_path / "col", "colorization", 3, finished=True, offset=0.001
        ),
        "multitask": _write_run(tmp_path / "mt", "multitask", 2, finished=False, offset=0.002),
    }
    return tmp_path, rows


def _png_ok(path: Path):
    assert path.exists(), path
    with Image.open(path) as image:
        assert image.size[0] > 200 and image.size[1] > 200


def test_report_three_runs_table_holds_logged_numbers(three_runs):
    root, rows = three_runs
    # Argument order must not matter.
    result = report.make_report(
        [root / "mt", root / "cls", root / "col"], root / "out", figure_two=False
    )
    with open(root / "out" / "table1.csv") as file:
        table = {(r["subset"], r["model"]): r for r in csv.DictReader(file)}
    cls_last, col_last, mt_last = (
        rows["classification"][-1],
        rows["colorization"][-1],
        rows["multitask"][-1],
    )
    assert float(table["Val", "Single-task"]["accuracy_pct"]) == pytest.approx(
        100 * cls_last["val/accuracy"]
    )
    assert float(table["Train", "Single-task"]["accuracy_pct"]) == pytest.approx(
        100 * cls_last["train/accuracy"]
    )
    assert float(table["Val", "Single-task"]["l1_x100"]) == pytest.approx(col_last["val/loss_l1"])
    # The in-progress multi-task run: latest complete line, the cut-off line ignored.
    assert float(table["Val", "Multi-task"]["accuracy_pct"]) == pytest.approx(
        100 * mt_last["val/accuracy"]
    )
    assert float(table["Train", "Multi-task"]["l1_x100"]) == pytest.approx(mt_last["train/loss_l1"])
    assert "in progress" in table["Val", "Multi-task"]["accuracy_source"]
    markdown = (root / "out" / "table1.md").read_text()
    assert f"{100 * cls_last['val/accuracy']:.1f}" in markdown
    assert "in progress" in markdown
    assert not [p for p in result.problems if "MISSING" in p]
    for name in (
        "fig3_l1_multitask_vs_colorizer",
        "fig4_cls_loss_multitask_vs_classifier",
        "fig5_multitask_val_losses",
        "fig6_multitask_l1_train_vs_val",
        "fig7_multitask_cls_train_vs_val",
    ):
        _png_ok(root / "out" / f"{name}.png")


def test_report_missing_run_is_named(three_runs):
    root, rows = three_runs
    result = report.make_report(
        [root / "mt", root / "cls", root / "nonexistent"], root / "out", figure_two=False
    )
    assert any("MISSING" in p and "colorizer" in p for p in result.problems)
    assert any("nonexistent" in p and "no such directory" in p for p in result.problems)
    with open(root / "out" / "table1.csv") as file:
        table = {(r["subset"], r["model"]): r for r in csv.DictReader(file)}
    assert table["Val", "Single-task"]["l1_x100"] == ""
    assert table["Val", "Single-task"]["l1_source"] == "run missing"
    assert float(table["Val", "Single-task"]["accuracy_pct"]) > 0
    markdown = (root / "out" / "table1.md").read_text()
    assert "single-task colorizer: **MISSING**" in markdown
    _png_ok(root / "out" / "fig3_l1_multitask_vs_colorizer.png")


def test_series_in_epochs_for_runs_of_different_lengths(three_runs):
    root, _ = three_runs
    runs, _ = report.assign_roles([root / "cls", root / "col", root / "mt"])
    epochs_cls, _ = runs["classification"].series("val/loss_cls")
    epochs_mt, values_mt = runs["multitask"].series("val/loss_cls")
    assert epochs_cls[-1] == 4.0 and epochs_mt[-1] == 2.0
    np.testing.assert_allclose(values_mt, [1.5 / i for i in range(1, 5)])


def test_figure_two_grid_rows(tmp_path):
    rng = np.random.default_rng(0)
    L = rng.uniform(-1, 1, (3, 32, 32, 1)).astype(np.float32)
    ab = rng.uniform(-0.3, 0.3, (3, 32, 32, 2)).astype(np.float32)
    report.figure_two_grid(
        L, None, ab, ab, tmp_path / "fig2.png", {"single-task colorizer": "MISSING"}
    )
    _png_ok(tmp_path / "fig2.png")


def test_experiments_report_main(three_runs):
    root, _ = three_runs
    out = run_module(
        "experiments.report",
        "--workdirs",
        root / "cls",
        root / "mt",
        "--out",
        root / "rep",
        "--nofig2",
    )
    assert out.returncode == 0, out.stderr
    assert "MISSING" in out.stdout and (root / "rep" / "table1.md").exists()
