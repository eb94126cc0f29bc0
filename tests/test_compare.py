"""The study's comparison table (mtcolor.eval.compare): hand-computed means, stds and Delta_m."""

import math

import pytest

from mtcolor.eval import compare
from mtcolor.eval.compare import RunMetrics

SINGLE = {"accuracy": 0.80, "l1_x100": 10.0, "psnr": 20.0, "colorfulness_gap": 5.0}
MULTI = {"accuracy": 0.84, "l1_x100": 11.0, "psnr": 22.0, "colorfulness_gap": 4.0}
# By hand:
#   classification: accuracy, higher better: +(0.84 - 0.80) / 0.80 = +0.05          -> +5 %
#   colorization:   L1, lower better:        -(11 - 10) / 10       = -0.10
#                   PSNR, higher better:     +(22 - 20) / 20       = +0.10
#                   |colorfulness - GT|, lower better: -(4 - 5) / 5 = +0.20
#                   mean = 0.20 / 3                                              -> +6.6667 %
#   Delta_m = (5 + 6.6667) / 2 = +5.8333 %
EXPECTED_DELTA_M = (5.0 + 20.0 / 3.0) / 2.0


def test_metric_table_is_explicit():
    by_key = compare.METRIC_BY_KEY
    assert by_key["accuracy"].task == "classification" and not by_key["accuracy"].lower_is_better
    assert by_key["l1_x100"].lower_is_better and by_key["colorfulness_gap"].lower_is_better
    assert not by_key["psnr"].lower_is_better
    assert not by_key["colorfulness"].in_delta_m  # no better direction
    assert compare.expected_metrics("classification") == ("accuracy",)


def test_delta_m_hand_computed():
    value, per_task, note = compare.delta_m(MULTI, SINGLE)
    assert note == ""
    assert per_task["classification"] == pytest.approx(5.0)
    assert per_task["colorization"] == pytest.approx(20.0 / 3.0)
    assert value == pytest.approx(EXPECTED_DELTA_M)  # 5.8333
    # Equal to the references: 0; the references against themselves: 0.
    assert compare.delta_m(SINGLE, SINGLE)[0] == pytest.approx(0.0)


def test_delta_m_missing_metric_is_reported_not_dropped():
    multi = dict(MULTI)
    del multi["psnr"]
    value, _, note = compare.delta_m(multi, SINGLE)
    assert value is None and "psnr" in note and "multi-task" in note


def test_mean_std_over_seeds():
    stat = compare.mean_std([1.0, 2.0, 4.0])
    assert stat.mean == pytest.approx(7.0 / 3.0)
    # sample std: deviations -4/3, -1/3, 5/3 -> (16 + 1 + 25) / 9 / 2 = 42 / 18
    assert stat.std == pytest.approx(math.sqrt(42.0 / 18.0)) and stat.n == 3
    assert compare.mean_std([3.0]).std == 0.0
    assert compare.mean_std([]).mean is None


def _runs():
    runs = []
    # Single-task references, two seeds each, averaging to SINGLE.
    for seed, acc in ((0, 0.78), (1, 0.82)):
        runs.append(RunMetrics("classifier", seed, "classification", "finished", {"accuracy": acc}))
    for seed, l1, psnr, gap in ((0, 9.0, 19.0, 4.0), (1, 11.0, 21.0, 6.0)):
        metrics = {"l1_x100": l1, "psnr": psnr, "colorfulness": 30.0, "colorfulness_gap": gap}
        baseline = {
            "l1_x100": 18.0,
            "psnr": 18.0,
            "colorfulness": 0.0,
            "colorfulness_gap": 35.0,
            "gt_colorfulness": 35.0,
            "accuracy": 0.2,
        }
        runs.append(RunMetrics("colorizer", seed, "colorization", "finished", metrics, baseline))
    # The multi-task variant: two seeds averaging to MULTI.
    for seed, delta in ((0, -1.0), (1, 1.0)):
        metrics = {
            "accuracy": 0.84 + 0.01 * delta,
            "l1_x100": 11.0 + delta,
            "psnr": 22.0 + delta,
            "colorfulness": 31.0,
            "colorfulness_gap": 4.0 + delta,
        }
        runs.append(RunMetrics("paper", seed, "multitask", "finished", metrics))
    return runs


