"""Hugging Face transformers: growformer checkpoints as transformers models and tokenizers,
in ``Trainer`` and ``pipeline``, and structure policies inside ``transformers.Trainer``."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers", minversion="5")

import torch
from helpers import (
    KINDS,
    MAX_LEN,
    VARIANTS,
    arch,
    batch,
    encoded,
    save_checkpoint,
    sst2_config,
    sst2_sentences,
)
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    DynamicCache,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    pipeline,
)

import growformer
from growformer import checkpoint, surgery
from growformer.data import Tokenizer
from growformer.data.tokenizer import SPECIAL_TOKENS
from growformer.errors import ConfigError
from growformer.hf import (
    CACHE_FIELD,
    GrowformerCache,
    GrowformerCallback,
    GrowformerConfig,
    GrowformerForCausalLM,
    GrowformerForSequenceClassification,
)
from growformer.model import build_model
from growformer.structure import param_count
from growformer.training.config import TrainConfig
from growformer.training.loop import Trainer as GrowformerTrainer
from growformer.training.loop import train

AUTO = {"classifier": AutoModelForSequenceClassification, "causal_lm": AutoModelForCausalLM}
CLASSES = {"classifier": GrowformerForSequenceClassification, "causal_lm": GrowformerForCausalLM}
LABELS = ["negative", "neutral", "positive"]
# Text the tokenizers must encode alike besides the SST-2 sentences: special-token strings
# (ordinary text to growformer), text longer than the model, odd characters, nothing.
EDGE_TEXTS = [
    "a [CLS] literal [PAD] and [EOS] [UNK] tokens",
    "  leading and trailing spaces  ",
    "a long review " * 80,
    "émigré naïve 日本語 🙂",
    "",
]


def _save(directory: Path, model: torch.nn.Module) -> Path:
    return save_checkpoint(directory, model, LABELS)


def _loaded(auto: type, directory: Path) -> torch.nn.Module:
    model, info = auto.from_pretrained(directory, output_loading_info=True)
    assert info == {
        "missing_keys": set(),
        "unexpected_keys": set(),
        "mismatched_keys": set(),
        "error_msgs": [],
    }
    return model


def _logits(model: torch.nn.Module, b: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=b["input_ids"], attention_mask=b.get("attention_mask")).logits


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_checkpoint_is_a_transformers_model(tmp_path, kind, variant):
    torch.manual_seed(0)
    model = build_model(arch(kind, variant)).eval()
    surgery.advance(model, 3)  # a fade (variant "fading") part-way: its level is a buffer
    hf = _loaded(AUTO[kind], _save(tmp_path / "run", model))
    assert type(hf) is CLASSES[kind] and not hf.training
    assert hf.elastic.arch == model.arch
    b = batch(kind)
    expected = _logits(model, b)
    assert (_logits(hf, b) - expected).abs().max() <= 1e-6
    hf.save_pretrained(tmp_path / "hf")
    again = _loaded(AUTO[kind], tmp_path / "hf")
    assert [layer.heads for layer in again.elastic.arch.layers] == [
        layer.heads for layer in model.arch.layers
    ]
    assert again.elastic.arch == model.arch
    assert (_logits(again, b) - expected).abs().max() <= 1e-6
    # The keys are growformer's own: the transformers weights load into a growformer model.
    plain = build_model(model.arch).eval()
    checkpoint.load_weights(plain, tmp_path / "hf" / "model.safetensors")
    assert torch.equal(_logits(plain, b), expected)


def test_losses_follow_transformers_conventions(tmp_path):
    torch.manual_seed(0)
    classifier = build_model(arch("classifier", "nonuniform")).eval()
    hf = _loaded(AutoModelForSequenceClassification, _save(tmp_path / "c", classifier))
    assert hf.config.id2label == dict(enumerate(LABELS))
    assert hf.config.label2id == {name: i for i, name in enumerate(LABELS)}
    b = batch("classifier")
    with torch.no_grad():
        assert torch.equal(hf(**b).loss, classifier(**b).loss)
    lm = build_model(arch("causal_lm", "looped")).eval()
    hf = _loaded(AutoModelForCausalLM, _save(tmp_path / "lm", lm))
    ids = batch("causal_lm")["input_ids"]
    # transformers' labels are the inputs; growformer's, the next tokens.
    targets = torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], -100)], 1)
    with torch.no_grad():
        assert torch.equal(hf(input_ids=ids, labels=ids).loss, lm(ids, labels=targets).loss)


@pytest.mark.parametrize("variant", VARIANTS)
def test_transformers_generate_decodes_like_growformer(variant, tmp_path):
    """transformers' greedy ``generate`` and text-generation pipeline, with growformer's
    cache or without any, give growformer's cached decoding."""
    torch.manual_seed(0)
    lm = build_model(arch("causal_lm", variant)).eval()
    ckpt = _save(tmp_path, lm)
    hf = AutoModelForCausalLM.from_pretrained(ckpt)
    prompts = batch("causal_lm", b=3, t=5)["input_ids"]
    new = MAX_LEN - prompts.shape[1]
    expected = lm.generate(prompts, new)
    # Growformer's generate does not stop at [EOS]: neither does this one.
    hf.generation_config.eos_token_id = None
    mask = torch.ones_like(prompts)
    for use_cache in (True, False):
        got = hf.generate(prompts, attention_mask=mask, max_new_tokens=new, use_cache=use_cache)
        assert torch.equal(got, expected), use_cache
    generator = pipeline("text-generation", model=str(ckpt), tokenizer=str(ckpt))
    texts = [
        " ".join(f"w{int(i) - 4}" for i in row[:n])
        for row, n in zip(prompts[:2], (5, 2), strict=True)
    ]
    # Batched: the shorter prompt is left-padded and still continues as if alone.
    padded = AutoTokenizer.from_pretrained(ckpt)(texts, padding=True)["attention_mask"]
    assert padded == [[1] * 5, [0] * 3 + [1] * 2]
    outs = generator(texts, batch_size=2, max_new_tokens=4, do_sample=False, return_tensors=True)
    eos = SPECIAL_TOKENS.index("[EOS]")
    for row, n, out in zip(prompts[:2], (5, 2), outs, strict=True):
        ids = out[0]["generated_token_ids"]
        assert ids[: 5 - n] == [0] * (5 - n)  # [PAD], id 0
        expected = lm.generate(row[None, :n], 4)[0].tolist()
        if eos in expected[n:]:
            # The pipeline stops at [EOS] (the checkpoint's generation config) and pads.
            end = expected.index(eos, n) + 1
            expected = expected[:end] + [0] * (len(expected) - end)
        assert ids[5 - n :] == expected


