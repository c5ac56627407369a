"""Tests of reading a lab's SARS-CoV-2 genomes into calls: unaligned consensus FASTA (aligned
with minimap2), VCF, Nextclade tables, and the entry point that tells them apart."""

from __future__ import annotations

import gzip
import random
import sys
from pathlib import Path

import pytest

from growformer.data import sarscov2 as sc
from growformer.data.sarscov2.mutations import outside_spans
from growformer.errors import ConfigError, DataError

APPLIED = ["C241T", "C3037T", "C14408T", "A23403G", "G28881A"]
HIDDEN = [(30, "C"), (15_100, "T"), (25_000, "A")]  # substituted, then trimmed, N or ambiguous
TRIM_5, TRIM_3 = 54, 67
N_RUN = (15_001, 15_300)
LONG_N_RUN = (12_001, 17_000)  # a run of failed amplicons; splits some aligners' alignment
AMBIGUOUS = {6_000: "R", 7_000: "Y", 25_000: "K"}
DELETION = (21_765, 21_773)  # 9 nt; no other placement deletes the same bases


def true_masked(n_run: tuple[int, int]) -> tuple[tuple[int, int], ...]:
    """The spans a damaged genome with this N run did not read."""
    return (
        (1, TRIM_5),
        (6_000, 6_000),
        (7_000, 7_000),
        n_run,
        (25_000, 25_000),
        (sc.GENOME_LENGTH - TRIM_3 + 1, sc.GENOME_LENGTH),
    )


@pytest.fixture(scope="module")
def reference(sarscov2_dir) -> str:
    return sc.read_reference(sarscov2_dir / "MN908947.3.fasta")


@pytest.fixture(scope="module")
def aligner(reference) -> sc.Aligner:
    pytest.importorskip("mappy")
    return sc.Aligner(reference)


def damaged_genome(
    reference: str, n_run: tuple[int, int] = N_RUN
) -> tuple[str, tuple[tuple[int, str], ...]]:
    """A consensus genome as a lab has it, and the substitutions applied to it."""
    genome = list(reference)
    applied = [sc.parse_mutation(name, reference) for name in APPLIED] + HIDDEN
    for position, base in applied:
        genome[position - 1] = base
    genome[n_run[0] - 1 : n_run[1]] = "N" * (n_run[1] - n_run[0] + 1)
    for position, code in AMBIGUOUS.items():
        genome[position - 1] = code
    del genome[DELETION[0] - 1 : DELETION[1]]
    text = "".join(genome)[TRIM_5:-TRIM_3].lower()
    return text, tuple(sorted(applied))


def fasta(records: list[tuple[str, str]]) -> str:
    """FASTA text, sequences wrapped at 60 as sequencing pipelines write them."""
    return "".join(
        (f">{name} some description\n" if name else ">\n")
        + "".join(seq[i : i + 60] + "\n" for i in range(0, len(seq), 60))
        for name, seq in records
    )


def write(path: Path, text: str, compress: bool) -> Path:
    path.write_bytes(gzip.compress(text.encode()) if compress else text.encode())
    return path


@pytest.mark.parametrize(
    ("filename", "compress", "n_run"),
    [
        ("genomes.fasta", False, N_RUN),
        ("genomes.fasta.gz", True, N_RUN),
        ("genomes.fa", True, N_RUN),
        ("genomes.fasta", False, LONG_N_RUN),
    ],
)
def test_damaged_genome_is_recovered_exactly(
    tmp_path, reference, aligner, filename, compress, n_run
):
    text, applied = damaged_genome(reference, n_run)
    path = write(tmp_path / filename, fasta([("lab/sample-1", text)]), compress)
    [call] = list(sc.read_genomes(path, aligner, workers=2))
    assert call.name == "lab/sample-1"
    assert call.qc_status == sc.QC_PASS, call.qc_note
    assert call.masked == true_masked(n_run)
    assert call.substitutions == outside_spans(applied, true_masked(n_run))
    assert len(call.substitutions) == len(APPLIED) - (n_run == LONG_N_RUN)  # C14408T is in it
    assert call.deletions == (DELETION,)


