"""One check of a whole training config before any work (no data, weights or compilation).

``check_config(config)`` raises ``ConfigError`` listing every problem at once, one line each: the
field as it is given on the command line, the value given and what is allowed. The experiment
entry points (mtcolor.train.cli) print those lines and exit with status 2, before the workdir is
touched; ``train_and_evaluate`` runs the same check for library users.

The checks are plain functions over ml_collections paths rather than a schema library: the
config's types come from ml_collections itself (it already rejects a string for an int field), and
what is left are ranges, sets and cross-field rules (image size vs the network's strides, batch vs
devices, at least one step) that a schema would need custom code for anyway.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from typing import Any

from mtcolor.state_dict_files import WEIGHTS_FILE_SUFFIXES

_MISSING = object()


class ConfigError(ValueError):
    """A config with problems; ``problems`` has one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        noun = "problem" if len(problems) == 1 else "problems"
        super().__init__(f"the config has {len(problems)} {noun}:\n  " + "\n  ".join(problems))


def _get(config, path: str):
    node = config
    for part in path.split("."):
        try:
            node = node[part]
        except (KeyError, TypeError, AttributeError):
            return _MISSING
    return node


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class _Checks:
    """Collects problems; each method checks one field if the config has it."""

    def __init__(self, config, flag_prefix: str = "--config."):
        self.config = config
        self.flag_prefix = flag_prefix  # how the command that reads the config sets a field
        self.problems: list[str] = []

    def value(self, path: str):
        return _get(self.config, path)

    def problem(self, path: str, value: Any, allowed: str) -> None:
        self.problems.append(f"{self.flag_prefix}{path}={value!r}: {allowed}")

    def integer(self, path: str, minimum: int | None = None, optional: bool = False) -> None:
        value = self.value(path)
        if value is _MISSING or (optional and value is None):
            return
        what = "an integer" + (f" >= {minimum}" if minimum is not None else "")
        if optional:
            what += " or None"
        if not _is_int(value) or (minimum is not None and value < minimum):
            self.problem(path, value, f"must be {what}")

    def number(
        self,
        path: str,
        *,
        above: float | None = None,
        at_least: float | None = None,
        below: float | None = None,
        at_most: float | None = None,
        optional: bool = False,
    ) -> None:
        value = self.value(path)
        if value is _MISSING or (optional and value is None):
            return
        bounds = []
        if above is not None:
            bounds.append(f"> {above}")
        if at_least is not None:
            bounds.append(f">= {at_least}")
        if below is not None:
            bounds.append(f"< {below}")
        if at_most is not None:
            bounds.append(f"<= {at_most}")
        what = "a finite number" + (" " + " and ".join(bounds) if bounds else "")
        if optional:
            what += " or None"
        ok = _is_number(value) and not (
            (above is not None and value <= above)
            or (at_least is not None and value < at_least)
            or (below is not None and value >= below)
            or (at_most is not None and value > at_most)
        )
        if not ok:
            self.problem(path, value, f"must be {what}")

    def one_of(self, path: str, allowed: Iterable, optional: bool = False) -> None:
        value = self.value(path)
        allowed = tuple(allowed)
        if value is _MISSING or (optional and value is None):
            return
        if value not in allowed:
            extra = " or None" if optional else ""
            self.problem(path, value, f"must be one of {', '.join(map(repr, allowed))}{extra}")

    def boolean(self, path: str) -> None:
        value = self.value(path)
        if value is not _MISSING and not isinstance(value, bool):
            self.problem(path, value, "must be True or False")

    def existing_dir(self, path: str, why: str) -> None:
        value = self.value(path)
        if value is _MISSING:
            return
        if not value:
            self.problem(path, value, f"must name a directory ({why})")
        elif not os.path.isdir(os.path.expanduser(str(value))):
            self.problem(path, value, f"no such directory ({why})")

    def existing_file_if_set(self, path: str) -> None:
        value = self.value(path)
        if value and value is not _MISSING and not os.path.isfile(os.path.expanduser(str(value))):
            self.problem(path, value, "no such file")


def _check_top(c: _Checks) -> None:
    from mtcolor.tasks.paper import EXPERIMENTS

    c.one_of("experiment", EXPERIMENTS)
    c.integer("seed", 0)
    c.integer("batch_size", 1)
    for path in ("image_size", "data.image_size"):
        size = c.value(path)
        if path == "data.image_size" and size == c.value("image_size"):
            continue  # follows image_size (a reference): its problem is already reported once
        if size is not _MISSING and (not _is_int(size) or size < 32 or size % 32):
            c.problem(
                path,
                size,
                "must be a multiple of 32 and at least 32 (ResNet-18 halves "
                "the image 5 times and the decoder doubles it back)",
            )