@pytest.mark.parametrize("variant", VARIANTS)
def test_transformers_generate_decodes_through_the_cache(variant, tmp_path):
    """With the installed transformers, cached greedy ``generate`` gives the uncached
    tokens and logits, and really decodes from the cache: after the prompt, each call
    feeds one new token and the cache that the previous call returned."""
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_pretrained(
        _save(tmp_path, build_model(arch("causal_lm", variant)))
    )
    hf.generation_config.eos_token_id = None
    prompts = batch("causal_lm", b=3, t=5)["input_ids"]
    new = MAX_LEN - prompts.shape[1]
    runs, calls = {}, {}
    for use_cache in (True, False):
        seen = calls[use_cache] = []

        def record(module, args, kwargs, output, seen=seen):
            seen.append((kwargs["input_ids"].shape[1], getattr(output, CACHE_FIELD)))

        hook = hf.register_forward_hook(record, with_kwargs=True)
        runs[use_cache] = hf.generate(
            prompts,
            attention_mask=torch.ones_like(prompts),
            use_cache=use_cache,
            max_new_tokens=new,
            return_dict_in_generate=True,
            output_logits=True,
        )
        hook.remove()
    assert torch.equal(runs[True].sequences, runs[False].sequences)
    assert len(runs[True].logits) == new
    for cached, full in zip(runs[True].logits, runs[False].logits, strict=True):
        torch.testing.assert_close(cached, full, atol=1e-5, rtol=0)
    # Uncached: the whole sequence each call, no cache.
    assert calls[False] == [(n, None) for n in range(prompts.shape[1], MAX_LEN)]
    # Cached: one prefill of the prompt, then one token a call into one growing cache.
    assert [n for n, _ in calls[True]] == [prompts.shape[1]] + [1] * (new - 1)
    cache = runs[True][CACHE_FIELD]
    assert isinstance(cache, GrowformerCache)
    assert all(returned is cache for _, returned in calls[True])
    assert cache.get_seq_length() == MAX_LEN - 1


