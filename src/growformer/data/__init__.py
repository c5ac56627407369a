"""Data: tokenizer, encoded data sets, batching, file readers and named tasks."""

from growformer.data.datasets import (
    BatchStream,
    ClassificationData,
    LMData,
    collate,
    eval_batch_count,
    eval_batches,
)
from growformer.data.files import label_vocab, read_labeled, read_text
from growformer.data.sarscov2 import read_fasta_labels
from growformer.data.streaming import StreamBatches, StreamedData, train_batches
from growformer.data.tasks import (
    TASKS,
    TaskData,
    TaskRequest,
    TaskSpec,
    encode_classification,
    encode_lm,
    encode_spikes,
    load_task,
    register_task,
)
from growformer.data.tokenizer import Tokenizer

__all__ = [
    "TASKS",
    "BatchStream",
    "ClassificationData",
    "LMData",
    "StreamBatches",
    "StreamedData",
    "TaskData",
    "TaskRequest",
    "TaskSpec",
    "Tokenizer",
    "collate",
    "encode_classification",
    "encode_lm",
    "encode_spikes",
    "eval_batch_count",
    "eval_batches",
    "label_vocab",
    "load_task",
    "read_fasta_labels",
    "read_labeled",
    "read_text",
    "register_task",
    "train_batches",
]
