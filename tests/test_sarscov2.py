"""Tests of growformer.data.sarscov2: the pangoLEARN lineage tree, its task, user FASTA files."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

import growformer.data.shared
from growformer.cli import main
from growformer.data import Tokenizer, load_task
from growformer.data import sarscov2 as sc
from growformer.data.sarscov2.location import DEBIAN_DATA_DIR, locate_files
from growformer.errors import ConfigError, DataError

# The README of ../shared/data/sarscov2 states these leaf counts of the 2022-07-09 tree.
README_WHO_COUNTS = {
    "Other": 25_177,
    "Delta": 9_104,
    "Omicron": 6_193,
    "Gamma": 723,
    "Recombinant": 555,
    "Alpha": 310,
    "Beta": 151,
}
WUHAN_SPIKE_START = "MFVFLVLLPLVSSQCVNLT"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sarscov2-cache")


@pytest.fixture(scope="module")
def built(sarscov2_dir, cache_dir) -> tuple[sc.TreeLeaves, float]:
    """The tree decoded once for the module (into an empty cache), with the time it took."""
    start = time.perf_counter()
    leaves = sc.load_tree_leaves(
        sarscov2_dir / sc.TREE_FILE, sarscov2_dir / sc.REFERENCE_FILE, cache_dir
    )
    return leaves, time.perf_counter() - start


@pytest.fixture(scope="module")
def leaves(built) -> sc.TreeLeaves:
    return built[0]


@pytest.fixture(scope="module")
def genome(sarscov2_dir) -> str:
    return sc.read_reference(sarscov2_dir / sc.REFERENCE_FILE)


def spike_proteins(genotypes: list[tuple[sc.Mutation, ...]], genome: str) -> list[str]:
    """Each genotype's spike protein (built once per distinct genotype)."""
    built: dict[tuple[sc.Mutation, ...], str] = {}
    return [built.get(g) or built.setdefault(g, sc.spike_protein(g, genome)) for g in genotypes]


@pytest.fixture(scope="module")
def proteins(leaves, genome) -> list[str]:
    return spike_proteins(leaves.genotypes, genome)


@pytest.fixture(scope="module")
def who(sarscov2_dir, leaves) -> list[str]:
    aliases = sc.read_aliases(sarscov2_dir / sc.ALIAS_FILE)
    return [sc.who_label(sc.dealias(lineage, aliases)) for lineage in leaves.lineages]


@pytest.fixture(scope="module")
def variable_task(sarscov2_dir, cache_dir):
    options = {"cache_dir": cache_dir, "input": "spike", "sites": "variable"}
    return load_task("sarscov2", data_dir=sarscov2_dir, max_len=1000, options=options)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def raises_naming(*parts: object, fn, match: str | None = None) -> str:
    """Call fn, expect a one-line DataError naming every part; return the message."""
    with pytest.raises(DataError, match=match) as info:
        fn()
    message = str(info.value)
    for part in parts:
        assert str(part) in message, (part, message)
    assert "\n" not in message
    return message


# --- the tree ----------------------------------------------------------------------------------


def test_decoded_tree_matches_readme(built, who, proteins):
    leaves, seconds = built
    assert not leaves.from_cache
    assert seconds < 60, f"decoding took {seconds:.1f} s"
    assert len(leaves.names) == len(set(leaves.names)) == 42_213
    assert len(set(leaves.lineages)) == 1_813
    assert Counter(who) == README_WHO_COUNTS
    # Genome-wide, nearly every sample is its own genotype; the spike alone repeats a lot.
    assert len(set(leaves.genotypes)) == 42_208
    assert len(set(proteins)) == 5_469
    assert {len(p) for p in proteins} == {sc.SPIKE_LENGTH}
    sizes = [len(g) for g in leaves.genotypes]
    assert max(sizes) == 82 and 29 < sum(sizes) / len(sizes) < 30
    for genotype in leaves.genotypes:
        assert list(genotype) == sorted(genotype)
        assert all(1 <= p <= sc.GENOME_LENGTH and b in "ACGT" for p, b in genotype)


def test_reference_spike_translation(genome):
    spike = sc.spike_of_genome(genome)
    assert spike.startswith(WUHAN_SPIKE_START) and spike.endswith("VKLHYT")
    assert len(spike) == 1_273 and "*" not in spike
    # The terminal stop codon sits right after the 1,273 residues.
    end = sc.SPIKE_START - 1 + 3 * sc.SPIKE_LENGTH
    assert sc.translate(genome[end : end + 3]) == "*"


