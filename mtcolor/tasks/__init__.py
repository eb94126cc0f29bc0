"""Tasks as values: what each task of a multi-task model is (see mtcolor.tasks.task)."""

from mtcolor.tasks.classification import Classification
from mtcolor.tasks.colorization import Colorization
from mtcolor.tasks.paper import (
    EXPERIMENTS,
    classifier,
    colorizer,
    experiment_tasks,
    multitask_generator,
    tasks_from_config,
)
from mtcolor.tasks.task import (
    ADVERSARY_METRICS,
    Adversary,
    Task,
    adversarial_task,
    check_tasks,
    checkpoint_task,
    masked_mean,
)

__all__ = [
    "ADVERSARY_METRICS",
    "Adversary",
    "Classification",
    "Colorization",
    "EXPERIMENTS",
    "Task",
    "adversarial_task",
    "check_tasks",
    "checkpoint_task",
    "classifier",
    "colorizer",
    "experiment_tasks",
    "masked_mean",
    "multitask_generator",
    "tasks_from_config",
]