VARIANTS = [
    ("classifier", "classification"),
    ("colorizer", "colorization"),
    ("paper", "multitask"),
    ("broken", "multitask"),
]
REFS = {"classification": "classifier", "colorization": "colorizer"}


def test_build_table_means_and_delta_m():
    rows = compare.build_table(VARIANTS[:3], _runs(), REFS)
    by_name = {r.variant: r for r in rows}
    assert by_name["classifier"].mean("accuracy") == pytest.approx(0.80)
    assert by_name["colorizer"].mean("l1_x100") == pytest.approx(10.0)
    assert by_name["colorizer"].stats["l1_x100"].std == pytest.approx(math.sqrt(2.0))
    paper = by_name["paper"]
    assert paper.seeds_used == [0, 1] and paper.problems == []
    assert paper.delta_m == pytest.approx(EXPECTED_DELTA_M)
    assert by_name["classifier"].delta_m is None and by_name["classifier"].kind == "reference"
    base = rows[-1]
    assert base.kind == "baseline" and base.mean("accuracy") == pytest.approx(0.2)
    assert base.mean("l1_x100") == pytest.approx(18.0)
    # Baseline Delta_m by hand: cls (0.2 - 0.8) / 0.8 = -75 %; col: -(18 - 10) / 10 = -0.8,
    # (18 - 20) / 20 = -0.1, -(35 - 5) / 5 = -6 -> mean -6.9 / 3 = -230 %; Delta_m = -152.5 %.
    assert base.delta_m == pytest.approx(-152.5)
    md = compare.table_markdown(rows, "# header")
    assert "+5.83" in md and "single-task reference" in md
    records = compare.table_records(rows)
    assert records[2]["delta_m_pct"] == pytest.approx(EXPECTED_DELTA_M)


def test_incomplete_and_failed_runs_are_reported():
    runs = _runs()
    runs.append(
        RunMetrics(
            "broken",
            0,
            "multitask",
            "finished",
            {"accuracy": 0.5, "l1_x100": 12.0, "colorfulness": 3.0, "colorfulness_gap": 4.0},
        )
    )
    runs.append(RunMetrics("broken", 1, "multitask", "failed: exit code 1 (unknown field)"))
    rows = compare.build_table(VARIANTS, runs, REFS)
    broken = rows[3]
    assert broken.variant == "broken" and broken.seeds_used == [0]
    assert any("seed 0: incomplete, missing psnr" in p for p in broken.problems)
    assert any("seed 1: failed" in p for p in broken.problems)
    assert broken.delta_m is None and "psnr" in broken.delta_m_note
    assert broken.mean("accuracy") == pytest.approx(0.5)  # its other metrics still count
    md = compare.table_markdown(rows)
    assert "missing psnr" in md and "failed" in md


def test_metrics_from_eval_result():
    result = {
        "model": {
            "accuracy": 0.6,
            "l1_x100": 12.0,
            "psnr": 21.0,
            "ssim": 0.9,
            "colorfulness": 20.0,
        },
        "grayscale_baseline": {"l1_x100": 18.0, "psnr": 19.0, "colorfulness": 0.0, "accuracy": 0.3},
        "ground_truth": {"colorfulness": 26.0},
        "class_names": list("abcde"),
    }
    assert compare.metrics_from_eval(result) == {
        "accuracy": 0.6,
        "l1_x100": 12.0,
        "psnr": 21.0,
        "colorfulness": 20.0,
        "colorfulness_gap": 6.0,
    }
    base = compare.baseline_from_eval(result)
    assert base["accuracy"] == pytest.approx(0.2)  # chance, not the majority class
    assert base["colorfulness_gap"] == 26.0 and base["gt_colorfulness"] == 26.0


# ---------------------------------------------------------------------------------------------
# The runner (mtcolor.eval.study) on fake workdirs: no training, no JAX.

import json  # noqa: E402

from mtcolor.eval import study as study_lib  # noqa: E402