def test_qc_failures_have_reasons_and_do_not_stop_the_file(tmp_path, reference, aligner):
    rng = random.Random(0)
    good, _ = damaged_genome(reference)
    mostly_n = reference[:12_000] + "N" * 17_903
    records = [
        ("fragment", reference[10_000:15_000]),
        ("mostly-n", mostly_n),
        ("not-sars", "".join(rng.choice("ACGT") for _ in range(29_000))),
        ("bad-chars", reference[:10_000] + "J12" + reference[10_000:]),
        ("empty", ""),
        ("", reference),
        ("fragment", reference),
        ("good", good),
    ]
    calls = list(sc.read_genomes(write(tmp_path / "mixed.fa", fasta(records), False), aligner))
    assert [c.name for c in calls] == [name for name, _ in records]
    reasons = {c.name or "<no name>": c.qc_note for c in calls if c.qc_status == sc.QC_FAIL}
    assert reasons.keys() == {"fragment", "mostly-n", "not-sars", "bad-chars", "empty", "<no name>"}
    assert "too short: 5,000 unambiguous bases" in calls[0].qc_note
    assert "too many Ns: 60%" in reasons["mostly-n"]
    assert "does not align" in reasons["not-sars"]
    assert "'1', '2', 'J'" in reasons["bad-chars"]
    assert "has no sequence" in reasons["empty"]
    assert "no name" in reasons["<no name>"]
    assert calls[6].qc_note.startswith("line ") and "repeats the name" in calls[6].qc_note
    assert all(c.qc_note.startswith("line ") for c in calls if c.qc_status == sc.QC_FAIL)
    assert calls[-1].qc_status == sc.QC_PASS
    assert [sc.mutation_name(m, reference) for m in calls[-1].substitutions] == APPLIED


def test_reverse_complement_and_reference_genome(reference, aligner):
    text, _ = damaged_genome(reference)
    reverse = text.upper()[::-1].translate(str.maketrans("ACGTRYKN", "TGCAYRMN"))
    forward = sc.call_genome("fw", text, aligner)
    backward = sc.call_genome("rc", reverse, aligner)
    assert backward.substitutions == forward.substitutions
    assert backward.deletions == forward.deletions
    assert "reverse complement" in backward.qc_note
    plain = sc.call_genome("ref", reference, aligner)
    assert (plain.substitutions, plain.masked, plain.deletions) == ((), (), ())


def test_aligner_is_built_once_and_reused(tmp_path, reference, monkeypatch):
    mappy = pytest.importorskip("mappy")
    built = []
    real = mappy.Aligner
    monkeypatch.setattr(mappy, "Aligner", lambda *a, **k: built.append(1) or real(*a, **k))
    index = sc.Aligner(reference)
    path = write(tmp_path / "g.fa", fasta([("a", reference), ("b", reference)]), False)
    for _ in range(2):
        assert len(list(sc.read_calls(path, index))) == 2
    assert built == [1]


def test_missing_mappy_is_a_one_line_config_error(reference, monkeypatch):
    monkeypatch.setitem(sys.modules, "mappy", None)  # makes `import mappy` fail
    with pytest.raises(ConfigError, match=r"pip install mappy"):
        sc.Aligner(reference)


VCF = """##fileformat=VCFv4.2
##contig=<ID=MN908947.3,length=29903>
#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\ts1\ts2\ts3
MN908947.3\t241\t.\tC\tT\t.\tPASS\t.\tGT\t1\t0\t1/1
MN908947.3\t3037\t.\tC\tT,G\t.\tPASS\t.\tGT:DP\t2:30\t1|1:20\t.:0
NC_045512.2\t11288\t.\tTCTGGTTTT\tT\t.\tPASS\t.\tGT\t1\t0\tx
MN908947.3\t5000\t.\tC\tN\t.\t.\t.\tGT\t1\t0\t0
MN908947.3\t6000\t.\tG\tC\t.\tPASS\t.\tGT\t1\t1\t1
MN908947.3\t7000\t.\tC\tG\t.\tPASS\t.\tGT\t0/1\t0\t0
"""


def test_vcf_samples_are_genomes_and_a_bad_genotype_fails_its_sample_alone(tmp_path, reference):
    assert reference[5_999] == "T"  # line 8's REF, G, disagrees with the reference
    calls = {c.name: c for c in sc.read_calls(write(tmp_path / "x.vcf", VCF, False), reference)}
    assert list(calls) == ["s1", "s2", "s3"]
    s1, s2, s3 = calls.values()
    assert s1.qc_status == s2.qc_status == sc.QC_PASS
    assert s1.substitutions == ((241, "T"), (3037, "G"))
    assert s1.deletions == ((11_289, 11_296),)
    assert s1.masked == ((5_000, 5_000), (6_000, 6_000), (7_000, 7_000))
    assert "REF disagrees with MN908947.3 (T), site masked (line 8)" in s1.qc_note
    assert "mixed genotype, site masked (line 9)" in s1.qc_note
    assert s2.substitutions == ((3037, "T"),)
    assert s2.deletions == ()
    assert s2.masked == ((6_000, 6_000),)
    assert s3.qc_status == sc.QC_FAIL
    assert s3.qc_note == "line 6: genotype 'x' is not a GT such as 1, 0/1 or 1|1"


