"""A new multi-task experiment built from task values, without copying the training loop.

The paper's multi-task generator flattens the 512 x h x w bottleneck into a 1000-unit head; this
variant average-pools it into a smaller 256-unit head and weights the classification loss 3
instead of 10. Everything else (cGAN training, freezing, checkpoints, logging, resume) is
``mtcolor.train.loop.train_and_evaluate``.

    python -m experiments.examples.extra_head --config=experiments/configs/demo.py --workdir=/tmp/x
"""

from __future__ import annotations

from mtcolor import tasks
from mtcolor.train import loop


def pooled_head_tasks(config) -> tuple[tasks.Task, ...]:
    """The paper's colorization task and an average-pooled, smaller classification head."""
    colorization = tasks.experiment_tasks(
        "colorization",
        l1_weight=config.loss.l1_weight,
        gan_mode=config.loss.gan_mode,
        gan_weight=config.loss.gan_weight,
        decoder=config.model.get("decoder", "plain"),
    )[0]
    classification = tasks.Classification(
        num_classes=config.model.num_classes, pooling="avg", hidden=256, weight=3.0
    )
    return (colorization, classification)


def train(config, workdir: str) -> dict:
    config.experiment = "multitask"  # the label summaries and reports show
    return loop.train_and_evaluate(config, workdir, tasks=pooled_head_tasks(config))


if __name__ == "__main__":
    from mtcolor.train import cli

    # The paper's entry points' command line: --config, --workdir, every --config.<option> checked
    # before any work, one-line errors.
    cli.run("multitask", tasks_from_config=pooled_head_tasks)