def _eval_result(acc, l1):
    return {
        "checkpoint": "best",
        "class_names": list("abcde"),
        "model": {"accuracy": acc, "l1_x100": l1, "psnr": 20.0, "colorfulness": 30.0},
        "grayscale_baseline": {"l1_x100": 18.0, "psnr": 19.0, "colorfulness": 0.0},
        "ground_truth": {"colorfulness": 35.0},
    }


def _fake_run(workdir, experiment, acc=None, l1=None, finished=True):
    workdir.mkdir(parents=True)
    (workdir / "summary.json").write_text(json.dumps({"finished": finished}))
    (workdir / "best.json").write_text("{}")
    result = _eval_result(acc, l1)
    if acc is None:
        del result["model"]["accuracy"]
    if l1 is None:
        for k in ("l1_x100", "psnr", "colorfulness"):
            del result["model"][k]
    (workdir / "eval_val.json").write_text(json.dumps(result))
    rows = [
        {
            "step": s,
            "val/l1": 0.2 - 0.01 * s,
            "val/loss_cls": 1.6 - 0.1 * s,
            "train/weight_colorization": 1.0,
            "train/weight_classification": 10.0,
        }
        for s in (2, 4)
    ]
    (workdir / "scalars.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_study_configs_load_and_name_only_known_fields():
    for name in ("study_tiny", "study_small", "study_paper"):
        study = study_lib.load_study(f"experiments/configs/{name}.py")
        config = study_lib.load_config(study["config"])
        for spec in study_lib.plan(study, "/tmp/unused"):
            # Every variant's overrides name fields the trainer's config has.
            assert study_lib.unknown_overrides(config, spec.overrides) == [], (name, spec.variant)
    small = study_lib.load_study("experiments/configs/study_small.py")
    assert len(study_lib.plan(small, "r")) == 3 * len(small["variants"])
    # A command-line override replaces the study's own value (32 px).
    specs = study_lib.plan(small, "r", seeds=1, only=["paper"], extra_overrides={"image_size": 48})
    (args,) = [s.override_args() for s in specs]
    assert "--config.image_size=48" in args and "--config.image_size=32" not in args
    assert args[-1] == "--config.seed=0"


def test_runner_reads_runs_and_reports_failed_and_missing_ones(tmp_path):
    study_file = tmp_path / "study.py"
    study_file.write_text(
        "def get_study():\n"
        "    return {'config': 'experiments/configs/tiny.py', 'seeds': 2, 'variants': [\n"
        "        {'name': 'classifier', 'experiment': 'classification'},\n"
        "        {'name': 'colorizer', 'experiment': 'colorization'},\n"
        "        {'name': 'paper'},\n"
        "        {'name': 'bad', 'overrides': {'train.no_such_option': 1}}]}\n"
    )
    root = tmp_path / "runs"
    for seed in (0, 1):
        _fake_run(root / "classifier" / f"seed{seed}", "classification", acc=0.8)
        _fake_run(root / "colorizer" / f"seed{seed}", "colorization", l1=10.0)
    _fake_run(root / "paper" / "seed0", "multitask", acc=0.84, l1=11.0)
    # paper/seed1 never started; "bad" has an option the trainer lacks: refused before training.
    study = study_lib.load_study(study_file)
    spec = study_lib.plan(study, root, only=["bad"])[0]
    state, _ = study_lib.launch(spec, study)
    assert state.startswith("failed: unknown config field(s) train.no_such_option")
    assert study_lib.run_state(spec.workdir).startswith("failed")
    files = study_lib.run_study(str(study_file), root, log=lambda m: None)
    names = {f.name for f in files}
    assert {
        "compare.md",
        "compare.csv",
        "compare.json",
        "val_curves.png",
        "task_weights.png",
    } <= names
    md = (root / "compare.md").read_text()
    assert "validation numbers" in md
    assert "seed 1: missing" in md and "unknown config field" in md
    rows = {r["variant"]: r for r in json.loads((root / "compare.json").read_text())["rows"]}
    # paper vs references: cls +5 %; col: L1 -10 %, PSNR 0, gap 0 -> -3.33 %; Delta_m +0.83 %.
    assert rows["paper"]["delta_m_pct"] == pytest.approx((5.0 - 10.0 / 3.0) / 2.0)
    assert rows["bad"]["delta_m_pct"] is None