@pytest.mark.parametrize("variant", ["looped", "fading"])
def test_transformers_cached_generation_matches_the_full_forward(variant, tmp_path):
    """Cached and uncached generate agree on every step's logits, under beam search too
    (the cache follows the surviving beams) and on left-padded batches; a transformers
    cache is a clear error."""
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_pretrained(
        _save(tmp_path, build_model(arch("causal_lm", variant)))
    )
    hf.generation_config.eos_token_id = None
    prompts = batch("causal_lm", b=2, t=6)["input_ids"]
    mask = torch.ones_like(prompts)
    settings = {"attention_mask": mask, "max_new_tokens": 10, "return_dict_in_generate": True}
    runs = {
        use_cache: hf.generate(prompts, use_cache=use_cache, output_logits=True, **settings)
        for use_cache in (True, False)
    }
    assert torch.equal(runs[True].sequences, runs[False].sequences)
    for cached, full in zip(runs[True].logits, runs[False].logits, strict=True):
        torch.testing.assert_close(cached, full, atol=1e-5, rtol=0)
    assert runs[True][CACHE_FIELD].get_seq_length() == prompts.shape[1] + 9
    beams = {
        use_cache: hf.generate(prompts, use_cache=use_cache, num_beams=3, **settings).sequences
        for use_cache in (True, False)
    }
    assert torch.equal(beams[True], beams[False])
    assert not torch.equal(beams[True], runs[True].sequences)  # not greedy decoding again
    # A left-padded batch decodes each prompt as if alone (the short one's positions
    # start at its first real token).
    lm = hf.elastic.eval()
    mask[1, :3] = 0
    for use_cache in (True, False):
        got = hf.generate(prompts, attention_mask=mask, max_new_tokens=8, use_cache=use_cache)
        for row, start in enumerate((0, 3)):
            alone = lm.generate(prompts[row : row + 1, start:], 8)[0]
            assert torch.equal(got[row, start:], alone), (use_cache, row)
    # The forward alone counts positions from the mask too (scoring, training).
    with torch.no_grad():
        logits = hf(prompts, attention_mask=mask).logits
        torch.testing.assert_close(logits[1, 3:], lm(prompts[1:2, 3:]).logits[0], atol=1e-5, rtol=0)
    for name in ("cache", "past_key_values"):
        with pytest.raises(ConfigError, match="not a DynamicCache"):
            hf(prompts, **{name: DynamicCache()})
    # The argument's name before transformers 5.24 still decodes on from a cache.
    with torch.no_grad():
        first = hf(prompts[:, :4], use_cache=True)[CACHE_FIELD]
        step = hf(prompts[:, 4:], past_key_values=first).logits
        torch.testing.assert_close(step, hf(prompts).logits[:, 4:], atol=1e-5, rtol=0)
        with pytest.raises(ConfigError, match="not both"):
            hf(prompts[:, 4:], cache=first, past_key_values=first)


def test_new_labels_draw_only_the_new_classifier(tmp_path):
    torch.manual_seed(0)
    model = build_model(arch("classifier", "uniform"))
    hf, info = AutoModelForSequenceClassification.from_pretrained(
        _save(tmp_path, model), num_labels=5, ignore_mismatched_sizes=True, output_loading_info=True
    )
    assert {key for key, *_ in info["mismatched_keys"]} == {"classifier.weight", "classifier.bias"}
    assert hf.elastic.arch.num_labels == 5
    for name, value in model.state_dict().items():
        if not name.startswith("classifier."):
            assert torch.equal(hf.state_dict()[name], value), name
    assert hf.classifier.bias.abs().max() == 0
    assert 0.015 < hf.classifier.weight.std().item() < 0.025  # growformer's N(0, 0.02^2)


def test_configuration_round_trips(tmp_path):
    model = build_model(arch("classifier", "compressed"))
    config = AutoConfig.from_pretrained(_save(tmp_path, model))
    assert type(config) is GrowformerConfig
    assert config.arch == model.arch
    assert config.pad_token_id == 0
    assert config.growformer_version == growformer.__version__
    config.save_pretrained(tmp_path / "again")
    assert AutoConfig.from_pretrained(tmp_path / "again").arch == model.arch