def _check_data(c: _Checks, device_count: int | None, source: bool) -> None:
    from mtcolor.data.decode import RESIZE_MODES
    from mtcolor.data.input_paths import INPUT_PATHS
    from mtcolor.data.pipeline import UNLABELED_SOURCES

    if source:
        c.one_of("data.source", ("synthetic", "folder", "tfds"))
    batch = c.value("data.batch_size")
    if batch != c.value("batch_size"):  # else it follows batch_size, already checked
        c.integer("data.batch_size", 1)
    if device_count and _is_int(batch) and batch >= 1 and batch % device_count:
        c.problem(
            "data.batch_size",
            batch,
            f"must be divisible by the {device_count} devices (each takes an equal slice)",
        )
    c.one_of("data.resize_mode", RESIZE_MODES)
    for flag in ("data.random_flip", "data.shuffle", "data.jpeg_draft"):
        c.boolean(flag)
    c.integer("data.worker_count", 0)
    c.integer("data.read_threads", 1)
    c.integer("data.prefetch_buffer_size", 1)
    c.integer("data.worker_buffer_size", 1)
    classes = c.value("data.classes")
    if classes not in (None, _MISSING) and (
        isinstance(classes, str) or not all(isinstance(x, str) for x in classes) or not classes
    ):
        c.problem(
            "data.classes",
            classes,
            "must be a non-empty list of wnids or class names, or None for every class",
        )
    c.number("data.max_bad_fraction", at_least=0, at_most=1, optional=True)
    c.integer("data.bad_check_min_examples", 0)
    c.integer("data.min_image_side", 1)
    c.integer("data.max_image_pixels", 1)
    c.number("data.grayscale_filter_threshold", at_least=0, optional=True)
    source = c.value("data.source") if source else None
    if source == "synthetic":
        c.integer("data.synthetic.train_size", 1)
        c.integer("data.synthetic.val_size", 1)
        c.integer("data.synthetic.num_classes", 2)
        train_size = c.value("data.synthetic.train_size")
        if _is_int(train_size) and _is_int(batch) and 1 <= train_size < batch:
            c.problem(
                "data.synthetic.train_size",
                train_size,
                f"must be at least data.batch_size ({batch}) for one training step",
            )
    elif source == "folder":
        c.existing_dir(
            "data.folder.train_root",
            "the training images, one folder per class (or, for a colorizer, one folder of photos)",
        )
        if c.value("data.folder.val_root"):
            c.existing_dir("data.folder.val_root", "the validation images")
        elif not (
            c.value("data.folder.train_split_file") and c.value("data.folder.val_split_file")
        ):
            c.problem(
                "data.folder.val_root",
                c.value("data.folder.val_root"),
                "must name the validation tree, unless data.folder.train_split_file and "
                "val_split_file split train_root in two",
            )
        c.existing_file_if_set("data.folder.train_split_file")
        c.existing_file_if_set("data.folder.val_split_file")
    unlabeled = c.value("data.unlabeled.source")
    c.one_of("data.unlabeled.source", UNLABELED_SOURCES, optional=True)
    c.one_of("data.input_path", INPUT_PATHS)
    c.number("data.resident.max_memory_fraction", above=0, at_most=1)
    if c.value("data.input_path") == "resident" and unlabeled not in (None, _MISSING):
        c.problem(
            "data.input_path",
            "resident",
            "reads labelled data only; with data.unlabeled.source set use 'grain' or "
            "'auto' (which then chooses grain)",
        )
    if unlabeled not in (None, _MISSING):
        c.number("data.unlabeled.fraction", above=0, below=1)
        c.number("data.unlabeled.grayscale_threshold", at_least=0, optional=True)
        if unlabeled == "folder":
            c.existing_dir("data.unlabeled.folder.root", "the unlabeled images")