def test_known_lineage_mutations(leaves, who, genome, proteins):
    reference = sc.spike_of_genome(genome)
    assert (reference[451], reference[477], reference[680]) == ("L", "T", "P")
    # Delta's signature L452R, T478K, P681R; Omicron's N501Y and P681H.
    delta = [p for p, w in zip(proteins, who, strict=True) if w == "Delta"]
    omicron = [p for p, w in zip(proteins, who, strict=True) if w == "Omicron"]
    assert sum((p[451], p[477], p[680]) == ("R", "K", "R") for p in delta) > 0.99 * len(delta)
    assert sum((p[500], p[680]) == ("Y", "H") for p in omicron) > 0.99 * len(omicron)
    # The root (lineage A) has the reference spike, and so do many early A.* leaves.
    assert any(
        lin.startswith("A.") and p == reference
        for p, lin in zip(proteins, leaves.lineages, strict=True)
    )
    # Genome-wide: C3037T, C14408T and D614G (A23403G) came with B.1, so nearly every Delta
    # and Omicron genome carries all three. The tree masks the genome's ends: no mutation
    # before 269 (not even B.1's C241T) or after 29,673.
    assert sc.mutation_name((23_403, "G"), genome) == "A23403G"
    assert sc.mutated_span(leaves.genotypes) == (269, 29_673)
    later = [
        set(g) for g, w in zip(leaves.genotypes, who, strict=True) if w in ("Delta", "Omicron")
    ]
    b1 = {(3_037, "T"), (14_408, "T"), (23_403, "G")}
    assert sum(b1 <= g for g in later) > 0.99 * len(later)


def test_cache_hit_and_invalidation(sarscov2_dir, cache_dir, leaves, genome, tmp_path):
    tree, reference = sarscov2_dir / sc.TREE_FILE, sarscov2_dir / sc.REFERENCE_FILE
    start = time.perf_counter()
    again = sc.load_tree_leaves(tree, reference, cache_dir)
    assert time.perf_counter() - start < 5
    assert again.from_cache
    assert (again.names, again.lineages, again.genotypes, again.tree_sha256) == (
        leaves.names,
        leaves.lineages,
        leaves.genotypes,
        leaves.tree_sha256,
    )
    assert not list(cache_dir.glob("*.tmp"))
    # A different tree file (an unknown field appended, which decoders skip) is not served
    # from the cache of the original.
    other_tree = tmp_path / "tree.pb"
    other_tree.write_bytes(tree.read_bytes() + bytes([15 << 3, 1]))
    assert not sc.load_tree_leaves(other_tree, reference, cache_dir).from_cache
    # Nor is a different reference: one substitution in codon 1 (ATG -> CTG) shows everywhere.
    i = sc.SPIKE_START - 1
    other_genome = f"{genome[:i]}C{genome[i + 1 :]}"
    other_reference = write(tmp_path / "ref.fasta", f">ref\n{other_genome}\n")
    changed = sc.load_tree_leaves(tree, other_reference, cache_dir)
    assert not changed.from_cache
    starts = Counter(p[0] for p in spike_proteins(changed.genotypes, other_genome))
    assert starts == {"L": len(leaves.names)}
    assert len(list(cache_dir.glob("leaves-*.json.gz"))) == 3


def test_corrupt_cache_is_rebuilt(sarscov2_dir, cache_dir, tmp_path):
    tree, reference = sarscov2_dir / sc.TREE_FILE, sarscov2_dir / sc.REFERENCE_FILE
    sc.load_tree_leaves(tree, reference, cache_dir)  # ensure the entry exists
    local = tmp_path / "cache"
    local.mkdir()
    for path in cache_dir.glob("leaves-*.json.gz"):
        (local / path.name).write_bytes(path.read_bytes()[:1000])  # as if cut off
    first = sc.load_tree_leaves(tree, reference, local)
    assert not first.from_cache and len(first.names) == 42_213
    assert sc.load_tree_leaves(tree, reference, local).from_cache


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("GROWFORMER_CACHE", str(tmp_path))
    assert sc.default_cache_dir() == tmp_path / "sarscov2"
    monkeypatch.delenv("GROWFORMER_CACHE")
    assert sc.default_cache_dir() == Path.home() / ".cache" / "growformer" / "sarscov2"


# --- protobuf and Newick decoding on a constructed tree ---------------------------------------


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def field(number: int, payload: bytes | int) -> bytes:
    if isinstance(payload, int):
        return varint(number << 3) + varint(payload)
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def mutation(position: int, new_base: str, *, packed: bool = True) -> bytes:
    code = "ACGT".index(new_base)
    # par_nuc and ref_nuc are deliberately wrong: decoding must not use them.
    body = field(1, position) + field(2, 3) + field(3, 3)
    body += field(4, varint(code)) if packed else field(4, code)
    return field(1, body + field(5, b"NC_045512v2"))