@pytest.fixture(scope="module")
def sst2_checkpoint(sst2_dir, tmp_path_factory) -> Path:
    """A growformer SST-2 checkpoint (one head per layer) as the trainer writes it."""
    return GrowformerTrainer(sst2_config(sst2_dir), tmp_path_factory.mktemp("sst2")).save()


def test_auto_tokenizer_encodes_like_growformer(sst2_checkpoint, sst2_dir):
    ckpt = checkpoint.load(sst2_checkpoint)
    texts = [text for text, _ in sst2_sentences(sst2_dir, "dev", 1000)] + EDGE_TEXTS
    max_len = ckpt.model.arch.max_len
    expected = Tokenizer.from_json(ckpt.tokenizer_json).encode(texts, add_cls=True, max_len=max_len)
    tokenizer = AutoTokenizer.from_pretrained(sst2_checkpoint)
    assert tokenizer.model_max_length == max_len
    assert tokenizer(texts, truncation=True)["input_ids"] == expected
    padded = tokenizer(texts[:2], padding=True, return_tensors="pt")
    assert set(padded) == {"input_ids", "attention_mask"}
    short = min(len(ids) for ids in expected[:2])
    assert padded["input_ids"][:, short:][padded["attention_mask"][:, short:] == 0].eq(0).all()


def test_text_classification_pipeline(sst2_checkpoint, sst2_dir):
    ckpt = checkpoint.load(sst2_checkpoint)
    texts = [text for text, _ in sst2_sentences(sst2_dir, "dev", 4)]
    classify = pipeline(
        "text-classification", model=str(sst2_checkpoint), tokenizer=str(sst2_checkpoint)
    )
    results = classify(texts)
    tokenizer = Tokenizer.from_json(ckpt.tokenizer_json)
    model = ckpt.model.eval()
    for text, result in zip(texts, results, strict=True):
        ids = torch.tensor(tokenizer.encode([text], add_cls=True, max_len=None))
        with torch.no_grad():
            probs = model(ids).logits.softmax(-1)[0]
        assert result["label"] == ckpt.task["label_names"][probs.argmax()]
        assert result["score"] == pytest.approx(probs.max().item(), abs=1e-6)


class _OptimizerWatch(TrainerCallback):
    """Keeps the optimizer state after each optimizer step, and the steps whose structural
    events (applied before this callback's ``on_step_end``) kept it."""

    def __init__(self) -> None:
        self.carried: list[int] = []

    def on_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.params = dict(model.named_parameters())
        self.state = {
            n: {k: v.clone() for k, v in optimizer.state[p].items()} for n, p in self.params.items()
        }

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        now = dict(model.named_parameters())
        if all(now[n] is p for n, p in self.params.items()):
            return
        for name, p in now.items():
            before, after = self.state[name], optimizer.state[p]
            for key in ("exp_avg", "exp_avg_sq"):
                kept = tuple(slice(0, n) for n in before[key].shape)
                assert torch.equal(after[key][kept], before[key]), (name, key)
                new = after[key].clone()
                new[kept] = 0
                assert new.eq(0).all(), (name, key)  # a new head's slices start at zero
            assert torch.equal(after["step"], before["step"])
        self.carried.append(state.global_step)


def _train(model, tokenizer, rows, callbacks, output_dir: Path, steps: int) -> float:
    return _trainer(model, tokenizer, rows, callbacks, output_dir, steps).train().training_loss


def _trainer(model, tokenizer, rows, callbacks, output_dir: Path, steps: int, **args) -> Trainer:
    data = encoded(tokenizer, rows)
    args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=steps,
        per_device_train_batch_size=16,
        learning_rate=1e-3,
        logging_steps=5,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        **{"save_strategy": "no", **args},
    )
    return Trainer(
        model=model,
        args=args,
        train_dataset=data,
        data_collator=DataCollatorWithPadding(tokenizer),
        callbacks=callbacks,
    )


