"""The whole config is checked before any work: every problem at once, one line each naming the
field, exit status 2, no traceback, nothing written (mtcolor.train.validation)."""

import numpy as np
import pytest
from entry_points import run_module

from experiments.configs import demo, paper, tiny
from mtcolor.train import validation

# (command-line override on the tiny config, the field its message must name). The first five are
# what a user tried (issue 12); each names the field it breaks.
BAD_OVERRIDES = [
    ("--config.image_size=33", "image_size"),
    ("--config.batch_size=0", "batch_size"),
    ("--config.optim.learning_rate=-1", "optim.learning_rate"),
    ("--config.train.frozen_epochs=-1", "train.frozen_epochs"),
    ("--config.loss.gan_mode=foo", "loss.gan_mode"),
    ("--config.seed=-1", "seed"),
    ("--config.data.resize_mode=squash", "data.resize_mode"),
    ("--config.data.worker_count=-2", "data.worker_count"),
    ("--config.data.read_threads=0", "data.read_threads"),
    ("--config.data.max_bad_fraction=1.5", "data.max_bad_fraction"),
    ("--config.data.synthetic.val_size=0", "data.synthetic.val_size"),
    ("--config.model.num_classes=1", "model.num_classes"),
    ("--config.model.pooling=max", "model.pooling"),
    ("--config.model.decoder=resnet", "model.decoder"),
    ("--config.model.dtype=float16", "model.dtype"),
    ("--config.model.pretrained=/nonexistent/resnet18.pth", "model.pretrained"),
    ("--config.loss.l1_weight=0", "loss.l1_weight"),
    ("--config.loss.gan_weight=-1", "loss.gan_weight"),
    ("--config.loss.weighting=kendall", "loss.weighting"),
    ("--config.loss.gradient=pcgard", "loss.gradient"),
    ("--config.optim.b1=1.0", "optim.b1"),
    ("--config.optim.b2=-0.1", "optim.b2"),
    ("--config.train.evals_per_epoch=0", "train.evals_per_epoch"),
    ("--config.train.log_every_steps=0", "train.log_every_steps"),
    ("--config.train.max_to_keep=0", "train.max_to_keep"),
    ("--config.train.early_stopping_patience=0", "train.early_stopping_patience"),
    ("--config.train.max_steps_per_run=0", "train.max_steps_per_run"),
]


def _entry_point(tmp_path, *overrides):
    workdir = tmp_path / "run"
    proc = run_module(
        "experiments.multitask",
        "--config=experiments/configs/tiny.py",
        f"--workdir={workdir}",
        *overrides,
    )
    return proc, workdir


def test_every_bad_field_is_reported_at_once_by_the_entry_point(tmp_path):
    assert len(BAD_OVERRIDES) >= 20
    proc, workdir = _entry_point(tmp_path, *(flag for flag, _ in BAD_OVERRIDES))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert not workdir.exists()  # nothing written
    lines = [line.strip() for line in proc.stderr.splitlines() if line.strip().startswith("--")]
    for flag, field in BAD_OVERRIDES:
        value = flag.split("=", 1)[1]
        named = [line for line in lines if line.startswith(f"--config.{field}=")]
        assert named, f"no line names {field}:\n{proc.stderr}"
        if field.split(".")[-1] == flag.split("=")[0].split(".")[-1]:
            assert any(value in line for line in named), (field, named)


def test_one_bad_field_gives_one_line_and_what_is_allowed(tmp_path):
    proc, workdir = _entry_point(tmp_path, "--config.loss.gan_mode=foo")
    assert proc.returncode == 2 and not workdir.exists()
    lines = [line.strip() for line in proc.stderr.splitlines() if line.strip().startswith("--")]
    assert lines == ["--config.loss.gan_mode='foo': must be one of 'l1', 'vanilla', 'lsgan'"]


def test_a_size_the_data_config_follows_is_reported_once():
    # data.image_size and data.batch_size follow the top-level fields (references): a bad value
    # is one problem, named once, not again as the data's.
    config = tiny.get_config()
    config.image_size, config.batch_size = 48, 0
    assert [p.split(":")[0] for p in validation.config_problems(config)] == [
        "--config.batch_size=0",
        "--config.image_size=48",
    ]
    # A config whose data section does not follow (a user's own, references dropped): the data's
    # own value is checked and named.
    import ml_collections

    config = ml_collections.ConfigDict(tiny.get_config().to_dict())
    config.data.image_size = 40
    assert [p.split(":")[0] for p in validation.config_problems(config)] == [
        "--config.data.image_size=40"
    ]


