"""Run reports (HTML with embedded figures, rendered by Chromium) and TensorBoard logging."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from growformer.cli import main
from growformer.errors import ConfigError
from growformer.policies import RECORD_KINDS, record_kind, register_record_kind
from growformer.report import TensorBoardLog, read_run, write_report
from growformer.training.config import TrainConfig
from growformer.training.loop import train

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def config(policy: str, policy_options: dict, **changes) -> dict:
    base = {
        "task": "retrieval",
        "policy": policy,
        "policy_options": policy_options,
        "steps": 30,
        "decay_steps": 30,
        "batch_size": 16,
        "warmup_steps": 4,
        "eval_every": 10,
        "checkpoint_every": 30,
        "log_every": 5,
        "task_options": {"n_train": 256, "n_val": 32, "k": 2, "seq_len": 10},
        "model": {"d_model": 32, "n_layers": 3, "heads": 2, "head_dim": 8, "ffn_dim": 64},
        "device": "cpu",
    }
    return {**base, **changes}


INCRT = {
    "calibration_batches": 2,
    "heldout_batches": 2,
    "refractory_steps": 8,
    "max_heads": 4,
}
SGT = {"warmup": 6, "window": 6, "top_layers": 2, "kept_heads": 1}


@pytest.fixture(scope="module")
def incrt_run(tmp_path_factory) -> Path:
    """A short INCRT run, logging to TensorBoard too."""
    out = tmp_path_factory.mktemp("incrt")
    train(TrainConfig.from_dict(config("incrt", INCRT, tensorboard=True)), out, progress=False)
    return out


@pytest.fixture(scope="module")
def sst2_incrt_run(sst2_dir, tmp_path_factory) -> Path:
    """INCRT on real SST-2 sentences (the first 800 training rows, a user table)."""
    out = tmp_path_factory.mktemp("sst2")
    table = out.parent / f"{out.name}.tsv"
    table.write_text("".join((sst2_dir / "train.tsv").read_text().splitlines(True)[:801]))
    cfg = config("incrt", INCRT, task="file", data_file=str(table), task_options={})
    cfg.update(steps=60, decay_steps=60, eval_every=20, checkpoint_every=60, vocab_size=1000)
    train(TrainConfig.from_dict(cfg), out, progress=False)
    return out


@pytest.fixture(scope="module")
def sgt_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sgt")
    train(TrainConfig.from_dict(config("sgt", SGT)), out, progress=False)
    return out


def _images(page: str) -> dict[str, bytes]:
    """The embedded PNGs of a report page, by the name of the file they were written to."""
    found = re.findall(
        r'<img src="data:image/png;base64,([^"]+)" alt="[^"]*" data-file="([^"]+)"', page
    )
    return {name: base64.b64decode(data) for data, name in found}


def _check_report(run: Path, figures: set[str], absent: set[str]) -> str:
    index = run / "report" / "index.html"
    page = index.read_text()
    embedded = _images(page)
    written = {p.name: p.read_bytes() for p in (run / "report").glob("*.png")}
    assert set(embedded) == set(written) == {f"{name}.png" for name in figures}
    for name, data in written.items():
        assert data.startswith(PNG_MAGIC), name
        assert embedded[name] == data
    # Self-contained: nothing to fetch.
    assert "<link" not in page and "<script" not in page
    assert not re.search(r'(src|href)="(?!data:)', page)
    for name in absent:
        assert not (run / "report" / f"{name}.png").exists()
    return page


def test_incrt_run_reports_growth(incrt_run):
    summary = json.loads((incrt_run / "summary.json").read_text())
    assert any(e["op"] == "add_head" for e in summary["events"])
    page = _check_report(
        incrt_run,
        figures={
            "curves",
            "heads",
            "architecture",
            "prediction",
            "incrt_threshold",
            "incrt_energies",
        },
        absent={"loops", "sgt_scores"},
    )
    assert "No loops" in page and "No SGT decisions" in page
    assert f"{summary['params']:,}" in page


def test_sgt_run_reports_its_loops(sgt_run):
    summary = json.loads((sgt_run / "summary.json").read_text())
    assert any(e["op"] == "set_loops" for e in summary["events"])
    page = _check_report(
        sgt_run,
        figures={"curves", "architecture", "loops", "sgt_scores"},
        absent={"heads", "prediction", "incrt_threshold", "incrt_energies"},
    )
    assert "No INCRT statistics" in page and "never changed" in page


@pytest.mark.parametrize("run", ["incrt_run", "sgt_run"])
def test_every_statistics_record_names_a_registered_kind(run, request):
    lines = (request.getfixturevalue(run) / "stats.jsonl").read_text().splitlines()
    kinds = {json.loads(line)["kind"] for line in lines}
    assert kinds <= RECORD_KINDS.keys()
    assert ("incrt.gate" if run == "incrt_run" else "sgt.decision") in kinds


@pytest.mark.parametrize("run", ["incrt_run", "sgt_run"])
def test_runs_written_before_records_named_their_kind_still_report(run, request, tmp_path):
    source = request.getfixturevalue(run)
    old = tmp_path / "old"
    shutil.copytree(source, old)
    records = [json.loads(line) for line in (old / "stats.jsonl").read_text().splitlines()]
    (old / "stats.jsonl").write_text(
        "".join(json.dumps({k: v for k, v in r.items() if k != "kind"}) + "\n" for r in records)
    )
    new, legacy = read_run(source), read_run(old)
    for kind in {r["kind"] for r in records}:
        assert [record_kind(r) for r in legacy.of(kind)] == [kind] * len(new.of(kind))
    shutil.rmtree(old / "report")
    write_report(old)
    assert sorted(p.name for p in (old / "report").glob("*.png")) == sorted(
        p.name for p in (source / "report").glob("*.png")
    )


def test_an_own_record_kind_reaches_tensorboard(tmp_path):
    register_record_kind("test.mine", scalars=lambda r: {"mine/width": r["width"]})
    try:
        with pytest.raises(ConfigError, match="already registered"):
            register_record_kind("test.mine")
        board = TensorBoardLog(tmp_path)
        board.stats({"kind": "test.mine", "step": 3, "width": 1.5})
        board.stats({"kind": "unknown.kind", "step": 4, "width": 2.0})  # logged, not drawn
        board.close()
    finally:
        del RECORD_KINDS["test.mine"]
    scalars, _ = _board(tmp_path)
    assert scalars == {"mine/width": [(3, 1.5)]}


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no Chromium binary found (apt-get install chromium)")


@pytest.mark.parametrize("run", ["incrt_run", "sst2_incrt_run", "sgt_run"])
def test_report_renders_in_headless_chromium(run, request, tmp_path):
    chromium = _chromium()
    page = (request.getfixturevalue(run) / "report" / "index.html").read_text()
    # Once loaded, the page writes how many of its images decoded into its own DOM.
    probe = (
        "<script>window.addEventListener('load', () => {"
        "const imgs = [...document.images];"
        "const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;"
        "document.body.dataset.loaded = ok + '/' + imgs.length;});</script>"
    )
    html = tmp_path / "probe.html"
    html.write_text(page.replace("</body>", probe + "</body>"))
    dom = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            html.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    loaded = re.search(r'data-loaded="(\d+)/(\d+)"', dom)
    assert loaded, dom[-2000:]
    ok, total = map(int, loaded.groups())
    assert total == len(_images(page)) >= 4 and ok == total


def test_report_command(incrt_run, tmp_path, capsys):
    out = tmp_path / "elsewhere"
    assert main(["report", str(incrt_run), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out / "index.html")
    assert (out / "index.html").read_bytes() == (incrt_run / "report" / "index.html").read_bytes()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d, "not a run directory: it has no summary.json"),
        (lambda d: d / "missing", "does not exist"),
        (lambda d: (d / "checkpoints").mkdir() or d, "has not finished"),
        (lambda d: (d / "summary.json").write_text("{") and d, "not valid JSON"),
    ],
)
def test_report_of_a_directory_that_is_not_a_finished_run(make, message, tmp_path, capsys):
    assert main(["report", str(make(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("growformer: error:") and message in err
    assert not (tmp_path / "report").exists()


def test_failed_report_warns_and_keeps_the_run(tmp_path):
    (tmp_path / "report").write_text("a file where the report's directory goes")
    cfg = TrainConfig.from_dict(config("static", {}, steps=4))
    with pytest.warns(RuntimeWarning, match="could not write the report"):
        summary = train(cfg, tmp_path, progress=False)
    assert json.loads((tmp_path / "summary.json").read_text()) == summary


def _board(log_dir: Path) -> tuple[dict[str, list[tuple[int, float]]], dict[str, list[int]]]:
    """What TensorBoard reads back: ``(step, value)`` per scalar tag, steps per text tag."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    tags = acc.Tags()
    scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in tags["scalars"]}
    texts = {tag: [e.step for e in acc.Tensors(tag)] for tag in tags["tensors"]}
    return scalars, texts