def test_incrt_grows_heads_inside_transformers_trainer(sst2_checkpoint, sst2_dir, tmp_path):
    model = AutoModelForSequenceClassification.from_pretrained(sst2_checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(sst2_checkpoint)
    before = [layer.heads for layer in model.elastic.arch.layers]
    incrt = GrowformerCallback(
        "incrt", {"check_every": 2, "calibration_batches": 2, "refractory_steps": 4}
    )
    watch = _OptimizerWatch()
    rows = sst2_sentences(sst2_dir, "train", 480)
    loss = _train(model, tokenizer, rows, [incrt, watch], tmp_path / "out", steps=30)
    assert math.isfinite(loss)
    grown = [e for e in incrt.events if e["op"] == "add_head"]
    assert grown and all(e["init"] == "function_preserving" for e in grown)
    after = [layer.heads for layer in model.elastic.arch.layers]
    assert sum(after) == sum(before) + len(grown)
    assert watch.carried == sorted({e["step"] for e in incrt.events})
    assert incrt.stats and {r["layer"] for r in incrt.stats if "layer" in r} == {0, 1}
    # The grown model saves and loads as such.
    model.save_pretrained(tmp_path / "grown")
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path / "grown")
    assert [layer.heads for layer in again.elastic.arch.layers] == after
    b = tokenizer([text for text, _ in rows[:8]], padding=True, return_tensors="pt")
    assert torch.equal(_logits(again, b), _logits(model.eval(), b))


def test_incrt_resumes_from_a_transformers_trainer_checkpoint(sst2_checkpoint, sst2_dir, tmp_path):
    """Resumed from a checkpoint taken mid-growth, with the callback's saved state: the
    same events and the same model as the uninterrupted run."""
    options = {"check_every": 2, "calibration_batches": 2, "refractory_steps": 2}
    tokenizer = AutoTokenizer.from_pretrained(sst2_checkpoint)
    rows = sst2_sentences(sst2_dir, "train", 480)
    model = AutoModelForSequenceClassification.from_pretrained(sst2_checkpoint)
    whole = GrowformerCallback("incrt", options)
    saving = {"save_strategy": "steps", "save_steps": 3}
    _trainer(model, tokenizer, rows, [whole], tmp_path / "a", 12, **saving).train()
    assert 0 < len([e for e in whole.events if e["step"] <= 3]) < len(whole.events)
    ckpt = tmp_path / "a" / "checkpoint-3"
    again = AutoModelForSequenceClassification.from_pretrained(ckpt)
    restore = {"restore_callback_states_from_checkpoint": True}
    fresh = GrowformerCallback("incrt", options)
    trainer = _trainer(again, tokenizer, rows, [fresh], tmp_path / "b", 12, **restore)
    trainer.train(resume_from_checkpoint=str(ckpt))
    callbacks = trainer.callback_handler.callbacks
    (resumed,) = [c for c in callbacks if isinstance(c, GrowformerCallback)]
    assert resumed is not fresh and resumed.policy_state["checks"] > fresh.policy_state["checks"]
    assert resumed.events == whole.events
    assert again.elastic.arch == model.elastic.arch
    for (name, a), b in zip(again.named_parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5, msg=name)


def test_sgt_loops_a_layer_inside_transformers_trainer(sst2_checkpoint, sst2_dir, tmp_path):
    model = AutoModelForSequenceClassification.from_pretrained(sst2_checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(sst2_checkpoint)
    sgt = GrowformerCallback(
        "sgt", {"warmup": 4, "window": 4, "top_layers": 1, "kept_heads": 1, "stat_steps": 2}
    )
    loss = _train(model, tokenizer, sst2_sentences(sst2_dir, "train", 160), [sgt], tmp_path, 6)
    assert math.isfinite(loss)
    assert [(e["op"], e["step"], e["layer"]) for e in sgt.events] == [("set_loops", 4, 1)]
    assert model.elastic.arch.layers[1].loops == 1


def test_the_callback_under_ddp_grows_the_same_heads_as_one_process(sst2_dir, tmp_path):
    """``transformers.Trainer`` launched by torchrun on 2 processes x 8 examples a step,
    against one process x 16 (no dropout): statistics summed over the ranks, the same
    events on every rank, the DDP wrapper rebuilt in place after each."""
    ckpt = GrowformerTrainer(sst2_config(sst2_dir, dropout=0.0), tmp_path / "start").save()
    worker = [str(Path(__file__).with_name("hf_worker.py")), str(ckpt), str(sst2_dir)]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = {
        "one": [sys.executable, *worker, str(tmp_path / "one"), "16", "20"],
        "two": [*torchrun, "--nproc_per_node=2", *worker, str(tmp_path / "two"), "8", "20"],
    }
    for cmd in runs.values():
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    one, two = (json.loads((tmp_path / r / "result.json").read_text()) for r in runs)
    assert (one["world"], two["world"]) == (1, 2)
    assert [e["op"] for e in one["events"]].count("add_head") >= 2
    unmeasured = ("loss_before", "loss_after")
    for a, b in zip(one["events"], two["events"], strict=True):
        assert {k: v for k, v in a.items() if k not in unmeasured} == {
            k: v for k, v in b.items() if k not in unmeasured
        }
        assert a["loss_after"] == pytest.approx(b["loss_after"], abs=1e-5)
    assert one["heads"] == two["heads"]
    w1, w2 = (load_file(tmp_path / r / "weights.safetensors") for r in runs)
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) <= 1e-5


