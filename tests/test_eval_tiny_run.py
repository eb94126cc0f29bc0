"""Report, evaluate and colorize on a real tiny multi-task run made once for this module.

The run (experiments/configs/tiny.py: 32 px, synthetic data, 6 steps) is the expensive part, so all
tests that need a trained checkpoint share it. The evaluation is cross-checked against the numbers
the training loop itself logged for the same checkpoint (a separate code path).
"""

import csv
import json

import numpy as np
import pytest
from entry_points import run_module
from PIL import Image

from mtcolor.eval import evaluate, frechet, report


@pytest.fixture(scope="module")
def tiny_run(tiny_multitask_run):
    # tests/conftest.py: one tiny multitask run of experiments/configs/tiny.py shared by the suite.
    return tiny_multitask_run[0]


def test_report_on_real_run(tiny_run, tmp_path):
    summary = json.loads((tiny_run / "summary.json").read_text())
    result = report.make_report([tiny_run], tmp_path / "report", num_images=4)
    with open(tmp_path / "report" / "table1.csv") as file:
        table = {(r["subset"], r["model"]): r for r in csv.DictReader(file)}
    val = summary["final"]["val"]
    assert float(table["Val", "Multi-task"]["accuracy_pct"]) == pytest.approx(100 * val["accuracy"])
    assert float(table["Val", "Multi-task"]["l1_x100"]) == pytest.approx(val["loss_l1"])
    assert any("classifier" in p and "MISSING" in p for p in result.problems)
    fig2 = tmp_path / "report" / "fig2_colorized_validation_batch.png"
    assert fig2 in result.files and fig2.exists()
    for spec in report.figure_specs({}):
        assert (tmp_path / "report" / spec.filename).exists()