def test_constructed_tree(genome, tmp_path):
    newick = "((s1:1,s2:0.5)n1:1,condensed_1,(deep)):0;"
    # Pre-order: root, n1, s1, s2, condensed_1, (unnamed), deep.
    at = sc.SPIKE_START  # codon 1 (ATG, M); codon 2 (TTT, F) starts at +3
    node_mutations = [
        [mutation(100, "G")],  # outside the spike: in every genotype
        [mutation(at, "C", packed=False)],  # M1L, unpacked mut_nuc
        [],
        [mutation(at + 3, "G"), mutation(at + 5, "A")],  # F2V, then GTA is still V
        [],
        [],
        [mutation(at + 2, "A")],  # ATA: M1I
    ]
    annotations = ["A", "B.1", "", "", "", "C.1", ""]
    data = field(1, newick.encode())
    data += b"".join(field(2, b"".join(m)) for m in node_mutations)
    data += field(3, field(1, b"condensed_1") + field(2, b"x") + field(2, b"y"))
    data += b"".join(field(4, field(1, a.encode())) for a in annotations)
    path = tmp_path / "tree.pb"
    path.write_bytes(data)
    reference = write(tmp_path / "ref.fasta", f">MN908947.3\n{genome}\n")
    leaves = sc.decode_tree(path, reference)
    assert leaves.names == ["s1", "s2", "x", "y", "deep"]
    assert leaves.lineages == ["B.1", "B.1", "A", "A", "C.1"]
    proteins = spike_proteins(leaves.genotypes, genome)
    assert [p[:3] for p in proteins] == ["LFV", "LVV", "MFV", "MFV", "IFV"]
    assert {p[3:] for p in proteins} == {sc.spike_of_genome(genome)[3:]}
    # Genome-wide: the root's own change and lineage A's root changes, then each path's;
    # the second change of codon 2 overwrites nothing (another site).
    root = {(100, "G"), *sc.ROOT_MUTATIONS}
    assert [set(g) - root for g in leaves.genotypes] == [
        {(at, "C")},
        {(at, "C"), (at + 3, "G"), (at + 5, "A")},
        set(),
        set(),
        {(at + 2, "A")},
    ]
    assert leaves.genotypes[2] is leaves.genotypes[3]  # a condensed node's samples share one


def test_tree_errors(genome, tmp_path):
    reference = write(tmp_path / "ref.fasta", f">r\n{genome}\n")
    truncated = tmp_path / "truncated.pb"
    truncated.write_bytes(field(1, b"(a,b);")[:-2])
    raises_naming(truncated, fn=lambda: sc.decode_tree(truncated, reference), match="not a valid")
    short = tmp_path / "short.pb"
    short.write_bytes(field(1, b"(a,b);") + field(2, b"") + field(4, b""))
    raises_naming(short, "3 nodes", fn=lambda: sc.decode_tree(short, reference))
    bad_reference = write(tmp_path / "bad.fasta", ">r\nACGT\n")
    raises_naming(bad_reference, "29,903", fn=lambda: sc.read_reference(bad_reference))


def test_parse_newick():
    parents, names = sc.parse_newick("((a:1,b)c:2,,(d));")
    assert names == ["", "c", "a", "b", "", "", "d"]
    assert parents == [-1, 0, 1, 1, 0, 0, 5]
    # Iterative: a path far deeper than Python's recursion limit.
    depth = 100_000
    parents, names = sc.parse_newick("(" * depth + "leaf" + ")" * depth + ";")
    assert len(names) == depth + 1 and names[-1] == "leaf" and parents[-1] == depth - 1
    for bad in ("((a);", "(a));", "(a)(b);", "a,b;"):
        with pytest.raises(ValueError):
            sc.parse_newick(bad)


# --- labels -------------------------------------------------------------------------------------


