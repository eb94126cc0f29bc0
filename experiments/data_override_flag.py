"""``--override=data.KEY=VALUE``, the one flag experiments.evaluate and experiments.report share
(absl flags are global: defined once here, both commands can be imported in one process)."""

from absl import flags

DATA_OVERRIDES = flags.DEFINE_multi_string(
    "override",
    [],
    "data.KEY=VALUE: a field of the run's data config for this command, e.g. where the data is "
    "on this machine (--override=data.folder.train_root=/data/train "
    "--override=data.folder.val_root=/data/val); repeatable.",
)