def test_tensorboard_logs_the_run(incrt_run):
    scalars, texts = _board(incrt_run / "tensorboard")
    expected = {"train/loss", "train/lr", "val/loss", "val/accuracy", "structure/params"}
    expected |= {
        f"{kind}/layer_{i}"
        for kind in ("structure/heads", "incrt/residual", "incrt/grow_at", "incrt/keep_at")
        for i in range(3)
    }
    assert expected <= scalars.keys()
    metrics = [json.loads(line) for line in (incrt_run / "metrics.jsonl").read_text().splitlines()]
    train_loss = [(r["step"], r["train_loss"]) for r in metrics if "train_loss" in r]
    assert [s for s, _ in scalars["train/loss"]] == [s for s, _ in train_loss]
    assert [v for _, v in scalars["train/loss"]] == pytest.approx([v for _, v in train_loss])
    summary = json.loads((incrt_run / "summary.json").read_text())
    assert texts["events/text_summary"] == sorted({e["step"] for e in summary["events"]})
    for i, layer in enumerate(summary["architecture"]["layers"]):
        assert scalars[f"structure/heads/layer_{i}"][0] == (0, 1)  # INCRT starts at one head
        assert scalars[f"structure/heads/layer_{i}"][-1][1] == layer["heads"]


def test_tensorboard_switched_on_when_resuming(tmp_path):
    run = tmp_path / "run"
    common = ["train", "--out", str(run), "--no-progress"]
    cfg = tmp_path / "sgt.json"
    cfg.write_text(json.dumps(config("sgt", SGT)))
    assert main([*common, "--config", str(cfg), "--steps", "15"]) == 0
    assert not (run / "tensorboard").exists()
    assert main([*common, "--resume", "--steps", "30", "--tensorboard"]) == 0
    scalars, _ = _board(run / "tensorboard")
    # From the step resumed at: step 15's loss was logged before, without TensorBoard.
    assert [s for s, _ in scalars["train/loss"]] == [20, 25, 30]
    assert scalars["structure/params"][0][0] == 15
    assert {f"sgt/score/layer_{i}" for i in (1, 2)} <= scalars.keys()


def test_missing_tensorboard_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ConfigError, match=re.escape('pip install -e ".[tensorboard]"')):
        TensorBoardLog(tmp_path)