def test_shipped_configs_pass(tmp_path):
    for module in (demo, tiny):
        assert validation.config_problems(module.get_config(), device_count=1) == [], module
    config = paper.get_config()  # the paper's: the user names the ImageNet folders
    assert [p.split("=")[0] for p in validation.config_problems(config)] == [
        "--config.data.folder.train_root",
        "--config.data.folder.val_root",
    ]
    config.data.folder.train_root = config.data.folder.val_root = str(tmp_path)
    assert validation.config_problems(config, device_count=1) == []


def test_cross_field_rules():
    config = tiny.get_config()
    config.batch_size = 6
    config.train.frozen_epochs, config.train.unfrozen_epochs = 0, 0
    config.data.synthetic.train_size = 4
    problems = validation.config_problems(config, device_count=4)
    assert any(
        p.startswith("--config.data.batch_size=6: must be divisible by the 4 devices")
        for p in problems
    ), problems
    assert any(
        p.startswith("--config.train.unfrozen_epochs=0") and "at least 1" in p for p in problems
    ), problems
    assert any(p.startswith("--config.data.synthetic.train_size=4") for p in problems), problems


def test_folder_roots_must_exist(tmp_path):
    config = tiny.get_config()
    config.data.source = "folder"
    config.data.folder.train_root = str(tmp_path / "missing")
    problems = validation.config_problems(config)
    assert problems == [
        f"--config.data.folder.train_root='{tmp_path / 'missing'}': no such "
        "directory (the training images, one folder per class (or, for a colorizer, one folder of "
        "photos))",
        "--config.data.folder.val_root='': must name the validation tree, unless "
        "data.folder.train_split_file and val_split_file split train_root in two",
    ]
    (tmp_path / "missing").mkdir()
    config.data.folder.val_root = str(tmp_path / "missing")
    assert validation.config_problems(config) == []
    # Or split files divide the one root in two (each file must exist).
    config.data.folder.val_root = ""
    for split in ("train", "val"):
        (tmp_path / f"{split}.txt").write_text("")
        config.data.folder[f"{split}_split_file"] = str(tmp_path / f"{split}.txt")
    assert validation.config_problems(config) == []
    # evaluate names the fields as its --override sets them.
    config.data.folder.train_split_file = ""
    assert validation.data_problems(config, flag_prefix="--override=") == [
        "--override=data.folder.val_root='': must name the validation tree, unless "
        "data.folder.train_split_file and val_split_file split train_root in two"
    ]