def test_callback_refuses_what_it_cannot_run(tmp_path):
    with pytest.raises(ConfigError, match="unknown policy 'nope'"):
        GrowformerCallback("nope")
    with pytest.raises(ConfigError, match="has no option"):
        GrowformerCallback("incrt", {"check_evry": 2})
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    with pytest.raises(ConfigError, match="needs a growformer model, got Linear"):
        GrowformerCallback("incrt").on_train_begin(args, None, None, model=torch.nn.Linear(2, 2))


IMPORT_ORDERS = {
    "growformer_first": """
import sys
import growformer
assert "transformers" not in sys.modules
import transformers.modeling_utils  # imports the Auto configuration half-way through
from transformers import AutoModelForSequenceClassification
""",
    "transformers_first": """
from transformers import AutoModelForSequenceClassification
import growformer
""",
    "config_then_auto_model": """
import growformer
from transformers import AutoConfig
config = AutoConfig.from_pretrained(CKPT)
from transformers import AutoModelForSequenceClassification
assert type(AutoModelForSequenceClassification.from_config(config)).__name__.startswith("Grow")
""",
}


@pytest.mark.parametrize("order", list(IMPORT_ORDERS))
def test_import_registers_without_importing_transformers(order, tmp_path):
    """In a fresh process: ``import growformer`` leaves transformers alone, and the Auto
    classes know growformer whichever is imported first."""
    ckpt = _save(tmp_path, build_model(arch("classifier", "looped")))
    code = f"""
CKPT = {str(ckpt)!r}
{IMPORT_ORDERS[order]}
model = AutoModelForSequenceClassification.from_pretrained(CKPT)
print(type(model).__name__)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["GrowformerForSequenceClassification"]


@pytest.mark.parametrize(
    "budget",
    [{"max_heads_per_layer": 2}, {"max_params": 1}],
    ids=["max_heads_per_layer", "max_params"],
)
def test_budgets_refuse_growth_inside_transformers_trainer_as_in_growformer_train(
    sst2_checkpoint, sst2_dir, tmp_path, budget
):
    """The callback and the native trainer run one structural step: the same schedule
    under the same budget is refused at the same steps, with the same records."""
    events = [{"step": s, "op": "add_head", "layer": 0} for s in (2, 4)]
    policy = {"events": events}
    ckpt = checkpoint.load(sst2_checkpoint)
    heads = ckpt.model.arch.layers[0].heads
    if "max_params" in budget:  # room for exactly one more head
        one_more = ckpt.model.arch.with_layer(0, heads=heads + 1)
        budget = {"max_params": param_count(one_more)}
    native = TrainConfig.from_dict(
        {**ckpt.config, "policy": "scheduled", "policy_options": policy, "steps": 6, **budget}
    )
    train(native, tmp_path / "native", progress=False)
    stats = [json.loads(line) for line in (tmp_path / "native" / "stats.jsonl").open()]
    grown = [json.loads(line) for line in (tmp_path / "native" / "events.jsonl").open()]

    model = AutoModelForSequenceClassification.from_pretrained(sst2_checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(sst2_checkpoint)
    callback = GrowformerCallback("scheduled", policy, **budget)
    rows = sst2_sentences(sst2_dir, "train", 96)
    _train(model, tokenizer, rows, [callback], tmp_path / "hf", steps=6)

    refused = [r for r in stats if "refused" in r]
    assert len(refused) == 1 and refused[0]["step"] == 4
    assert callback.stats == refused
    key = ("op", "layer", "head", "step", "heads_after", "params_after")
    assert [{k: e[k] for k in key} for e in callback.events] == [
        {k: e[k] for k in key} for e in grown
    ]
    assert model.elastic.arch.layers[0].heads == heads + 1