def test_dealias_and_who_labels(sarscov2_dir):
    aliases = sc.read_aliases(sarscov2_dir / sc.ALIAS_FILE)
    expected = {
        "AY.4.2": ("B.1.617.2.4.2", "Delta"),
        "P.1.1": ("B.1.1.28.1.1", "Gamma"),
        "P.2": ("B.1.1.28.2", "Other"),
        "Q.1": ("B.1.1.7.1", "Alpha"),
        "BA.5.2": ("B.1.1.529.5.2", "Omicron"),
        "XBB.1": ("XBB.1", "Recombinant"),
        "B.1.351.3": ("B.1.351.3", "Beta"),
        "B.1.1.70": ("B.1.1.70", "Other"),  # not B.1.1.7
        "B.1.3510": ("B.1.3510", "Other"),  # not B.1.351
        "A.2": ("A.2", "Other"),
    }
    for lineage, (full, label) in expected.items():
        assert sc.dealias(lineage, aliases) == full
        assert sc.who_label(full) == label
    with pytest.raises(DataError, match="'ZZZ' is not in the alias table"):
        sc.dealias("ZZZ.1", aliases)
    with pytest.raises(DataError, match="cycle"):
        sc.dealias("C.1", {"C": "D.1", "D": "C.1"})


def test_top_lineage_labels():
    labels, names = sc.top_lineage_labels(["b", "a", "b", "c", "a", "b", "d"], 2)
    assert names == ["b", "a", sc.OTHER]
    assert labels == ["b", "a", "b", sc.OTHER, "a", "b", sc.OTHER]
    assert sc.top_lineage_labels(["a", "b"], 5)[1] == ["a", "b"]


# --- split --------------------------------------------------------------------------------------


def test_split_keeps_identical_sequences_together(proteins, who):
    splits = {}
    for dedup in (True, False):
        split = sc.split_by_sequence(proteins, who, test_fraction=0.2, seed=0, dedup=dedup)
        splits[dedup] = split
        train, test = {s for s, _ in split.train}, {s for s, _ in split.test}
        assert not train & test
        assert len(train | test) == 5_469
        info = split.info
        assert info["train_samples"] + info["test_samples"] == 42_213
        assert info["train_sequences"] == len(train) and info["test_sequences"] == len(test)
        assert (info["train_examples"], info["test_examples"]) == (
            len(split.train),
            len(split.test),
        )
        # Stratified: even Beta (151 samples) is on both sides.
        assert {y for _, y in split.test} == set(README_WHO_COUNTS)
    assert len(set(splits[True].train)) == len(splits[True].train)
    assert Counter(y for _, y in splits[False].train + splits[False].test) == README_WHO_COUNTS
    labels_of = Counter(s for s, _ in set(zip(proteins, who, strict=True)))
    conflicting = sum(n > 1 for n in labels_of.values())
    assert splits[True].info["label_conflicting_sequences"] == conflicting
    assert len(splits[True].train) + len(splits[True].test) == 5_469 + conflicting
    again = sc.split_by_sequence(proteins, who, test_fraction=0.2, seed=0, dedup=True)
    other = sc.split_by_sequence(proteins, who, test_fraction=0.2, seed=1, dedup=True)
    assert again.test == splits[True].test and other.test != again.test


def test_split_small_classes():
    sequences = ["AA", "AA", "AC", "CC", "CA", "GG"]
    labels = ["x", "x", "x", "y", "y", "z"]
    split = sc.split_by_sequence(sequences, labels, test_fraction=0.1, seed=0, dedup=True)
    # Each class with two distinct sequences puts one on each side; a single one trains.
    assert sorted(y for _, y in split.test) == ["x", "y"]
    assert sorted(y for _, y in split.train) == ["x", "y", "z"]
    # A sequence with two labels gives one example per label, both on the same side.
    split = sc.split_by_sequence(
        ["AA", "AA", "AA", "CC", "GG"], list("xyyxy"), test_fraction=0.5, seed=0, dedup=True
    )
    assert split.info["label_conflicting_sequences"] == 1
    sides = [{y for s, y in examples if s == "AA"} for examples in (split.train, split.test)]
    assert {"x", "y"} in sides and set() in sides


# --- the task -----------------------------------------------------------------------------------


def test_task_variable_sites(variable_task, proteins, who, genome):
    task = variable_task
    assert task.kind == "classification" and task.label_names == list(sc.WHO_LABELS)
    info = task.info
    assert (len(task.train), len(task.val)) == (info["train_examples"], info["test_examples"])
    assert info["sites"] == "variable"
    sites = [i - 1 for i in info["variable_sites"]]
    assert info["sequence_length"] == len(sites) and task.max_len == len(sites) + 1
    assert {len(ids) for ids in task.train.ids + task.val.ids} == {len(sites) + 1}
    # The same split as the task's (seed 0, fraction 0.2); the sites are exactly where some
    # training sequence differs from the reference, chosen without the test sequences.
    split = sc.split_by_sequence(proteins, who, test_fraction=0.2, seed=0, dedup=True)
    reference = sc.spike_of_genome(genome)
    train = sorted({s for s, _ in split.train})
    assert sites == [i for i in range(len(reference)) if any(p[i] != reference[i] for p in train)]
    assert len(sites) < len(sc.variable_sites(proteins, reference))
    expected = task.tokenizer.encode_words(
        [sc.spike_tokens(s, sites, 1) for s, _ in split.train], add_cls=True
    )
    assert task.train.ids == expected
    assert task.tokenizer.tokens(task.train.ids[0][1:]) == list(
        sc.spike_tokens(split.train[0][0], sites, 1)
    )
    assert 0 < info["test_sequences_matching_train"] < info["test_sequences"]


