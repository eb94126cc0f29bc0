"""Evaluating a trained run on a split: every metric next to the grayscale (ab = 0) baseline.

`evaluate_model` is the library function (any model returning {task name: output}, its task
list, any iterator of {"L", "ab", "label", "mask"} batches); `evaluate_workdir` loads a run's
checkpoint and its own data config and writes `<workdir>/eval_<split>.json` and `.md`.

Every task gets its own per-example terms (``Task.per_example``, as validation computes them)
averaged over the examples that have it, under ``result["tasks"][name]``. The paper's two tasks
get the paper's metrics on top: a colorization task PSNR, SSIM, colorfulness and the Frechet
distances; a classification task the confusion matrix and per-class accuracy.

Rows of the result:
- "model": the run's predictions.
- "grayscale_baseline": ab = 0 everywhere (the input shown as a gray image). For the classification
  metrics, where "grayscale" has no meaning, the baseline is the majority class of the split.
- "ground_truth": the real images (colorfulness; a Frechet distance of 0 by definition).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from mtcolor.eval import frechet, metrics

FRECHET_SKIPPED: list[str] = []  # why the last default_feature_extractor() returned None


def _first(tasks, kind):
    return next((task for task in tasks if isinstance(task, kind)), None)


def make_colorization_metrics_fn():
    """Jitted per-image metrics of a prediction and of the ab = 0 baseline, plus the RGB images."""
    from mtcolor.data.color import lab_norm_to_rgb_jax

    @jax.jit
    def compute(L, ab_pred, ab_true):
        rgb_true = lab_norm_to_rgb_jax(L, ab_true)
        rgb_pred = lab_norm_to_rgb_jax(L, ab_pred)
        rgb_gray = lab_norm_to_rgb_jax(L, jnp.zeros_like(ab_true))
        values = {
            "model/l1_x100": metrics.l1_x100(ab_pred, ab_true),
            "model/psnr": metrics.psnr(rgb_pred, rgb_true),
            "model/ssim": metrics.ssim(rgb_pred, rgb_true),
            "model/colorfulness": metrics.colorfulness(rgb_pred),
            "grayscale_baseline/l1_x100": metrics.l1_x100(jnp.zeros_like(ab_true), ab_true),
            "grayscale_baseline/psnr": metrics.psnr(rgb_gray, rgb_true),
            "grayscale_baseline/ssim": metrics.ssim(rgb_gray, rgb_true),
            "grayscale_baseline/colorfulness": metrics.colorfulness(rgb_gray),
            "ground_truth/colorfulness": metrics.colorfulness(rgb_true),
        }
        return values, {"model": rgb_pred, "grayscale_baseline": rgb_gray, "ground_truth": rgb_true}

    return compute


def evaluate_model(
    model,
    variables,
    tasks,
    batches: Iterable[dict],
    *,
    experiment: str = "custom",
    num_classes: int | None = None,
    class_names: list[str] | None = None,
    feature_extractor: frechet.FeatureExtractor | Sequence[frechet.FeatureExtractor] | None = None,
) -> dict:
    """All metrics of `model` over `batches` (a single pass); pads (mask 0) are ignored.

    `tasks`: the model's task list (mtcolor.tasks); `experiment`: a label for the result.
    `feature_extractor`: one or several; each gives a Frechet distance under its own metric name.
    """
    from mtcolor import tasks as tasks_lib

    tasks = tasks_lib.check_tasks(tasks)
    colorizing = _first(tasks, tasks_lib.Colorization)
    classifying = _first(tasks, tasks_lib.Classification)
    if feature_extractor is None:
        extractors: tuple[frechet.FeatureExtractor, ...] = ()
    elif isinstance(feature_extractor, frechet.FeatureExtractor):
        extractors = (feature_extractor,)
    else:
        extractors = tuple(feature_extractor)
    if len({e.metric_name for e in extractors}) != len(extractors):
        raise ValueError("two feature extractors share a metric name")
    predict = jax.jit(lambda v, L: model.apply(v, L, train=False))
    task_terms = jax.jit(
        lambda outputs, batch: {
            task.name: (
                task.per_example(outputs[task.name], batch, train=False),
                task.example_mask(batch),
            )
            for task in tasks
        }
    )
    colorization_metrics = make_colorization_metrics_fn() if colorizing is not None else None
    means = metrics.MeanAccumulator()
    task_means = {task.name: metrics.MeanAccumulator() for task in tasks}
    labels, predictions = [], []
    rows = ("model", "grayscale_baseline", "ground_truth")
    features: dict[str, dict[str, list[np.ndarray]]] = {
        e.metric_name: {row: [] for row in rows} for e in extractors
    }
    num_examples = 0
    for batch in batches:
        L = jnp.asarray(batch["L"])
        mask = np.asarray(batch.get("mask", np.ones(L.shape[0], np.float32))) > 0
        num_examples += int(mask.sum())
        outputs = predict(variables, L)
        arrays = {
            k: jnp.asarray(v)
            for k, v in batch.items()
            if k != "mask" and np.asarray(v).dtype.kind in "biuf"
        }
        task_masks = {}
        for name, (terms, task_mask) in jax.device_get(task_terms(outputs, arrays)).items():
            task_masks[name] = mask & (np.asarray(task_mask) > 0)
            task_means[name].update(terms, task_masks[name])
        ab_pred = outputs[colorizing.name] if colorizing is not None else None
        if classifying is not None:
            labelled = task_masks[classifying.name]  # real rows that have a label
            labels.append(np.asarray(batch["label"])[labelled])
            predictions.append(np.asarray(outputs[classifying.name]).argmax(-1)[labelled])
        if colorization_metrics is not None:
            values, images = colorization_metrics(L, ab_pred, jnp.asarray(batch["ab"]))
            means.update(jax.device_get(values), mask)
            for extractor in extractors:
                for name, rgb in images.items():
                    features[extractor.metric_name][name].append(
                        np.asarray(extractor.features(rgb))[mask]
                    )

    result: dict = {
        "experiment": experiment,
        "num_examples": num_examples,
        "tasks": {name: acc.result() for name, acc in task_means.items()},
        "model": {},
        "grayscale_baseline": {},
        "ground_truth": {},
    }
    for key, value in means.result().items():
        row, name = key.split("/")
        result[row][name] = value
    if means.nonfinite_counts():
        result["nonfinite_excluded"] = means.nonfinite_counts()
    if labels:
        labels_all, predictions_all = np.concatenate(labels), np.concatenate(predictions)
        num_classes = num_classes or int(max(labels_all.max(), predictions_all.max()) + 1)
        counts = metrics.confusion_matrix(labels_all, predictions_all, num_classes)
        # One name per row of the confusion matrix: a head may predict more classes than the
        # data names (model.num_classes above the data's), those rows go by number.
        known = list(class_names or [])[:num_classes]
        names = known + [str(i) for i in range(len(known), num_classes)]
        result["model"]["accuracy"] = metrics.accuracy_from_confusion(counts)
        result["model"]["per_class_accuracy"] = dict(
            zip(names, metrics.per_class_accuracy(counts).tolist())
        )
        result["model"]["confusion_matrix"] = counts.tolist()
        majority = int(np.bincount(labels_all, minlength=num_classes).argmax())
        baseline_counts = metrics.confusion_matrix(
            labels_all, np.full_like(labels_all, majority), num_classes
        )
        result["grayscale_baseline"]["accuracy"] = metrics.accuracy_from_confusion(baseline_counts)
        result["grayscale_baseline"]["accuracy_note"] = f"majority class ({names[majority]})"
        result["class_names"] = names
    for extractor in extractors:
        metric = extractor.metric_name
        if not features[metric]["model"]:
            continue
        sets = {name: np.concatenate(f) for name, f in features[metric].items()}
        result["model"][metric] = frechet.frechet_distance_of_features(
            sets["model"], sets["ground_truth"]
        )
        result["grayscale_baseline"][metric] = frechet.frechet_distance_of_features(
            sets["grayscale_baseline"], sets["ground_truth"]
        )
        result["ground_truth"][metric] = 0.0
        result.setdefault("frechet", []).append(
            {"metric": metric, "description": extractor.description, "num_images": num_examples}
        )
    return result


def feature_extractors(config, fid_weights: str | None = None) -> list[frechet.FeatureExtractor]:
    """The ResNet-18 Frechet extractor (when its weights are available) and, when `fid_weights`
    is given (a path, or "download"), the FID Inception-v3 next to it, each under its own name.

    Missing FID weights raise (the user asked for them, with instructions in the error); missing
    ResNet-18 weights only skip that distance (reason in FRECHET_SKIPPED).
    """
    extractors = []
    if fid_weights:
        from mtcolor.eval.inception import fid_feature_extractor, load_fid_inception

        extractors.append(fid_feature_extractor(load_fid_inception(fid_weights)))
    resnet = default_feature_extractor(config)
    if resnet is not None:
        extractors.insert(0, resnet)
    return extractors


def default_feature_extractor(
    config, fid_weights: str | None = None
) -> frechet.FeatureExtractor | None:
    """FID when Inception weights are given, else the Frechet distance on ImageNet ResNet-18
    features.

    The ResNet-18 weights are the ones the run was initialised from (config.model.pretrained, or the
    torchvision file when the run started from scratch); None if they cannot be found.
    """
    if fid_weights:
        from mtcolor.eval.inception import fid_feature_extractor, load_fid_inception

        return fid_feature_extractor(load_fid_inception(fid_weights))
    from mtcolor.weights import load_resnet18

    pretrained = None
    try:
        pretrained = config.model.get("pretrained", None)
    except AttributeError:
        pass
    try:
        variables = load_resnet18(pretrained or "torchvision", in_channels=3)
    except Exception as error:  # noqa: BLE001 - no weights offline: evaluate everything else
        FRECHET_SKIPPED.append(
            f"frechet_resnet18_distance skipped: ImageNet ResNet-18 weights unavailable ({error})"
        )
        print(FRECHET_SKIPPED[-1])
        return None
    return frechet.resnet18_feature_extractor(variables)


def class_names_of(config) -> list[str] | None:
    """The names of the classes the labels index: the data's own (mtcolor.data.sources), else
    config.data.classes as given; None when neither is known (labels are then shown as numbers)."""
    from mtcolor.data import sources

    try:
        names = sources.class_names(config.data)
    except Exception:  # noqa: BLE001 - the names only label the report; the data may be elsewhere
        names = None
    if names:
        return [str(c) for c in names]
    try:
        classes = list(config.data.classes or [])
    except AttributeError:
        classes = []
    return [str(c) for c in classes] or None


def evaluate_workdir(
    workdir,
    split: str = "val",
    *,
    step=None,
    fid_weights: str | None = None,
    frechet_features: bool = True,
    batches=None,
    tasks=None,
    data_overrides: dict | None = None,
) -> dict:
    """Evaluates a run's checkpoint (latest, "best" or a step) on `split` of its own data config.
    `tasks`: the run's task list when it was trained with custom tasks. `data_overrides`: {field
    of config.data: value} replaced before the data is read (e.g. where the data is on this
    machine; mtcolor.data.config.parse_data_overrides)."""
    from mtcolor import tasks as tasks_lib
    from mtcolor.train.checkpointing import load_for_inference

    workdir = Path(workdir)
    config, model, variables = load_for_inference(str(workdir), step=step, tasks=tasks)
    if data_overrides:
        config.data.update_from_flattened_dict(dict(data_overrides))
    experiment = config.experiment
    tasks = model.tasks if tasks is None else tuple(tasks)
    made_here = batches is None
    if made_here:
        from mtcolor.data.pipeline import make_eval_iterator

        batches = make_eval_iterator(config.data, split=split)
    extractors = []
    skipped_reason = None
    if frechet_features and _first(tasks, tasks_lib.Colorization) is not None:
        FRECHET_SKIPPED.clear()
        extractors = feature_extractors(config, fid_weights)
        skipped_reason = FRECHET_SKIPPED[-1] if FRECHET_SKIPPED else None
    names = class_names_of(config)
    num_classes = config.model.get("num_classes", None) if hasattr(config, "model") else None
    start = time.time()
    try:
        result = evaluate_model(
            model,
            variables,
            tasks,
            batches,
            experiment=experiment,
            num_classes=num_classes or (len(names) if names else None),
            class_names=names,
            feature_extractor=extractors,
        )
    finally:
        if made_here:  # grain's worker processes and shared memory, freed now, not at exit
            from mtcolor.data import input_paths

            input_paths.close_iterator(batches)
            input_paths.free_finished_passes()
    result.update(
        {
            "workdir": str(workdir),
            "split": split,
            "checkpoint": "latest" if step is None else step,
            "eval_time_s": time.time() - start,
        }
    )
    if data_overrides:
        result["data_overrides"] = {f"data.{key}": value for key, value in data_overrides.items()}
    if skipped_reason:
        result["frechet_skipped"] = skipped_reason
    (workdir / f"eval_{split}.json").write_text(json.dumps(result, indent=2))
    (workdir / f"eval_{split}.md").write_text(results_markdown(result))
    return result


METRIC_COLUMNS = (
    ("accuracy", "accuracy (%)", 100.0),
    ("l1_x100", "L1 x100", 1.0),
    ("psnr", "PSNR (dB)", 1.0),
    ("ssim", "SSIM", 1.0),
    ("colorfulness", "colorfulness", 1.0),
    ("fid", "FID", 1.0),
    ("frechet_resnet18_distance", "Frechet ResNet-18 dist.", 1.0),
)


# Above this many classes the markdown (which experiments.evaluate also prints) shows the lowest
# and highest per-class accuracies and leaves the confusion matrix to the JSON: with 1000 classes
# the whole of both is a million cells, 11 MB on the console.
MARKDOWN_MAX_CLASSES = 20
MARKDOWN_CLASSES_SHOWN = 10  # lowest and highest each, with many classes


def _many_classes_markdown(per_class: dict) -> list[str]:
    measured = sorted(
        ((name, value) for name, value in per_class.items() if value == value),
        key=lambda item: item[1],
    )
    without = len(per_class) - len(measured)
    mean = sum(v for _, v in measured) / len(measured) if measured else float("nan")
    shown = MARKDOWN_CLASSES_SHOWN
    rows = measured if len(measured) <= 2 * shown else measured[:shown] + measured[-shown:]
    lines = [
        "",
        "## Per-class accuracy",
        "",
        f"{len(per_class)} classes, {without} without examples in this split; mean over the "
        f"others {100 * mean:.1f}%. The {min(shown, len(measured))} lowest and highest (every "
        "class, and the confusion matrix, are in the JSON: `model.per_class_accuracy`, "
        "`model.confusion_matrix`):",
        "",
        "| class | accuracy (%) |",
        "|---|---:|",
    ]
    for index, (name, value) in enumerate(rows):
        if rows is not measured and index == shown:
            lines.append(f"| ... ({len(measured) - 2 * shown} more) | |")
        lines.append(f"| {name} | {100 * value:.1f} |")
    return lines


def results_markdown(result: dict) -> str:
    present = [
        c
        for c in METRIC_COLUMNS
        if any(
            c[0] in result.get(row, {}) for row in ("model", "grayscale_baseline", "ground_truth")
        )
    ]
    lines = [
        f"# Evaluation: {result.get('workdir', '')} ({result.get('split', '')}, "
        f"{result['num_examples']} images, experiment {result['experiment']})",
        "",
        "| row | " + " | ".join(c[1] for c in present) + " |",
        "|---|" + "---:|" * len(present),
    ]
    for row, label in (
        ("model", "model"),
        ("grayscale_baseline", "grayscale baseline (ab = 0)"),
        ("ground_truth", "ground truth"),
    ):
        cells = []
        for key, _, scale in present:
            value = result.get(row, {}).get(key)
            cells.append("" if value is None else f"{scale * value:.3f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    model = result.get("model", {})
    if len(model.get("per_class_accuracy", {})) > MARKDOWN_MAX_CLASSES:
        lines += _many_classes_markdown(model["per_class_accuracy"])
    elif "per_class_accuracy" in model:
        lines += ["", "## Per-class accuracy", "", "| class | accuracy (%) |", "|---|---:|"]
        lines += [
            f"| {name} | "
            + ("n/a (no examples)" if value != value else f"{100 * value:.1f}")
            + " |"
            for name, value in model["per_class_accuracy"].items()
        ]
        names = list(model["per_class_accuracy"])
        lines += [
            "",
            "## Confusion matrix (rows: true class, columns: predicted)",
            "",
            "| | " + " | ".join(names) + " |",
            "|---|" + "---:|" * len(names),
        ]
        lines += [
            f"| {name} | " + " | ".join(str(c) for c in row) + " |"
            for name, row in zip(names, model["confusion_matrix"])
        ]
    if "accuracy_note" in result.get("grayscale_baseline", {}):
        lines += ["", f"Baseline accuracy: {result['grayscale_baseline']['accuracy_note']}."]
    if "frechet_skipped" in result:
        lines += ["", result["frechet_skipped"]]
    for entry in result.get("frechet", []):
        lines += [
            "",
            f"{entry['metric']}: {entry['description']}, "
            f"{entry['num_images']} images (noisy and biased upwards at this size).",
        ]
    return "\n".join(lines) + "\n"