def test_pretrained_weights_that_cannot_fit_stop_with_one_problem_each(tmp_path):
    """A file that is no weights file by its name is refused with the config; one whose contents
    do not fit ResNet-18 stops before any training, naming the option and listing the keys, exit
    2, no traceback. torchvision's ResNet-18 body has 100 keys (conv1, bn1's 4, 8 blocks of 10, 3
    downsamples of 5; fc and num_batches_tracked are not read): conv1 alone misses 99."""
    labels = tmp_path / "labels.csv"
    labels.write_text("file,label\n")
    config = tiny.get_config()
    config.model.pretrained = str(labels)
    assert validation.config_problems(config) == [
        f"--config.model.pretrained='{labels}': must be None, \"torchvision\" or the path of an "
        "existing weights file (.pth, .pt, .bin, .ckpt, .safetensors, .npz)"
    ]
    wrong = tmp_path / "resnet18.npz"
    np.savez(wrong, **{"conv1.weight": np.zeros((64, 3, 7, 7), np.float32)})
    proc, _ = _entry_point(tmp_path, f"--config.model.pretrained={wrong}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("  ")]
    assert lines[0] == (
        f"  --config.model.pretrained='{wrong}': ResNet-18 weights do not match in {wrong}: "
        "99 missing, 0 unexpected, 0 shape mismatches."
    )
    assert lines[1].startswith("    Missing keys: bn1.weight, bn1.bias, bn1.running_mean")


def _stopped_folder_run(tmp_path, train_root, val_root, starts: str):
    """The entry point on folder data, which must stop before any work (exit 2, no traceback,
    nothing written): its stderr lines that start with ``starts``, and the stderr's end."""
    proc, workdir = _entry_point(
        tmp_path,
        "--config.data.source=folder",
        f"--config.data.folder.train_root={train_root}",
        f"--config.data.folder.val_root={val_root}",
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and not workdir.exists()
    lines = [line.strip() for line in proc.stderr.splitlines() if line.strip().startswith(starts)]
    return lines, proc.stderr[-3000:]


def test_more_data_classes_than_the_head_predicts_stops_before_any_work(tmp_path):
    # Six class folders, the default head of 5: label 5 would train to a NaN loss after the first
    # step (what a user saw on a 1000-class folder); the run must stop at once, one line naming
    # model.num_classes with the data's count, nothing written.
    from test_data_files import write_tree

    classes = {f"class{i}": 1 for i in range(6)}
    write_tree(tmp_path / "train", classes)
    write_tree(tmp_path / "val", classes, seed=1)
    lines, stderr = _stopped_folder_run(tmp_path, tmp_path / "train", tmp_path / "val", "--")
    assert len(lines) == 1 and lines[0].startswith(
        "--config.model.num_classes=5: the training data has 6 classes (class0, class1, class2, "
        "class3, class4, ...; labels 0..5) but the class head predicts 5"
    ), stderr
    # A library user's own tasks are named by task; a head at least as wide as the data passes.
    from mtcolor.tasks import Classification, Colorization

    tasks = (Colorization(), Classification(num_classes=3, name="species"))
    names = ("a", "b", "c", "d")
    assert validation.class_count_problems(tasks, names, tasks_from_config=False)[0].startswith(
        "task 'species' (num_classes=3): the training data has 4 classes"
    )
    assert validation.class_count_problems(tasks, names[:3]) == []
    # Data without labels: the classification task is named, a colorizer alone passes.
    (problem,) = validation.class_count_problems(tasks, None, unlabeled_data="why")
    assert problem.startswith("task 'species': the training data has no class labels (why)")
    assert validation.class_count_problems(tasks[:1], None) == []


def test_classification_on_a_folder_without_class_folders_stops_before_any_work(tmp_path):
    # A folder of photos has no labels: every label would be 0 and the classifier would learn it
    # in silence. The multi-task run stops at once, one line naming the task and the option.
    photos = tmp_path / "photos"
    photos.mkdir()
    from test_data_files import colorful

    for i in range(4):
        colorful(i).save(photos / f"{i}.jpg")
    lines, stderr = _stopped_folder_run(tmp_path, photos, photos, "task")
    assert lines == [
        "task 'classification': the training data has no class labels "
        f"(--config.data.folder.train_root={str(photos)!r} has no class folders) and a "
        "classification task needs them: sort the images into class folders, give "
        "data.folder.train_split_file with a class column, or train the colorizer alone "
        "(experiments.colorization)"
    ], stderr


def test_method_options_are_checked_on_a_sound_config():
    config = tiny.get_config()
    config.loss.gradient = "cagrad"
    config.loss.gradient_options.c = -1.0
    with pytest.raises(validation.ConfigError, match="gradient_options"):
        validation.check_config(config)


def test_unknown_fields_are_named_with_a_suggestion(tmp_path):
    proc, workdir = _entry_point(
        tmp_path,
        "--config.trian.frozen_epochs=1",
        "--config.data.batch_sise=3",
        "--config.train.max_steps_per_run=2",
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    lines = [line.strip() for line in proc.stderr.splitlines() if line.startswith("  ")]
    assert lines == [
        "--config.trian.frozen_epochs=1: config has no field 'trian' "
        "(did you mean 'config.train'?)",
        "--config.data.batch_sise=3: config.data has no field 'batch_sise' "
        "(did you mean 'config.data.batch_size'?)",
    ]
    assert not workdir.exists()


@pytest.mark.parametrize(
    "argv, line",
    [
        ([], "--workdir: required (Output directory (re-use it to resume).)"),
        (
            ["--workdir=W", "--wrokdir=W"],
            "Unknown command line flag 'wrokdir'. Did you mean: workdir ?",
        ),
        (
            ["--workdir=W", "--config=experiments/configs/nope.py", "--config.seed=1"],
            "--config=experiments/configs/nope.py: the config file does not load ([Errno 2] No "
            "such file or directory: 'experiments/configs/nope.py')",
        ),
        # Without --config the default file loads when the flag is defined, overrides applied.
        (
            ["--workdir=W", "--config.trian=1"],
            "--config.trian=1: config has no field 'trian' (did you mean 'config.train'?)",
        ),
    ],
    ids=["no_workdir", "unknown_flag", "no_config_file", "mistyped_override_of_default_config"],
)
def test_command_line_mistakes_give_one_line_each(argv, line, tmp_path):
    """What a newcomer mistypes first (before: absl's and config_flags' tracebacks, exit 1)."""
    argv = [a.replace("=W", f"={tmp_path / 'run'}") for a in argv]
    proc = run_module("experiments.multitask", *argv)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert [x.strip() for x in proc.stderr.splitlines() if x.startswith("  ")] == [line]
    assert not (tmp_path / "run").exists()


def test_a_tfds_dataset_not_prepared_stops_the_run_in_one_line(tmp_path):
    """Before: tfds started generating imagenet2012 in ~/tensorflow_datasets, failed on a missing
    module, and the run ended in two chained tracebacks."""
    data_dir = tmp_path / "tfds"
    proc = run_module(
        "experiments.multitask",
        "--config=experiments/configs/tiny.py",
        "--config.data.source=tfds",
        "--config.data.tfds.name=imagenet2012",
        f"--config.data.tfds.data_dir={data_dir}",
        f"--workdir={tmp_path / 'run'}",
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert "error: the data has 1 problem(s):" in proc.stderr
    [line] = [x.strip() for x in proc.stderr.splitlines() if x.startswith("  ")]
    manual = data_dir / "downloads" / "manual"
    assert line.startswith(
        f"tfds dataset 'imagenet2012' is not prepared as array_record in {str(data_dir)!r} "
        f"(no {data_dir / 'imagenet2012'}); imagenet2012 must be downloaded by hand: put "
        f"ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in {manual}/"
    ), line
    assert f"`python -m mtcolor.data.tfds_source imagenet2012 --data_dir={data_dir}`" in line
    assert not (tmp_path / "run").exists() and not data_dir.exists()


def test_evaluate_and_report_check_their_arguments(tmp_path):
    from experiments import evaluate, report

    run = tmp_path / "run"
    (run / "checkpoints" / "6").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    assert evaluate.argument_problems(str(run), "val", None, None) == []
    problems = evaluate.argument_problems(str(run), "test", "7", str(tmp_path / "inception.pth"))
    assert [p.split(":")[0] for p in problems] == [
        "--checkpoint=7",
        "--split='test'",
        f"--fid_weights={str(tmp_path / 'inception.pth')!r}",
    ]
    assert "it has [6]" in problems[0]
    assert evaluate.argument_problems(str(tmp_path), "val", "best", None) == [
        f"--workdir={str(tmp_path)!r}: not a training run (no config.json or checkpoints in it)"
    ]
    (run / "config.json").write_text('{"experiment": "multi')  # cut off
    assert [p.split(" (")[0] for p in evaluate.argument_problems(str(run), "val", None, None)] == [
        f"--workdir={str(run)!r}: its config.json does not parse"
    ]
    (run / "config.json").write_text("{}")
    (tmp_path / "out.txt").write_text("")
    problems = report.argument_problems(
        [str(run), str(tmp_path / "nope")], str(tmp_path / "out.txt"), 0
    )
    assert [p.split(":")[0] for p in problems] == [
        f"--workdirs={str(tmp_path / 'nope')!r}",
        f"--out={str(tmp_path / 'out.txt')!r}",
        "--num_images=0",
    ]


def test_compare_checks_its_arguments(tmp_path):
    from mtcolor.eval.study import argument_problems

    study = "experiments/configs/study_tiny.py"
    assert argument_problems(study, 2, ["paper"], ["data.image_size=64"]) == []
    assert argument_problems(str(tmp_path / "nope.py"), None, None, []) == [
        f"--study={str(tmp_path / 'nope.py')!r}: no such file"
    ]
    problems = argument_problems(study, 0, ["paper", "foo"], ["seed"])
    assert [p.split(":")[0] for p in problems] == [
        "--seeds=0",
        "--only=paper,foo",
        "--override='seed'",
    ]
    assert "no variant ['foo']" in problems[1]