def test_min_site_count_keeps_sites_shared_by_enough_sequences(genome):
    reference = sc.spike_of_genome(genome)
    a = mutate_protein(reference, "L5F")
    b = mutate_protein(reference, "L5F", "S13I")
    c = mutate_protein(reference, "L5F", "S13I", "N501Y")
    assert sc.variable_sites([a, b, c, c], reference) == [4, 12, 500]
    # Copies count once: N501Y is in one distinct sequence.
    assert sc.variable_sites([a, b, c, c], reference, min_count=2) == [4, 12]
    assert sc.variable_sites([a, b, c], reference, min_count=3) == [4]


def test_task_split_and_labels(sarscov2_dir, cache_dir, leaves, who, proteins):
    options = {"cache_dir": cache_dir, "input": "spike"}
    with pytest.raises(ConfigError, match=r"max_len 1274 .*sites='variable'"):
        load_task("sarscov2", data_dir=sarscov2_dir, options=options)
    task = load_task("sarscov2", data_dir=sarscov2_dir, max_len=1274, options=options)
    assert task.max_len == 1274 and task.vocab_size == 4 + len(sc.PROTEIN_ALPHABET)
    # All sites kept and k=1: id rows identify proteins, so none may be on both sides.
    train, test = {tuple(x) for x in task.train.ids}, {tuple(x) for x in task.val.ids}
    assert not train & test
    assert task.info["test_sequences_matching_train"] == 0
    assert set(task.train.labels.tolist()) == set(task.val.labels.tolist()) == set(range(7))
    labels_of = Counter(p for p, _ in set(zip(proteins, who, strict=True)))
    conflicting = sum(n > 1 for n in labels_of.values())
    assert task.info["label_conflicting_sequences"] == conflicting > 0
    assert len(task.train) + len(task.val) == 5_469 + conflicting
    full = load_task(
        "sarscov2",
        data_dir=sarscov2_dir,
        max_len=1000,
        options={**options, "dedup": "false", "sites": "variable"},
    )
    assert len(full.train) + len(full.val) == 42_213
    assert len(full.train) == full.info["train_samples"]
    counts = torch.bincount(torch.cat([full.train.labels, full.val.labels])).tolist()
    assert dict(zip(full.label_names, counts, strict=True)) == README_WHO_COUNTS
    lineage = load_task(
        "sarscov2",
        data_dir=sarscov2_dir,
        max_len=1000,
        options={**options, "label": "lineage", "top_lineages": 5, "sites": "variable"},
    )
    top = [name for name, _ in Counter(leaves.lineages).most_common(5)]
    assert lineage.label_names == [*top, sc.OTHER]


def test_task_kmers(sarscov2_dir, cache_dir):
    options = {"cache_dir": cache_dir, "input": "spike", "sites": "variable", "kmer": 3}
    task = load_task("sarscov2", data_dir=sarscov2_dir, max_len=1000, options=options)
    n_sites = len(task.info["variable_sites"])
    assert task.max_len == n_sites - 3 + 2
    unk = 3
    # The vocabulary is the training k-mers: each is used there, no training token is unknown.
    assert {i for ids in task.train.ids for i in ids[1:]} == set(range(4, task.vocab_size))
    tokens = sc.spike_tokens("MFVWW", None, 3)
    assert tokens == ["MFV", "FVW", "VWW"]
    assert sc.spike_tokens("MFVWW", [0, 2, 4], 2) == ["MV", "VW"]
    words = [tokens, ["ZZZ"]]
    ids = task.tokenizer.encode_words(words, add_cls=True)
    assert ids == task.tokenizer.encode([" ".join(w) for w in words], add_cls=True, max_len=None)
    assert ids[1] == [1, unk]


def test_encode_words_needs_word_level():
    with pytest.raises(ValueError, match="word-level"):
        Tokenizer.train(["MFVFLV MFVW"], 300).encode_words([["MFV"]], add_cls=True)


