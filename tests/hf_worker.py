"""Run by ``test_hf.py``, alone or under torchrun: ``transformers.Trainer`` with a
:class:`GrowformerCallback` on a growformer SST-2 checkpoint, ``per_device`` examples per
process and step. Rank 0 writes the callback's events and the trained weights to OUT."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from helpers import encoded, sst2_sentences
from safetensors.torch import save_file
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)

import growformer  # noqa: F401  (registers the Auto classes)
from growformer.hf import GrowformerCallback


def main() -> None:
    ckpt, sst2, out, per_device, steps = sys.argv[1:6]
    model = AutoModelForSequenceClassification.from_pretrained(ckpt)
    tokenizer = AutoTokenizer.from_pretrained(ckpt)
    data = encoded(tokenizer, sst2_sentences(Path(sst2), "train", 480))
    callback = GrowformerCallback(
        "incrt", {"check_every": 2, "calibration_batches": 2, "refractory_steps": 4}
    )
    args = TrainingArguments(
        output_dir=out,
        max_steps=int(steps),
        per_device_train_batch_size=int(per_device),
        learning_rate=1e-3,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        save_strategy="no",
        logging_steps=1000,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data,
        data_collator=DataCollatorWithPadding(tokenizer),
        callbacks=[callback],
    )
    trainer.train()
    if args.process_index == 0:
        weights = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(weights, Path(out) / "weights.safetensors")
        heads = [layer.heads for layer in model.elastic.arch.layers]
        result = {"events": callback.events, "heads": heads, "world": args.world_size}
        (Path(out) / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
