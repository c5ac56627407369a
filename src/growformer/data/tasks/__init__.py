"""Named tasks: a registry of loaders, each turning data into encoded, split `TaskData`.

Built in: "sst2" (`sst2`), "retrieval" and "channels" (`synthetic`), "lm" (`lm`), "file"
(`file`), "sarscov2" (`sarscov2`) and "fasta" (`proteins`). `spec` defines what a task is,
`common` holds the helpers tasks share (option checks, text encoding) and `registry` maps
names to tasks.

A task is a `TaskSpec`: a loader that takes a `TaskRequest` and returns `TaskData`, the
options it accepts with their defaults, and which of `data_dir`, `data_file` and
`labels_file` it reads. Register one from your own code, then train on it by name::

    from growformer import TrainConfig, train
    from growformer.data import TaskData, TaskSpec, register_task

    def load_toy(request):  # a TaskRequest: .options, .seed, .max_len, .vocab_size, ...
        ...  # build a Tokenizer and the ClassificationData of both splits
        return TaskData("toy", "classification", train_split, val_split, tokenizer,
                        num_labels=2, label_names=["no", "yes"], max_len=16)

    register_task("toy", TaskSpec(load=load_toy, options={"n_train": 1000}))
    train(TrainConfig(task="toy", task_options={"n_train": 500}), "runs/toy")

Options may arrive as strings from a command line: `common`'s `int_option`,
`fraction_option`, `bool_option` and `path_option` check them as the built-in tasks do. A
task whose new data for `growformer evaluate --data` is not a labelled text table (plain text
for a language model) says how to read it with an `EvalFormat`.

A built-in task is one module declaring its `TaskSpec` plus one line in `registry.TASKS`.
"""

from growformer.data.tasks.common import encode_classification, encode_lm
from growformer.data.tasks.proteins import encode_spikes
from growformer.data.tasks.registry import TASKS, load_task, register_task
from growformer.data.tasks.spec import EvalFormat, TaskData, TaskRequest, TaskSpec

__all__ = [
    "TASKS",
    "EvalFormat",
    "TaskData",
    "TaskRequest",
    "TaskSpec",
    "encode_classification",
    "encode_lm",
    "encode_spikes",
    "load_task",
    "register_task",
]
