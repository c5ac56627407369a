"""Tests of the sarscov2 task's genome-wide input: mutation tokens, the three splits, amplicon
dropout, and calling a lab's genomes with a trained model (``growformer assign``)."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import pytest
import torch

import growformer.data.shared
from growformer import checkpoint
from growformer.cli import main
from growformer.data import Tokenizer, load_task
from growformer.data import sarscov2 as sc
from growformer.data.sarscov2.mutations import outside_spans
from growformer.data.tasks.sarscov2 import genome_encoder
from growformer.errors import ConfigError, DataError
from growformer.evaluation import eval_mode


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sarscov2-cache")


@pytest.fixture(scope="module")
def reference(sarscov2_dir) -> str:
    return sc.read_reference(sarscov2_dir / sc.REFERENCE_FILE)


@pytest.fixture(scope="module")
def aliases(sarscov2_dir) -> dict:
    return sc.read_aliases(sarscov2_dir / sc.ALIAS_FILE)


@pytest.fixture(scope="module")
def leaves(sarscov2_dir, cache_dir) -> sc.TreeLeaves:
    return sc.load_tree_leaves(
        sarscov2_dir / sc.TREE_FILE, sarscov2_dir / sc.REFERENCE_FILE, cache_dir
    )


@pytest.fixture(scope="module")
def who(leaves, aliases) -> list[str]:
    return [sc.who_label(sc.dealias(lineage, aliases)) for lineage in leaves.lineages]


def task(sarscov2_dir, cache_dir, seed=0, **options):
    options = {"cache_dir": cache_dir, **options}
    return load_task("sarscov2", data_dir=sarscov2_dir, seed=seed, options=options)


@pytest.fixture(scope="module")
def genotype_task(sarscov2_dir, cache_dir):
    """The task without its default amplicon-dropout copies: one example per genotype."""
    return task(sarscov2_dir, cache_dir, augment_copies=0)


# --- the mutation input ---------------------------------------------------------------------


def test_mutation_task_sees_no_test_input_in_training(genotype_task, leaves, reference):
    t = genotype_task
    info = t.info
    assert t.label_names == list(sc.WHO_LABELS) and info["input"] == "mutations"
    train = [tuple(ids) for ids in t.train.ids]
    test = [tuple(ids) for ids in t.val.ids]
    assert len(set(zip(train, t.train.labels.tolist(), strict=True))) == len(train)
    assert not set(train) & set(test)
    assert (len(train), len(test)) == (info["train_examples"], info["test_examples"])
    assert 33_000 < len(train) < 34_500 and 8_000 < len(test) < 8_800
    # One token per mutation after [CLS]; the longest genome has 82 mutations.
    assert t.max_len == 83 == max(map(len, train + test))
    # The vocabulary is the training split's mutations, in genome order.
    words = t.tokenizer.tokens(range(4, t.vocab_size))
    assert [int(w[1:-1]) for w in words] == sorted(int(w[1:-1]) for w in words)
    assert info["mutations_in_vocabulary"] == len(words)
    in_train = {w for ids in train for w in t.tokenizer.tokens(ids[1:])}
    assert in_train == set(words)
    unknown = sum(ids.count(t.tokenizer.unk_id) for ids in test)
    assert unknown == info["test_unknown_mutations"] > 0
    # A token reads back as its mutation, against the reference.
    position, base = sc.parse_mutation(words[0], reference)
    assert sc.mutation_name((position, base), reference) == words[0]


def test_min_count_and_augmentation(sarscov2_dir, cache_dir, genotype_task):
    rare = task(sarscov2_dir, cache_dir, min_count=20)
    assert 3_000 < rare.info["mutations_in_vocabulary"] < 5_000
    assert rare.info["test_unknown_mutations"] > genotype_task.info["test_unknown_mutations"]
    augmented = task(sarscov2_dir, cache_dir)  # the default: one masked copy of each
    assert augmented.info["augment_copies"] == 1 and augmented.info["augment_mask"] == 0.2
    # Masked copies add examples (some copies lose nothing and repeat their genome).
    base = genotype_task.info["train_examples"]
    assert base < augmented.info["train_examples"] <= 2 * base
    train = {tuple(ids) for ids in augmented.train.ids}
    assert not train & {tuple(ids) for ids in augmented.val.ids}
    # Copies only lose mutations: the vocabulary is the one of the unmasked genomes.
    assert augmented.tokenizer.to_json() == genotype_task.tokenizer.to_json()


def test_mask_amplicons(leaves):
    gen = torch.Generator().manual_seed(0)
    genotype = max(leaves.genotypes, key=len)
    kept, spans = sc.mask_amplicons(genotype, 0.1, gen)
    tiles = round(0.1 * sc.GENOME_LENGTH / sc.AMPLICON_LENGTH)
    assert len(spans) == tiles and list(spans) == sorted(spans)
    assert all(last - first + 1 <= sc.AMPLICON_LENGTH for first, last in spans)
    assert kept == outside_spans(genotype, spans)
    assert set(kept) < set(genotype)  # 82 mutations, 7 amplicons: some are lost
    assert sc.mask_amplicons(genotype, 0.0, gen) == (genotype, ())
    again = sc.mask_amplicons(genotype, 0.1, torch.Generator().manual_seed(0))
    assert again == (kept, spans)


def test_synthetic_recombinants():
    a = ((300, "T"), (1_000, "A"), (2_000, "G"), (20_000, "C"), (21_000, "T"), (22_000, "A"))
    b = ((500, "C"), (1_500, "T"), (2_500, "A"), (25_000, "G"), (26_000, "C"), (27_000, "T"))
    assert sc.recombine(a, b, 10_000) == a[:3] + b[3:]
    gen = torch.Generator().manual_seed(0)
    made = sc.synthetic_recombinants([a, b], 20, gen, (269, 29_673), min_each=2)
    assert made and len(made) <= 20
    for child in made:
        # One parent's bases up to a breakpoint, the other's after it, unlike either parent.
        points = {p for p, _ in a + b} | {p + 1 for p, _ in a + b}
        assert any(
            child in (sc.recombine(a, b, point), sc.recombine(b, a, point)) for point in points
        )
        assert child not in (a, b)
    # Parents that differ too little on one side make nothing.
    assert sc.synthetic_recombinants([a, a], 5, gen, (269, 29_673)) == []


def test_recombinants_option(sarscov2_dir, cache_dir, genotype_task):
    t = task(sarscov2_dir, cache_dir, augment_copies=0, recombinants=500)
    recombinant = t.label_names.index(sc.RECOMBINANT)
    base = genotype_task.train.labels.tolist().count(recombinant)
    assert t.train.labels.tolist().count(recombinant) == base + 500
    assert t.val.ids == genotype_task.val.ids  # the test side is untouched
    with pytest.raises(ConfigError, match="label 'who'"):
        task(sarscov2_dir, cache_dir, label="lineage", recombinants=10)


def test_genome_encoder_reads_only_the_trees_span(genotype_task, reference):
    span = tuple(genotype_task.info["span"])
    assert span == (269, 29_673)
    encoder = sc.GenomeEncoder(genotype_task.tokenizer, reference, span)
    known = genotype_task.tokenizer.tokens([4])[0]
    mutation = sc.parse_mutation(known, reference)
    # C241T lies before the span: a real genome carries it, the tree never does.
    ids = encoder.ids([(241, "T"), mutation, (29_000, "A"), (29_800, "G")])
    assert ids[:2] == [genotype_task.tokenizer.cls_id, 4] and len(ids) == 3
    unseen = ids[2] == genotype_task.tokenizer.unk_id
    assert unseen == (
        f"{reference[28_999]}29000A"
        not in genotype_task.tokenizer.tokens(range(genotype_task.vocab_size))
    )


# --- splits ---------------------------------------------------------------------------------


def test_lineage_split_holds_out_whole_lineages(leaves, who):
    splits = [
        sc.split_by_lineage(leaves.genotypes, who, leaves.lineages, test_fraction=0.2, seed=s)
        for s in (0, 1)
    ]
    for split in splits:
        held = set(split.info["held_out_lineages"])
        train_lineages = {
            lin for lin, g in zip(leaves.lineages, leaves.genotypes, strict=True) if lin not in held
        }
        assert held and not held & train_lineages
        train = {g for g, _ in split.train}
        assert not train & {g for g, _ in split.test}
        # Every class with two or more lineages is tested; each keeps a lineage in training.
        assert {y for _, y in split.test} == set(sc.WHO_LABELS)
        assert {y for _, y in split.train} == set(sc.WHO_LABELS)
    assert splits[0].info["held_out_lineages"] != splits[1].info["held_out_lineages"]


def test_future_split_holds_out_the_last_designated(leaves, who, aliases):
    order = sc.designation_order(aliases)
    split = sc.split_future(leaves.genotypes, who, leaves.lineages, order, test_fraction=0.2)
    held = set(split.info["held_out_lineages"])
    class_of = {lin: y for lin, y in zip(leaves.lineages, who, strict=True)}
    for label in sc.WHO_LABELS:
        mine = {lin for lin, y in class_of.items() if y == label}
        tested = mine & held
        if len(mine) > 1:
            assert tested, label
            assert max(order(s) for s in mine - held) < min(order(s) for s in tested)
    # Omicron's and the recombinants' last designations are among those held out.
    assert {"BA.5", "BA.4"} & held or any(s.startswith(("BE", "BF")) for s in held)
    assert any(s.startswith("X") for s in held)


def test_designation_order_and_parents(aliases):
    order = sc.designation_order(aliases)
    assert order("BA.4") < order("BA.5") < order("BA.5.2") < order("BE.1")
    assert order("B.1.1.7") < order("AY.4") < order("BA.1")
    assert order(sc.UNASSIGNED) < order("A")
    assert order("XA") < order("XBB.1")
    with pytest.raises(DataError, match=r"'ZZ\.1'"):
        order("ZZ.1")
    assert sc.parent_lineage("B.1.1.529.5.2") == "B.1.1.529.5"
    assert sc.parent_lineage("XE") == "XE" and sc.parent_lineage("B") == "B"


def test_split_options_of_the_task(sarscov2_dir, cache_dir):
    lineage = task(sarscov2_dir, cache_dir, split="lineage", seed=1)
    future = task(sarscov2_dir, cache_dir, split="future")
    for t in (lineage, future):
        assert t.info["held_out_lineages"]
        # The split keeps genotypes apart; a masked training copy may still equal a held-out
        # genome as the model reads it: such test examples are dropped and counted.
        assert 0 <= t.info["test_examples_seen_in_training"] < 20
        assert not {tuple(x) for x in t.train.ids} & {tuple(x) for x in t.val.ids}
    top = task(sarscov2_dir, cache_dir, label="lineage", top_lineages=200)
    assert len(top.label_names) == 201 and top.label_names[-1] == sc.OTHER


# --- calling a lab's genomes --------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory, sarscov2_dir, cache_dir, one_thread) -> Path:
    """A small model of the WHO task, trained briefly (enough to call most genomes)."""
    out = tmp_path_factory.mktemp("who")
    config = {
        "task": "sarscov2",
        "data_dir": str(sarscov2_dir),
        "task_options": {"cache_dir": str(cache_dir), "min_count": 20},
        "model": {"d_model": 32, "n_layers": 1, "heads": 2, "head_dim": 16, "ffn_dim": 64},
        "steps": 150,
        "warmup_steps": 10,
        "eval_every": 150,
        "checkpoint_every": 150,
        "device": "cpu",
    }
    path = out / "config.json"
    path.write_text(json.dumps(config))
    assert main(["train", "--config", str(path), "--out", str(out / "run"), "--no-progress"]) == 0
    return out / "run"


def write_genomes(path: Path, genomes: dict[str, str]) -> Path:
    text = "".join(f">{name} some description\n{seq}\n" for name, seq in genomes.items())
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def test_assign_calls_genomes_as_the_model_reads_the_tree(
    trained, leaves, who, reference, tmp_path, capsys
):
    ckpt = checkpoint.load(trained)
    encoder = genome_encoder(Tokenizer.from_json(ckpt.tokenizer_json), ckpt.task)
    gen = torch.Generator().manual_seed(0)
    picked = torch.randperm(len(leaves.names), generator=gen)[:40].tolist()
    # Trimmed ends only (within the span the tree masks): what the aligner calls is exactly
    # the tree's genotype, so the model sees exactly the ids the task gave it.
    trim = sc.Damage(max_failed_amplicons=0, max_deletions=0, ambiguous_sites=0)
    genomes = {
        leaves.names[i]: sc.damage(sc.genome_sequence(leaves.genotypes[i], reference), gen, trim)
        for i in picked
    }
    # More mutations than the model reads (a transition every 250 nt): called, and said so.
    many = list(reference)
    for position in range(300, 29_600, 250):
        many[position - 1] = {"A": "G", "G": "A", "C": "T", "T": "C"}[many[position - 1]]
    genomes["many"] = "".join(many)
    genomes["short"] = "ACGT" * 100
    genomes["junk"] = "ACGTJ" * 6000
    path = write_genomes(tmp_path / "genomes.fasta.gz", genomes)
    out = tmp_path / "calls.csv"
    argv = ["assign", str(trained), str(path), "--out", str(out)]
    assert main([*argv, "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["genomes"] == 43 and summary["called"] == 41
    assert summary["qc_failed_by_reason"] == {"invalid characters": 1, "too short": 1}
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["taxon"] for r in rows] == list(genomes)
    probabilities = model_probabilities(ckpt, [encoder.ids(leaves.genotypes[i]) for i in picked])
    for row, i, p in zip(rows[:40], picked, probabilities, strict=True):
        assert row["qc_status"] == sc.QC_PASS
        best = max(range(len(p)), key=p.__getitem__)
        assert row["call"] == ckpt.task["label_names"][best]
        assert float(row["probability"]) == pytest.approx(p[best], abs=1e-4)
        assert row["runner_up"] != row["call"]
        assert float(row["runner_up_probability"]) <= float(row["probability"])
        assert int(row["mutations"]) >= len(leaves.genotypes[i])  # C241T and kin count too
        assert row["model_version"].startswith("growformer ") and "weights" in row["model_version"]
        assert row["data_version"].endswith(leaves.tree_sha256[:12])
    assert rows[40]["call"] and "read the first 82 of 118 mutations" in rows[40]["qc_note"]
    for row in rows[41:]:
        assert row["qc_status"] == sc.QC_FAIL and row["call"] == "" and row["qc_note"]


def model_probabilities(ckpt, ids: list[list[int]]) -> list[list[float]]:
    """The model's class probabilities of each genome alone (no padding)."""
    with torch.no_grad(), eval_mode(ckpt.model):
        return [ckpt.model(torch.tensor([x])).logits.softmax(-1)[0].tolist() for x in ids]