def _check_model(c: _Checks) -> None:
    import jax

    from mtcolor.precision import COMPUTE_DTYPES
    from mtcolor.tasks.colorization import DECODERS

    c.integer("model.num_classes", 2)
    c.one_of("model.pooling", ("flatten", "avg"))
    c.one_of("model.decoder", DECODERS)
    c.one_of("model.dtype", tuple(COMPUTE_DTYPES))
    if c.value("model.dtype") == "float64" and not jax.config.jax_enable_x64:
        # Without x64 mode JAX computes float64 requests in float32, with a warning per layer.
        c.problem("model.dtype", "float64", "needs JAX's x64 mode: set JAX_ENABLE_X64=1")
    pretrained = c.value("model.pretrained")
    if pretrained not in (None, _MISSING, "torchvision") and not (
        os.path.isfile(os.path.expanduser(str(pretrained)))
        and os.path.splitext(str(pretrained))[1].lower() in WEIGHTS_FILE_SUFFIXES
    ):
        c.problem(
            "model.pretrained",
            pretrained,
            'must be None, "torchvision" or the path of an existing weights file ('
            + ", ".join(WEIGHTS_FILE_SUFFIXES)
            + ")",
        )
    synthetic_classes = c.value("data.synthetic.num_classes")
    num_classes = c.value("model.num_classes")
    if (
        c.value("data.source") == "synthetic"
        and _is_int(synthetic_classes)
        and _is_int(num_classes)
        and synthetic_classes > num_classes
    ):
        c.problem(
            "model.num_classes",
            num_classes,
            f"must be at least data.synthetic.num_classes ({synthetic_classes})",
        )


def _check_loss(c: _Checks) -> None:
    from mtcolor.mtl.gradient import GRADIENT_METHODS
    from mtcolor.mtl.weighting import WEIGHTING_METHODS
    from mtcolor.tasks.losses import GAN_MODES

    c.one_of("loss.gan_mode", GAN_MODES)
    c.number("loss.l1_weight", above=0)
    # 0 switches the adversarial term off (an ablation), so it may be 0 where the others may not.
    c.number("loss.gan_weight", at_least=0)
    c.number("loss.cls_weight", above=0, optional=True)
    c.one_of("loss.weighting", WEIGHTING_METHODS)
    c.one_of("loss.gradient", GRADIENT_METHODS)


def _check_optim(c: _Checks) -> None:
    c.number("optim.learning_rate", above=0)
    c.number("optim.b1", at_least=0, below=1)
    c.number("optim.b2", at_least=0, below=1)


def _check_train(c: _Checks) -> None:
    c.integer("train.frozen_epochs", 0)
    c.integer("train.unfrozen_epochs", 0)
    frozen, unfrozen = c.value("train.frozen_epochs"), c.value("train.unfrozen_epochs")
    if (
        _is_int(frozen)
        and _is_int(unfrozen)
        and frozen >= 0
        and unfrozen >= 0
        and frozen + unfrozen == 0
    ):
        c.problem(
            "train.unfrozen_epochs",
            unfrozen,
            "train.frozen_epochs + train.unfrozen_epochs must be at least 1",
        )
    c.integer("train.evals_per_epoch", 1)
    c.integer("train.log_every_steps", 1)
    c.integer("train.checkpoint_every_steps", 1, optional=True)
    c.integer("train.max_to_keep", 1)
    c.integer("train.num_image_examples", 0)
    c.integer("train.max_steps_per_run", 1, optional=True)
    c.integer("train.early_stopping_patience", 1, optional=True)
    c.boolean("train.update_frozen_bn_stats")
    c.boolean("train.distributed")
    best = c.value("train.best_metric")
    if best not in (None, _MISSING) and (not isinstance(best, str) or not best):
        c.problem("train.best_metric", best, "must be a validation metric name or None")


def _check_methods(c: _Checks) -> None:
    """The multi-task methods' options, by building them (their own errors name the option)."""
    if c.problems or c.value("loss.weighting") is _MISSING:
        return  # the options are only checked on an otherwise sound config
    from mtcolor.train import state as state_lib

    try:
        state_lib.mtl_methods(state_lib.objective_from_config(c.config))
    except (ValueError, TypeError) as error:
        weighting = c.value("loss.weighting_options")
        gradient = c.value("loss.gradient_options")
        c.problems.append(
            f"--config.loss.weighting_options={dict(weighting)!r} / "
            f"--config.loss.gradient_options={dict(gradient)!r}: {error}"
        )


def config_problems(
    config, *, device_count: int | None = None, data_source: bool = True
) -> list[str]:
    """Every problem of ``config``, one line each ([] when it is fine). ``device_count``: the
    devices the global batch is split over (None: not checked). ``data_source=False`` skips the
    data.source fields (a library user's own data pipeline reads its data)."""
    c = _Checks(config)
    _check_top(c)
    _check_data(c, device_count, data_source)
    _check_model(c)
    _check_loss(c)
    _check_optim(c)
    _check_train(c)
    _check_methods(c)
    return c.problems