@pytest.mark.parametrize(("compress", "columns"), [(False, 8), (True, 8), (False, 9)])
def test_sites_only_vcf_is_one_genome_named_after_the_file(tmp_path, reference, compress, columns):
    lines = VCF.splitlines()
    header = "\t".join(lines[2].split("\t")[:columns])
    body = ["\t".join(line.split("\t")[:columns]) for line in (lines[3], lines[5])]
    text = "\n".join([lines[0], header, *body, ""])
    [call] = sc.read_calls(write(tmp_path / "sample-7.vcf.gz", text, compress), reference)
    assert call.name == "sample-7"
    assert (call.substitutions, call.deletions) == (((241, "T"),), ((11_289, 11_296),))


def test_unreadable_vcf_record_fails_every_genome(tmp_path, reference):
    text = VCF.replace("\t5000\t", "\tfive\t")
    calls = list(sc.read_vcf(write(tmp_path / "x.vcf", text, False), reference))
    assert [c.qc_status for c in calls] == [sc.QC_FAIL] * 3
    assert calls[0].qc_note == "line 7: VCF record POS 'five' is not a position in 1..29903"


NEXTCLADE_COLUMNS = [
    "seqName",
    "clade",
    "qc.overallStatus",
    "substitutions",
    "deletions",
    "missing",
]
NEXTCLADE_ROWS = [
    ["good", "20I", "good", "C241T,C3037T,A23403G", "11288-11296,21765-21770", "1-54,29837-29903"],
    ["typo", "20I", "good", "C241T,X3037Y", "", ""],
    ["wrong-ref", "20I", "good", "G241T", "", ""],
    ["qc-bad", "20I", "bad", "C241T", "", "1-20000"],
    ["after", "20A", "mediocre", "C14408T", "28881", ""],
]


@pytest.mark.parametrize("delimiter", ["\t", ";"])
def test_nextclade_rows_fail_alone(tmp_path, reference, delimiter):
    text = "".join(delimiter.join(row) + "\n" for row in [NEXTCLADE_COLUMNS, *NEXTCLADE_ROWS])
    suffix = "tsv" if delimiter == "\t" else "csv"
    calls = list(sc.read_calls(write(tmp_path / f"nextclade.{suffix}", text, False), reference))
    assert [c.name for c in calls] == [row[0] for row in NEXTCLADE_ROWS]
    good, typo, wrong, bad, after = calls
    assert good.qc_status == sc.QC_PASS
    assert good.substitutions == ((241, "T"), (3037, "T"), (23_403, "G"))
    assert good.deletions == ((11_288, 11_296), (21_765, 21_770))
    assert good.masked == ((1, 54), (29_837, 29_903))
    assert typo.qc_status == wrong.qc_status == bad.qc_status == sc.QC_FAIL
    assert typo.qc_note.startswith("line 3: mutation 'X3037Y'")
    assert "MN908947.3 has C at 241, not G" in wrong.qc_note
    assert bad.qc_note.startswith("Nextclade QC status bad")
    assert after.qc_status == sc.QC_PASS
    assert (after.substitutions, after.deletions) == (((14_408, "T"),), ((28_881, 28_881),))
    assert "mediocre" in after.qc_note


def test_nextclade_without_optional_columns(tmp_path, reference):
    text = "seqName\tsubstitutions\nA\tC241T\nB\t\n"
    calls = list(sc.read_nextclade(write(tmp_path / "n.tsv.gz", text, True), reference))
    assert [(c.name, c.substitutions, c.qc_status) for c in calls] == [
        ("A", ((241, "T"),), sc.QC_PASS),
        ("B", (), sc.QC_PASS),
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (">a\nACGT\n", "FASTA"),
        ("\n##fileformat=VCFv4.3\n", "VCF"),
        ("#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n", "VCF"),
        ("index\tseqName\tclade\n", "Nextclade"),
        ("seqName;clade\n", "Nextclade"),
        ('"seqName";"clade"\n', "Nextclade"),
    ],
)
def test_format_is_told_by_content(tmp_path, text, expected):
    assert sc.detect_format(write(tmp_path / "input.txt", text, True)) == expected


@pytest.mark.parametrize("text", ["name,lineage\nx,B.1\n", "", "ACGT\n"])
def test_unknown_format_is_a_one_line_error_naming_the_file(tmp_path, reference, text):
    path = write(tmp_path / "what.csv", text, False)
    with pytest.raises(DataError, match=r"^genome file .*what\.csv (is not|is empty)") as info:
        sc.read_calls(path, reference)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (gzip.compress(b">a\n" + b"ACGT\n" * 5000)[:-40], "cannot be read after line"),
        (b">a\nAC\xffGT\n", "is not UTF-8 text"),
    ],
)
def test_corrupt_files_are_one_line_errors(tmp_path, aligner, content, message):
    path = tmp_path / "broken.fa"
    path.write_bytes(content)
    with pytest.raises(DataError, match=rf"^(FASTA|genome) file .*broken\.fa {message}"):
        list(sc.read_calls(path, aligner))