def test_evaluate_genome_files_counts_what_it_cannot_score(
    trained, leaves, who, reference, tmp_path, capsys
):
    gen = torch.Generator().manual_seed(1)
    picked = torch.randperm(len(leaves.names), generator=gen)[:30].tolist()
    genomes = {
        leaves.names[i]: sc.damage(sc.genome_sequence(leaves.genotypes[i], reference), gen)
        for i in picked
    }
    genomes["mostly_n"] = "N" * 29_000 + reference[:500]
    genomes["unlabelled"] = reference
    labels = {leaves.names[i]: who[i] for i in picked} | {"mostly_n": "Other", "gone": "Delta"}
    fasta = write_genomes(tmp_path / "g.fasta", genomes)
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("id,label\n" + "".join(f"{k},{v}\n" for k, v in labels.items()))
    argv = ["evaluate", str(trained), "--data", str(fasta)]
    assert main([*argv, "--labels", str(csv_path)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 30 and result["genomes"] == 32
    assert result["qc_failed"] == 1 and result["qc_failed_by_reason"] == {"too many Ns": 1}
    assert result["genomes_without_label"] == 1 and result["labels_without_genome"] == 1
    assert 0 <= result["accuracy"] <= 1
    # Without labels the error says what to pass; a label the model never had is refused.
    assert main(argv) == 2
    assert "growformer assign" in capsys.readouterr().err
    csv_path.write_text(f"id,label\n{leaves.names[picked[0]]},Epsilon\n")
    assert main([*argv, "--labels", str(csv_path)]) == 2
    assert "'Epsilon'" in capsys.readouterr().err


def test_assign_errors(trained, tmp_path, capsys, sarscov2_dir, monkeypatch):
    genomes = write_genomes(tmp_path / "g.fasta", {"a": "ACGT" * 10})
    out = tmp_path / "calls.csv"
    out.write_text("kept\n")
    base = ["assign", str(trained), str(genomes), "--no-progress"]
    bad_ref = tmp_path / "ref.fasta"
    bad_ref.write_text(">r\n" + "A" * sc.GENOME_LENGTH + "\n")
    assert main([*base, "--out", str(out), "--reference", str(bad_ref)]) == 2
    assert "is not the genome the model was trained against" in capsys.readouterr().err
    assert out.read_text() == "kept\n"  # nothing written over
    assert main([*base, "--out", str(out), "--batch-size", "0"]) == 2
    assert "batch_size" in capsys.readouterr().err
    missing = tmp_path / "none.fasta"
    assert main(["assign", str(missing), "--checkpoint", str(trained), "--out", str(out)]) == 2
    assert str(missing) in capsys.readouterr().err
    # A model of another task cannot call genomes.
    ckpt = checkpoint.load(trained)
    record = {**ckpt.task, "info": {**ckpt.task["info"], "input": "spike"}}
    with pytest.raises(ConfigError, match="input 'mutations'"):
        genome_encoder(Tokenizer.from_json(ckpt.tokenizer_json), record)
    # The reference is looked for where it was, then in $GROWFORMER_SARSCOV2_DIR, then beside
    # the checkout.
    moved = {**ckpt.task, "info": {**ckpt.task["info"], "reference": str(tmp_path / "x.fa")}}
    tokenizer = Tokenizer.from_json(ckpt.tokenizer_json)
    monkeypatch.delenv("GROWFORMER_SARSCOV2_DIR", raising=False)
    with monkeypatch.context() as away:
        away.setattr(growformer.data.shared, "CHECKOUT_DATA", None)
        with pytest.raises(DataError, match="--reference"):
            genome_encoder(tokenizer, moved)
        away.setenv("GROWFORMER_SARSCOV2_DIR", str(sarscov2_dir))
        assert genome_encoder(tokenizer, moved).span == (269, 29_673)
    assert genome_encoder(tokenizer, moved).span == (269, 29_673)