def test_report_on_runs_whose_data_is_elsewhere_says_how_to_draw_fig2(tiny_run, tmp_path):
    """Runs trained on another machine: Table I and the curves are written, Fig. 2 is not, with one
    line per missing folder named as --override sets it; a mistyped --override stops first."""
    gone = tmp_path / "gone"
    out = tmp_path / "report"
    moved = [
        "--override=data.source=folder",
        f"--override=data.folder.train_root={gone / 'train'}",
        f"--override=data.folder.val_root={gone / 'val'}",
    ]
    out.mkdir()
    stale = out / "fig2_colorized_validation_batch.png"  # an earlier report's, left alone
    stale.write_bytes(b"earlier")
    proc = run_module("experiments.report", f"--workdirs={tiny_run}", f"--out={out}", *moved)
    assert proc.returncode == 0, proc.stderr[-3000:]
    warnings = [line for line in proc.stdout.splitlines() if line.startswith("WARNING: fig2")]
    assert len(warnings) == 3, proc.stdout
    for line, split in zip(warnings, ("train", "val")):
        flag = f"--override=data.folder.{split}_root={str(gone / split)!r}"
        assert line.startswith(f"WARNING: fig2: not drawn: {flag}: no such directory"), line
    assert "--override=data.KEY=VALUE" in warnings[2]
    assert (out / "table1.csv").exists() and f"wrote {out / 'table1.csv'}" in proc.stdout
    assert stale.read_bytes() == b"earlier" and f"wrote {stale}" not in proc.stdout
    proc = run_module(
        "experiments.report", f"--workdirs={tiny_run}", f"--out={out}", "--override=data.nope=1"
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "--override='data.nope=1': the run's data config has no field 'data.nope'" in proc.stderr


def test_evaluate_matches_training_loop_numbers(tiny_run):
    result = evaluate.evaluate_workdir(tiny_run, "val", frechet_features=False)
    val = json.loads((tiny_run / "summary.json").read_text())["final"]["val"]
    assert result["num_examples"] == 6  # the padded second batch is not counted twice
    assert result["model"]["l1_x100"] == pytest.approx(val["loss_l1"], rel=1e-3)
    assert result["model"]["accuracy"] == pytest.approx(val["accuracy"])
    assert np.sum(result["model"]["confusion_matrix"]) == 6
    for key in ("l1_x100", "psnr", "ssim", "colorfulness"):
        assert key in result["grayscale_baseline"]
    # The loop's baselines (printed at the end of the run) match evaluate's, computed apart.
    assert 100 * val["l1_gray"] == pytest.approx(result["grayscale_baseline"]["l1_x100"], rel=1e-4)
    assert val["colorfulness"] == pytest.approx(result["model"]["colorfulness"], rel=1e-3)
    assert val["colorfulness_true"] == pytest.approx(
        result["ground_truth"]["colorfulness"], rel=1e-4
    )
    assert (tiny_run / "eval_val.json").exists() and (tiny_run / "eval_val.md").exists()


def test_evaluate_with_grain_workers_ends_without_leaking_shared_memory(tiny_run, tmp_path):
    # The run's config with 2 worker processes, evaluated by the real command: a full pass ends
    # in a reference cycle holding the last records' shared memory; left to exit it was reported
    # as "4 leaked shared_memory objects" (this run's last batch: 2 records, L and ab each).
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    config = json.loads((copy / "config.json").read_text())
    config["data"]["worker_count"] = 2
    (copy / "config.json").write_text(json.dumps(config))
    proc = run_module("experiments.evaluate", f"--workdir={copy}", "--nofrechet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "leaked shared_memory" not in proc.stderr, proc.stderr[-3000:]
    assert "Exception ignored" not in proc.stderr, proc.stderr[-3000:]
    assert json.loads((copy / "eval_val.json").read_text())["num_examples"] == 6


def test_resnet18_frechet_extractor_runs_on_model_outputs(tiny_run):
    import jax

    from mtcolor.models import ResNet18, init_variables

    variables = init_variables(ResNet18(in_channels=3), jax.random.key(0), 32, 3)
    extractor = frechet.resnet18_feature_extractor(variables, image_size=32)
    assert extractor.metric_name == "frechet_resnet18_distance"  # never called "fid"
    features = extractor.features(
        np.random.default_rng(0).uniform(0, 1, (3, 32, 32, 3)).astype(np.float32)
    )
    assert features.shape == (3, 512)


def test_colorize_cli_on_real_run(tiny_run, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)).save(photos / "a.jpg")
    Image.fromarray(rng.integers(0, 256, (50, 40), dtype=np.uint8), "L").save(photos / "b.png")
    (photos / "broken.png").write_bytes(b"\x89PNG not really")
    out = run_module(
        "mtcolor.colorize", photos, "--checkpoint", tiny_run, "--out", tmp_path / "out", "--compare"
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "skipped" in out.stderr and "broken.png" in out.stderr
    with Image.open(tmp_path / "out" / "a.png") as image:
        assert image.size == (90, 70)
    with Image.open(tmp_path / "out" / "b_compare.png") as image:
        assert image.size == (120, 50)


def test_evaluate_reads_the_data_where_the_override_says(tiny_run, tmp_path):
    """A run evaluated where its config.json's data is not (another machine): one line naming the
    directory, then the same command with --override=data.KEY=VALUE evaluates it."""
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    gone = tmp_path / "gone"
    moved = [
        "--override=data.source=folder",
        f"--override=data.folder.train_root={gone / 'train'}",
        f"--override=data.folder.val_root={gone / 'val'}",
    ]
    proc = run_module("experiments.evaluate", f"--workdir={copy}", "--nofrechet", *moved)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "error: the data of the run's config.json (--override=data.KEY=VALUE" in proc.stderr
    lines = [x.strip() for x in proc.stderr.splitlines() if x.startswith("  ")]
    assert [line.split(": ")[0] for line in lines] == [
        f"--override=data.folder.train_root={str(gone / 'train')!r}",
        f"--override=data.folder.val_root={str(gone / 'val')!r}",
    ]
    assert all("no such directory" in line for line in lines)
    # Images that are not where the run's files are: one line, from the source itself.
    (gone / "train" / "n01").mkdir(parents=True)
    (gone / "val").mkdir()
    proc = run_module("experiments.evaluate", f"--workdir={copy}", "--nofrechet", *moved)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    [line] = [x.strip() for x in proc.stderr.splitlines() if x.startswith("  ")]
    assert line.startswith("no image files"), line
    # The synthetic validation split made smaller: 4 examples instead of the run's 6.
    proc = run_module(
        "experiments.evaluate",
        f"--workdir={copy}",
        "--nofrechet",
        "--override=data.synthetic.val_size=4",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((copy / "eval_val.json").read_text())
    assert result["num_examples"] == 4
    assert result["data_overrides"] == {"data.synthetic.val_size": 4}
    assert json.loads((copy / "config.json").read_text()) == json.loads(
        (tiny_run / "config.json").read_text()
    )  # the run's own record is not changed


def test_data_overrides_are_typed_like_the_runs_fields():
    from mtcolor.data.config import default_data_config, parse_data_overrides

    data = default_data_config()
    overrides, problems = parse_data_overrides(
        data,
        [
            "data.folder.val_root=/data/val",
            "data.batch_size=8",
            "data.random_flip=false",
            "data.grayscale_filter_threshold=5.5",  # None in the run: still a field
            "data.folder=/x",  # a group, not a field
            "data.batch_size=8.5",
            "folder.val_root=/x",
        ],
    )
    assert overrides == {
        "folder.val_root": "/data/val",
        "batch_size": 8,
        "random_flip": False,
        "grayscale_filter_threshold": 5.5,
    }
    assert [p.split(": ", 1)[1] for p in problems] == [
        "the run's data config has no field 'data.folder'",
        "data.batch_size is int, '8.5' is not one",
        "must be data.KEY=VALUE (e.g. data.folder.val_root=/data/val)",
    ]
