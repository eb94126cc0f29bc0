"""evaluate_model on a hand-built model whose outputs are known, against skimage/numpy
references."""

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest
from skimage.color import lab2rgb
from skimage.metrics import peak_signal_noise_ratio

from mtcolor import tasks
from mtcolor.eval import evaluate, frechet


class ConstantModel(nn.Module):
    """ab = 0.1 everywhere; class = 1 if the image's mean L > 0 else 0 (no parameters)."""

    @nn.compact
    def __call__(self, L, train=False):
        ab = jnp.full(L.shape[:-1] + (2,), 0.1, jnp.float32)
        bright = (L.mean(axis=(1, 2, 3)) > 0).astype(jnp.int32)
        return {"colorization": ab, "classification": jnp.eye(3)[bright] * 5.0}


def _batches():
    rng = np.random.default_rng(0)
    L = rng.uniform(-0.6, 0.6, (6, 32, 32, 1)).astype(np.float32)
    L[:3] -= 0.3  # dark images -> predicted class 0
    L[3:] += 0.3  # bright images -> predicted class 1
    ab = rng.uniform(-0.2, 0.2, (6, 32, 32, 2)).astype(np.float32)
    labels = np.array([0, 0, 1, 1, 1, 2], np.int32)
    # Second batch: 2 real examples + 2 pads filled with garbage that must be ignored.
    pad_L = np.full((2, 32, 32, 1), 0.9, np.float32)
    pad_ab = np.full((2, 32, 32, 2), 0.9, np.float32)
    batches = [
        {"L": L[:4], "ab": ab[:4], "label": labels[:4], "mask": np.ones(4, np.float32)},
        {
            "L": np.concatenate([L[4:], pad_L]),
            "ab": np.concatenate([ab[4:], pad_ab]),
            "label": np.concatenate([labels[4:], [2, 2]]),
            "mask": np.array([1, 1, 0, 0], np.float32),
        },
    ]
    return batches, L, ab, labels


def _skimage_rgb(L, ab):
    lab = np.concatenate([(L.astype(np.float64) + 1) * 50, ab.astype(np.float64) * 110], -1)
    return np.clip(lab2rgb(lab), 0, 1)


def test_evaluate_model_metrics_and_baseline():
    batches, L, ab, labels = _batches()
    extractor = frechet.FeatureExtractor(
        "frechet_test_distance", lambda rgb: rgb.mean(axis=(1, 2)), "mean RGB (test)"
    )
    result = evaluate.evaluate_model(
        ConstantModel(),
        {},
        tasks.experiment_tasks("multitask"),
        batches,
        experiment="multitask",
        num_classes=3,
        class_names=["a", "b", "c"],
        feature_extractor=extractor,
    )
    assert result["num_examples"] == 6
    model, base = result["model"], result["grayscale_baseline"]
    assert model["l1_x100"] == pytest.approx(100 * np.abs(0.1 - ab).mean(), rel=1e-5)
    assert base["l1_x100"] == pytest.approx(100 * np.abs(ab).mean(), rel=1e-5)
    # PSNR against skimage's Lab -> RGB and skimage's PSNR (independent conversion: 1e-3 dB).
    reference_base = np.mean(
        [
            peak_signal_noise_ratio(_skimage_rgb(l, a), _skimage_rgb(l, 0 * a), data_range=1)
            for l, a in zip(L, ab)
        ]
    )
    reference_model = np.mean(
        [
            peak_signal_noise_ratio(_skimage_rgb(l, a), _skimage_rgb(l, 0 * a + 0.1), data_range=1)
            for l, a in zip(L, ab)
        ]
    )
    assert base["psnr"] == pytest.approx(reference_base, abs=2e-2)
    assert model["psnr"] == pytest.approx(reference_model, abs=2e-2)
    assert 0 < base["ssim"] <= 1 and base["colorfulness"] < 1.0  # gray images are not colourful
    assert model["colorfulness"] > 1.0
    # Predictions: [0, 0, 0, 1, 1, 1] vs labels [0, 0, 1, 1, 1, 2].
    assert model["accuracy"] == pytest.approx(4 / 6)
    assert model["confusion_matrix"] == [[2, 0, 0], [1, 2, 0], [0, 1, 0]]
    assert model["per_class_accuracy"]["a"] == 1.0 and model["per_class_accuracy"]["c"] == 0.0
    assert base["accuracy"] == pytest.approx(3 / 6)  # majority class "b"
    assert result["ground_truth"]["frechet_test_distance"] == 0.0
    assert model["frechet_test_distance"] > 0 and base["frechet_test_distance"] > 0
    markdown = evaluate.results_markdown(result)
    assert "grayscale baseline (ab = 0)" in markdown and "Confusion matrix" in markdown
    # Each task's own terms (as validation computes them), over the real rows only.
    color, cls = result["tasks"]["colorization"], result["tasks"]["classification"]
    assert color["l1"] == pytest.approx(np.abs(0.1 - ab).mean(), rel=1e-5)
    logits = np.eye(3)[(L.mean(axis=(1, 2, 3)) > 0).astype(int)] * 5.0
    log_probs = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    assert cls["loss_cls"] == pytest.approx(-log_probs[np.arange(6), labels].mean(), rel=1e-5)
    assert cls["accuracy"] == pytest.approx(4 / 6)


