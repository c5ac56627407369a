"""Gradient accumulation: a batch cut into micro-batches trains as the whole batch does
(same statistics, same structural events, weights within 1e-5), on one process and on two."""

from __future__ import annotations

import json

import pytest
from test_distributed import _structure, _torchrun, _weights
from test_incrt import run_config as incrt_config
from test_sgt import run_config as sgt_config

from growformer import TrainConfig, train
from growformer.errors import ConfigError

# No dropout: micro-batches draw their own dropout masks.
CONFIGS = {
    "incrt": incrt_config(model={"dropout": 0.0}, batch_size=32),
    "incrt-demand": incrt_config(
        model={"dropout": 0.0},
        batch_size=32,
        policy_options={"gate": "demand", "demand_window": 3, "demand_z": 1.0, "grace_checks": 2},
    ),
    "sgt": {**sgt_config(), "batch_size": 32, "model": {**sgt_config()["model"], "dropout": 0.0}},
}


def _run(cfg: dict, out, **changes) -> dict:
    return train(TrainConfig.from_dict({**cfg, **changes}), out, progress=False)


def _stats(run) -> list[dict]:
    """The statistics records, each flattened to name -> number (lists by index)."""
    out = []
    for line in (run / "stats.jsonl").read_text().splitlines():
        flat = {}
        for key, value in json.loads(line).items():
            values = value if isinstance(value, list) else [value]
            flat |= {f"{key}[{i}]": v for i, v in enumerate(values)}
        out.append(flat)
    return out


def _close(a: dict, b: dict) -> None:
    for run in (a, b):
        assert run["events"], "the run must change its structure to test anything"
    assert _structure(a["events"]) == _structure(b["events"])
    assert a["architecture"] == b["architecture"]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_two_micro_batches_of_16_train_as_one_batch_of_32(name, tmp_path):
    cfg = CONFIGS[name]
    whole = _run(cfg, tmp_path / "whole")
    cut = _run(cfg, tmp_path / "cut", grad_accum_steps=2)
    _close(whole, cut)
    one, two = _weights(tmp_path / "whole"), _weights(tmp_path / "cut")
    assert max((one[k] - two[k]).abs().max().item() for k in one) <= 1e-5
    # The statistics the policy decided on: those of the whole batch.
    for a, b in zip(_stats(tmp_path / "whole"), _stats(tmp_path / "cut"), strict=True):
        assert a.keys() == b.keys()
        for key, value in a.items():
            if isinstance(value, str) or value is None:
                assert b[key] == value
            else:
                assert b[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


@pytest.mark.parametrize("distributed", ["ddp", "fsdp"])
def test_two_ranks_of_two_micro_batches_train_as_one_process(distributed, tmp_path):
    """The data-parallel ranks exchange gradients once per step, after their last
    micro-batch (DDP, or FSDP2's reduce-scatter): 2 ranks x 2 micro-batches of 8 train as
    one process with a batch of 32."""
    cfg = CONFIGS["incrt"]
    whole = _run(cfg, tmp_path / "whole")
    sharded = {"grad_accum_steps": 2, "distributed": distributed}
    _torchrun({**cfg, **sharded}, tmp_path, tmp_path / "ranks")
    ranks = json.loads((tmp_path / "ranks" / "summary.json").read_text())
    assert ranks["ranks"] == 2
    _close(whole, ranks)
    one, two = _weights(tmp_path / "whole"), _weights(tmp_path / "ranks")
    assert max((one[k] - two[k]).abs().max().item() for k in one) <= 1e-5


def test_resume_may_change_the_cut(tmp_path):
    cfg = CONFIGS["incrt"]
    whole = _run(cfg, tmp_path / "whole")
    _run(cfg, tmp_path / "resumed", steps=30)
    resumed = train(
        TrainConfig.from_dict({**cfg, "grad_accum_steps": 4}),
        tmp_path / "resumed",
        resume=True,
        progress=False,
    )
    _close(whole, resumed)
    one, two = _weights(tmp_path / "whole"), _weights(tmp_path / "resumed")
    assert max((one[k] - two[k]).abs().max().item() for k in one) <= 1e-5


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"grad_accum_steps": 0}, "grad_accum_steps must be positive"),
        ({"grad_accum_steps": 3}, r"batch_size 32 .* 1 rank\(s\) x 3 micro-batch\(es\)"),
    ],
)
def test_a_cut_that_does_not_fit_is_refused(changes, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        _run(CONFIGS["incrt"], tmp_path / "x", **changes)