def test_missing_files_say_what_to_pass(sarscov2_dir, cache_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("GROWFORMER_SARSCOV2_DIR", raising=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    raises_naming(
        empty / sc.TREE_FILE, "data_dir", fn=lambda: load_task("sarscov2", data_dir=empty)
    )
    only_tree = tmp_path / "only-tree"
    only_tree.mkdir()
    (only_tree / sc.TREE_FILE).symlink_to(sarscov2_dir / sc.TREE_FILE)  # like the Debian dir
    raises_naming(
        only_tree / sc.REFERENCE_FILE,
        "reference=PATH",
        fn=lambda: load_task("sarscov2", data_dir=only_tree),
    )
    reference = sarscov2_dir / sc.REFERENCE_FILE
    options = {"cache_dir": cache_dir, "reference": reference, "sites": "variable"}
    raises_naming(
        only_tree / sc.ALIAS_FILE,
        "alias_key=PATH",
        "label='lineage'",
        fn=lambda: load_task("sarscov2", data_dir=only_tree, options=options),
    )
    monkeypatch.setenv("GROWFORMER_SARSCOV2_DIR", str(only_tree))
    task = load_task(
        "sarscov2", max_len=1000, options={**options, "alias_key": sarscov2_dir / sc.ALIAS_FILE}
    )
    assert task.info["source"] == str(only_tree / sc.TREE_FILE)
    lineage = load_task("sarscov2", max_len=1000, options={**options, "label": "lineage"})
    assert "alias_key" not in lineage.info


def test_files_default_to_the_data_beside_the_checkout(sarscov2_dir, monkeypatch):
    monkeypatch.delenv("GROWFORMER_SARSCOV2_DIR", raising=False)
    files = locate_files(None, None, None, need_aliases=True)
    assert files.tree == (sarscov2_dir / sc.TREE_FILE).resolve()
    assert files.alias_key == (sarscov2_dir / sc.ALIAS_FILE).resolve()
    monkeypatch.setattr(growformer.data.shared, "CHECKOUT_DATA", None)
    raises_naming(
        DEBIAN_DATA_DIR / sc.TREE_FILE,
        "default directory",
        "python3-pangolearn",
        fn=lambda: locate_files(None, None, None, need_aliases=False),
    )


def test_bad_options(sarscov2_dir, cache_dir):
    for options, match in (
        ({"label": "pango"}, "label"),
        ({"sites": "some"}, "sites"),
        ({"kmer": 0}, "kmer"),
        ({"dedup": "yes"}, "dedup"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"input": "genome"}, "input must be one of mutations, spike"),
        ({"split": "random"}, "split must be one of genotype, lineage, future"),
        ({"label": "lineage", "split": "future"}, "label 'lineage' cannot predict"),
        ({"min_count": 0}, "min_count"),
        ({"augment_copies": -1}, "augment_copies"),
        ({"augment_mask": 1.5}, "augment_mask"),
        ({"top_lineages": -1}, "top_lineages"),
    ):
        with pytest.raises(ConfigError, match=match):
            load_task(
                "sarscov2",
                data_dir=sarscov2_dir,
                max_len=1274,
                options={"cache_dir": cache_dir, **options},
            )
    with pytest.raises(ConfigError, match="labels file"):
        load_task("sarscov2", data_dir=sarscov2_dir, labels_file="x.csv")


# --- user FASTA files ---------------------------------------------------------------------------


def mutate_protein(protein: str, *changes: str) -> str:
    """Apply changes named like "L452R" (1-based) to a protein."""
    residues = list(protein)
    for change in changes:
        old, position, new = change[0], int(change[1:-1]), change[-1]
        assert residues[position - 1] == old, change
        residues[position - 1] = new
    return "".join(residues)


def fasta(records: dict[str, str], width: int = 60) -> str:
    """FASTA text with sequences wrapped at `width` characters."""
    return "".join(
        f">{name} description\n"
        + "".join(seq[i : i + width] + "\n" for i in range(0, len(seq), width))
        for name, seq in records.items()
    )


def labels_csv(labels: dict[str, str]) -> str:
    return "id,label\n" + "".join(f"{i},{y}\n" for i, y in labels.items())


@pytest.fixture(scope="module")
def spike(genome) -> str:
    return sc.spike_of_genome(genome)


def test_read_protein_fasta(spike, tmp_path):
    records = {
        "wuhan": spike + "*",  # a terminal stop is dropped
        "delta": mutate_protein(spike, "L452R", "T478K", "P681R").lower(),
        "unknown": mutate_protein(spike, "N501X"),
    }
    fa = write(tmp_path / "s.fasta", fasta(records))
    csv = write(
        tmp_path / "l.csv", labels_csv({"delta": "Delta", "wuhan": "Other", "unknown": "?"})
    )
    result = sc.read_fasta_labels(fa, csv)
    assert result.kind == "protein" and result.dropped == []
    assert result.ids == ["wuhan", "delta", "unknown"]
    assert result.labels == ["Other", "Delta", "?"]
    assert result.sequences[0] == spike
    assert result.sequences[1][451] == "R" and result.sequences[2][500] == "X"


def test_read_genome_fasta(genome, spike, tmp_path):
    def substitute(g: str, position: int, base: str) -> str:
        return g[: position - 1] + base + g[position:]

    # L452R is T22917G (CTG -> CGG); an N in codon 501 makes it unknown; gaps are allowed.
    delta = substitute(genome, 22_917, "G")
    masked = substitute(substitute(genome, 23_063, "N"), 100, "-")
    records = {"ref": genome.lower(), "delta": delta, "masked": masked}
    fa = write(tmp_path / "g.fasta", fasta(records, width=70))
    csv = write(tmp_path / "l.csv", labels_csv({"ref": "a", "delta": "b", "masked": "a"}))
    result = sc.read_fasta_labels(fa, csv)
    assert result.kind == "genome"
    assert result.sequences[0] == spike
    assert result.sequences[1] == mutate_protein(spike, "L452R")
    assert result.sequences[2] == mutate_protein(spike, "N501X")


def test_fasta_errors_name_file_record_and_line(genome, spike, tmp_path):
    good_csv = write(tmp_path / "l.csv", labels_csv({"a": "x", "b": "y", "c": "x"}))
    cases = [
        # (FASTA text, expected words in the message)
        (f">a\n{spike[:60]}\nMFJ\n>b\n{spike}\n", ["'a'", "line 3", "'J'"]),
        (f">a\n{spike}\n>b\n{genome[:-1]}\n", ["'b'", "line 3", "29,902"]),
        (f">a\n{spike}\n>b\n{genome[:100]}E{genome[101:]}\n", ["'b'", "line 4", "'E'"]),
        (f">a\n{spike}\n>b\n{genome}\n", ["'b'", "line 3", "genome", "protein"]),
        (f">a\n{spike}\n>b\n{spike}\n>a\n{spike}\n", ["'a'", "line 5", "line 1"]),
        (f">a\n{spike}\n>zzz\n{spike}\n", ["'zzz'", "line 3", "no label", str(good_csv)]),
        (f">a\n{spike}\n>b\n\n>c\n{spike}\n", ["'b'", "line 3", "no sequence"]),
        (f"{spike}\n>a\n{spike}\n", ["line 1", "before the first '>'"]),
        ("\n\n", ["empty"]),
    ]
    for i, (text, words) in enumerate(cases):
        fa = write(tmp_path / f"case{i}.fasta", text)
        raises_naming(fa, *words, fn=lambda fa=fa: sc.read_fasta_labels(fa, good_csv))
    # Labels whose ids have no record: reported with their count and the first one.
    fa = write(tmp_path / "one.fasta", f">b\n{spike}\n")
    raises_naming(
        good_csv, fa, "2 id(s)", "'a' on line 2", fn=lambda: sc.read_fasta_labels(fa, good_csv)
    )
    fa = write(tmp_path / "ok.fasta", f">a\n{spike}\n")
    for text, words in (
        ("a,x\n", ["line 1", "'id' and 'label'"]),
        ("", ["empty"]),
        ("id,label\na,x\na,y\n", ["line 3", "repeats id 'a' of line 2"]),
        ("id,label\na,x,extra\n", ["line 2", "3 field(s)"]),
        ("id,label\na,\n", ["line 2", "empty id or label"]),
    ):
        csv = write(tmp_path / "bad.csv", text)
        raises_naming(csv, *words, fn=lambda csv=csv: sc.read_fasta_labels(fa, csv))


def test_fasta_skip_bad_counts_what_it_drops(spike, tmp_path):
    text = (
        f">a\n{spike}\n"
        f">bad\n{spike[:10]}J\n"  # bad character
        f">a\n{spike}\n"  # repeated id
        f">nolabel\n{spike}\n"
        f">b\n{mutate_protein(spike, 'D614G')}\n"
    )
    fa = write(tmp_path / "s.fasta", text)
    csv = write(
        tmp_path / "l.csv",
        "id,label\na,x\nbad,x\nb,y\norphan,x\norphan2,y\nb,x\nshort\n",
    )
    result = sc.read_fasta_labels(fa, csv, skip_bad=True)
    assert result.ids == ["a", "b"] and result.labels == ["x", "y"]
    # CSV: the repeated 'b' and the one-field row; FASTA: bad character, repeated id, no
    # label; and one message for the two labels without a record.
    assert len(result.dropped) == 6, result.dropped
    assert any("2 id(s) with no record" in m for m in result.dropped)


def test_fasta_task(spike, tmp_path):
    changes = ["L5F", "S13I", "L18F", "T20N", "P26S", "D80A", "D138Y", "R190S", "K417N"]
    records, labels = {}, {}
    for i, change in enumerate(changes):
        # Label by the change's position, plus a copy of each sequence under another id.
        label = "early" if i < 4 else "late"
        for copy in range(2):
            records[f"s{i}_{copy}"] = mutate_protein(spike, change)
            labels[f"s{i}_{copy}"] = label
    records["extra"] = spike + "X"  # one residue longer
    labels["extra"] = "late"
    fa = write(tmp_path / "s.fasta", fasta(records))
    csv = write(tmp_path / "l.csv", labels_csv(labels))
    task = load_task("fasta", data_file=fa, labels_file=csv, max_len=2000, seed=3)
    assert task.label_names == ["early", "late"] and task.max_len == 1275
    assert task.info["train_samples"] + task.info["test_samples"] == len(records)
    # One example per distinct sequence, and every class on both sides.
    assert len(task.train) + len(task.val) == len(changes) + 1
    assert set(task.train.labels.tolist()) == set(task.val.labels.tolist()) == {0, 1}
    assert not {tuple(x) for x in task.train.ids} & {tuple(x) for x in task.val.ids}
    options = {"sites": "variable"}
    with pytest.raises(ConfigError, match="one length"):
        load_task("fasta", data_file=fa, labels_file=csv, max_len=2000, options=options)
    del records["extra"], labels["extra"]
    fa = write(tmp_path / "s.fasta", fasta(records) + f">bad\n{spike}J\n")
    csv = write(tmp_path / "l.csv", labels_csv(labels))
    with pytest.raises(DataError, match="'J'"):
        load_task("fasta", data_file=fa, labels_file=csv, max_len=2000, options=options)
    task = load_task(
        "fasta",
        data_file=fa,
        labels_file=csv,
        options={**options, "skip_bad": "true", "kmer": 2},
    )
    assert task.info["dropped"] == 1 and "'J'" in task.info["dropped_examples"][0]
    # Each training sequence has its own change, so the sites are their positions; 2-mers
    # over n sites are n - 1 tokens, plus [CLS].
    n_train = task.info["train_sequences"]
    assert len(task.info["variable_sites"]) == n_train == task.max_len
    with pytest.raises(ConfigError, match="--labels CSV"):
        load_task("fasta", data_file=fa)


def test_cli_trains_and_evaluates_on_fasta(spike, tmp_path, capsys):
    # Two classes told apart by a residue at one of a few sites; 40 distinct sequences.
    sites = ["L5F", "S13I", "L18F", "T20N", "P26S", "D80A", "D138Y", "R190S", "K417N", "N501Y"]
    records, labels = {}, {}
    for i in range(40):
        changes = [sites[j] for j in range(len(sites)) if (i >> j) & 1 or j == i % len(sites)]
        label = "N501Y" if "N501Y" in changes else "other"
        records[f"r{i}"] = mutate_protein(spike, *changes)
        labels[f"r{i}"] = label
    fa = write(tmp_path / "train.fasta", fasta(records))
    csv = write(tmp_path / "train.csv", labels_csv(labels))
    config = {
        "model": {"d_model": 32, "n_layers": 1, "heads": 2, "head_dim": 8, "ffn_dim": 64},
        "task_options": {"sites": "variable"},
        "batch_size": 8,
        "steps": 6,
        "warmup_steps": 1,
        "device": "cpu",
    }
    cfg = write(tmp_path / "c.json", json.dumps(config))
    out = tmp_path / "run"
    argv = ["train", "--config", str(cfg), "--data", str(fa), "--labels", str(csv)]
    assert main([*argv, "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "fasta" and "val_macro_f1" in summary["metrics"]
    capsys.readouterr()

    evaluate = ["evaluate", str(out), "--data", str(fa)]
    assert main([*evaluate, "--labels", str(csv)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 40 and 0 <= result["accuracy"] <= 1 and 0 <= result["macro_f1"] <= 1
    # Errors: no labels for a spike model; a label the model never saw.
    assert main(evaluate) == 2
    assert "--labels" in capsys.readouterr().err
    bad = write(tmp_path / "bad.csv", labels_csv({**labels, "r0": "Delta"}))
    assert main([*evaluate, "--labels", str(bad)]) == 2
    assert "'Delta'" in capsys.readouterr().err