def test_evaluate_model_classifier_only():
    batches, _, _, _ = _batches()

    class Logits(nn.Module):
        @nn.compact
        def __call__(self, L, train=False):
            return {"classification": ConstantModel()(L)["classification"]}

    result = evaluate.evaluate_model(
        Logits(), {}, tasks.experiment_tasks("classification"), batches, num_classes=3
    )
    assert result["model"]["accuracy"] == pytest.approx(4 / 6)
    assert "l1_x100" not in result["model"] and list(result["tasks"]) == ["classification"]
    # Rows without a label (has_label 0) count for no classification metric: drop example 2
    # (label 1, predicted 0) and example 4 (label 1, predicted 1).
    batches[0]["has_label"] = np.array([1, 1, 0, 1], np.float32)
    batches[1]["has_label"] = np.array([0, 1, 1, 1], np.float32)
    result = evaluate.evaluate_model(
        Logits(), {}, tasks.experiment_tasks("classification"), batches, num_classes=3
    )
    assert result["model"]["accuracy"] == pytest.approx(3 / 4)
    assert result["tasks"]["classification"]["accuracy"] == pytest.approx(3 / 4)


def test_class_names_are_the_datas_and_a_wider_head_names_its_extra_rows(tmp_path):
    # The report names the classes the labels index: the synthetic set's shapes (not the paper's
    # ImageNet classes, which it was given before), a folder tree's folders; a head predicting
    # more classes than the data names gets numbers for the rest.
    from test_data_files import write_tree

    from experiments.configs import tiny

    config = tiny.get_config()
    assert evaluate.class_names_of(config) == ["disc", "stripes", "checker", "ring", "squares"]
    write_tree(tmp_path / "train", {"owl": 1, "cat": 1})
    config.data.source = "folder"
    config.data.folder.train_root = config.data.folder.val_root = str(tmp_path / "train")
    assert evaluate.class_names_of(config) == ["cat", "owl"]
    config.data.folder.train_root = str(tmp_path / "missing")  # data elsewhere: the config's
    config.data.classes = ["owl", "cat"]
    assert evaluate.class_names_of(config) == ["owl", "cat"]
    # ConstantModel predicts class 0 for dark images, 1 for bright ones.
    L = np.concatenate([np.full((2, 32, 32, 1), -0.5), np.full((2, 32, 32, 1), 0.5)])
    batch = {
        "L": L.astype(np.float32),
        "ab": np.zeros((4, 32, 32, 2), np.float32),
        "label": np.array([0, 1, 1, 2], np.int32),
        "mask": np.ones(4, np.float32),
    }
    result = evaluate.evaluate_model(
        ConstantModel(),
        {},
        (tasks.Classification(num_classes=3),),
        [batch],
        experiment="classification",
        num_classes=3,
        class_names=["cat", "owl"],
    )
    assert result["class_names"] == ["cat", "owl", "2"]
    assert result["model"]["per_class_accuracy"] == {"cat": 1.0, "owl": 0.5, "2": 0.0}


def test_markdown_of_many_classes_shows_the_extremes_not_a_million_cells():
    # 30 classes: class c has accuracy c / 100, class 29 has no examples (NaN). The markdown
    # lists the 10 lowest (c = 0..9) and 10 highest (c = 19..28), no confusion matrix.
    per_class = {f"c{c:02d}": c / 100 for c in range(29)} | {"c29": float("nan")}
    result = {
        "experiment": "classification",
        "num_examples": 300,
        "model": {
            "accuracy": 0.5,
            "per_class_accuracy": per_class,
            "confusion_matrix": [[0] * 30 for _ in range(30)],
        },
    }
    markdown = evaluate.results_markdown(result)
    rows = [line.split("|")[1].strip() for line in markdown.splitlines() if line.startswith("| c")]
    rows = [row for row in rows if row != "class"]
    assert rows == [f"c{c:02d}" for c in (*range(10), *range(19, 29))]
    assert "| ... (9 more) | |" in markdown
    assert "30 classes, 1 without examples in this split; mean over the others 14.0%" in markdown
    assert "Confusion matrix" not in markdown and "`model.confusion_matrix`" in markdown
    # At the paper's five classes both tables stay whole.
    five = {
        "experiment": "classification",
        "num_examples": 5,
        "model": {
            "per_class_accuracy": {f"c{c}": 1.0 for c in range(5)},
            "confusion_matrix": np.eye(5, dtype=int).tolist(),
        },
    }
    assert "## Confusion matrix" in evaluate.results_markdown(five)