def data_problems(config, *, flag_prefix: str = "--config.") -> list[str]:
    """The problems of ``config.data`` alone, each line naming the field as ``flag_prefix`` sets it
    (experiments.evaluate checks a run's data config, changed by its ``--override=``'s, before
    reading the data)."""
    c = _Checks(config, flag_prefix)
    _check_data(c, None, True)
    return c.problems


def check_config(config, *, device_count: int | None = None, data_source: bool = True) -> None:
    """Raises ConfigError listing every problem of ``config`` (arguments as config_problems)."""
    problems = config_problems(config, device_count=device_count, data_source=data_source)
    if problems:
        raise ConfigError(problems)


def class_count_problems(
    tasks, class_names, *, tasks_from_config: bool = True, unlabeled_data: str = ""
) -> list[str]:
    """Problems of classification heads too small for the data: labels index ``class_names``
    (the training data's classes, `mtcolor.data.sources.class_names`; None: the data has no
    labels), and a head with fewer outputs would train to a NaN loss on the first label it cannot
    predict; without labels a classification task is a problem too.
    ``tasks_from_config``: the tasks come from config.model.num_classes (named as the option);
    else they are a library user's and are named by task. ``unlabeled_data``: why the data has no
    labels, for the message (the option that made it so)."""
    from mtcolor.tasks.classification import Classification

    if not class_names:
        # No labels (a folder of images without class folders, tfds with label_key None): every
        # label would be 0, and a classifier would "learn" that in silence.
        why = unlabeled_data or (
            "data.folder.train_root without class folders, or data.tfds.label_key None"
        )
        return [
            f"task {task.name!r}: the training data has no class labels ({why}) and a "
            "classification task needs them: sort the images into class folders, give "
            "data.folder.train_split_file with a class column, or train the colorizer alone "
            "(experiments.colorization)"
            for task in tasks
            if isinstance(task, Classification)
        ]
    count = len(class_names)
    shown = ", ".join(class_names[:5]) + (", ..." if count > 5 else "")
    problems = []
    for task in tasks:
        if not isinstance(task, Classification) or task.num_classes >= count:
            continue
        where = (
            f"--config.model.num_classes={task.num_classes!r}"
            if tasks_from_config
            else f"task {task.name!r} (num_classes={task.num_classes})"
        )
        problems.append(
            f"{where}: the training data has {count} classes ({shown}; labels 0..{count - 1}) "
            f"but the class head predicts {task.num_classes}; set model.num_classes to {count}, "
            f"or pick {task.num_classes} classes with --config.data.classes"
        )
    return problems


def run_directory_problems(
    argument: str, path, *, step=None, step_argument: str = "checkpoint", checkpoints: bool = True
) -> list[str]:
    """Problems of a training run directory given as ``--<argument>`` (evaluate, report,
    colorize): it must exist and hold the run's config.json and checkpoints/ (and the checkpoint
    ``--<step_argument>``, an int step or "best", when one is asked for); ``checkpoints`` False:
    the run's logs alone are read (the report's table)."""
    path = os.fspath(path)
    problems = []
    if step not in (None, "best") and not str(step).isdigit():
        problems.append(
            f"--{step_argument}={step!r}: must be 'best', a step number, or left out (latest)"
        )
        step = None
    if not os.path.isdir(path):
        return [f"--{argument}={path!r}: no such run directory"] + problems
    needed = ("config.json", "checkpoints") if checkpoints else ("config.json",)
    missing = [name for name in needed if not os.path.exists(os.path.join(path, name))]
    if missing:
        return [
            f"--{argument}={path!r}: not a training run (no {' or '.join(missing)} in it)"
        ] + problems
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            json.load(f)  # the run's model is built from it
    except (OSError, ValueError) as error:
        problems.append(f"--{argument}={path!r}: its config.json does not parse ({error})")
    if step == "best":
        where = os.path.join(path, "checkpoints_best")
        if not (os.path.isdir(where) and os.listdir(where)):
            problems.append(
                f"--{step_argument}=best: {path!r} has no best checkpoint "
                "(checkpoints_best/ is empty)"
            )
    elif step is not None and not os.path.isdir(os.path.join(path, "checkpoints", str(step))):
        steps = sorted(int(s) for s in os.listdir(os.path.join(path, "checkpoints")) if s.isdigit())
        problems.append(
            f"--{step_argument}={step}: {path!r} has no checkpoint of step {step} (it has {steps})"
        )
    return problems
