"""Tests of the task contract, every task's splits, the leakage rule, data-file errors and `rmt data show`."""

from __future__ import annotations

import csv
import json
import operator
import re
from pathlib import Path

import pytest

from rmt.cli import main
from rmt.tasks import SPLITS, TASKS, Example, Task, check_leakage, data_dir, get_task
from rmt.tasks import arithmetic, facts_real, facts_synthetic
from rmt.tasks.base import find_substrings
from rmt.tasks.paths import DATA_DIR_ENV

needs_data = pytest.mark.skipif(not data_dir().is_dir(), reason=f"shared data not found at {data_dir()}")

# Small configs keep the suite fast; the defaults are exercised separately where they matter.
SMALL = {
    "facts-synthetic": {"n_entities": 60, "n_validation": 20},
    "facts-bank": {"n_train_entities": 60, "n_validation_entities": 10, "n_test_entities": 20},
    "arithmetic": {"n_train": 3000, "n_validation": 100, "n_test": 200},
    "facts-real": {},
    "gsm8k": {},
    "triviaqa": {},
    "text": {"chunk_length": 4096},
    "sort-of-clevr": {"n_train": 40, "n_validation": 10, "n_test": 10, "cache": False},
}
FILE_TASKS = {"facts-real", "gsm8k", "triviaqa", "text"}
SEEDED = [name for name in TASKS if name != "text"]
QA_TASKS = [name for name in TASKS if name != "text"]


def _small(name: str, **overrides) -> Task:
    if name in FILE_TASKS and not data_dir().is_dir():
        pytest.skip(f"shared data not found at {data_dir()}")
    return get_task(name, **{**SMALL[name], **overrides})


@pytest.fixture(scope="module")
def default_arithmetic() -> Task:
    """The default 200k-problem arithmetic task, built once (its build speed is a figure of
    `benchmarks/task_generation.py`, not a pass/fail threshold here)."""
    task = get_task("arithmetic")
    task.split("train")
    return task


# --- The contract ---


def test_registry_lists_the_eight_tasks():
    assert set(TASKS) == {"facts-synthetic", "facts-bank", "arithmetic", "facts-real", "gsm8k", "triviaqa", "text", "sort-of-clevr"}
    for name, task_class in TASKS.items():
        assert task_class.name == name


def test_unknown_task_lists_known_tasks():
    with pytest.raises(ValueError, match="unknown task 'nope'.*facts-synthetic.*arithmetic"):
        get_task("nope")


def test_unknown_config_field_lists_fields():
    with pytest.raises(ValueError, match="no config field 'n_entitie'.*n_entities"):
        get_task("facts-synthetic", n_entitie=3)


@pytest.mark.parametrize(
    "name, overrides, field",
    [
        ("facts-synthetic", {"attributes": 7}, "attributes"),
        ("facts-synthetic", {"qa_holdout": "question"}, "qa_holdout"),
        ("facts-synthetic", {"n_entities": 1}, "n_entities"),
        ("arithmetic", {"max_steps": 0}, "max_steps"),
        ("arithmetic", {"ops": ("+", "^")}, "ops"),
        ("arithmetic", {"max_value": 5}, "max_value"),
        ("arithmetic", {"n_test": -1}, "n_test"),
        ("gsm8k", {"validation_fraction": 1.5}, "validation_fraction"),
        ("triviaqa", {"validation_fraction": 0.5, "test_fraction": 0.5}, "validation_fraction \\+ test_fraction"),
        ("text", {"chunk_length": 0}, "chunk_length"),
    ],
)
def test_invalid_config_names_the_field(name, overrides, field):
    with pytest.raises(ValueError, match=f"^{field}: expected"):
        get_task(name, **overrides)


def test_n_validation_must_leave_a_test_split():
    with pytest.raises(ValueError, match="n_validation: expected 0 <= n_validation < 40"):
        get_task("facts-synthetic", n_entities=10, n_validation=40).split("test")


def test_unknown_split_name():
    with pytest.raises(ValueError, match="split: expected one of"):
        get_task("facts-synthetic", n_entities=10, n_validation=5).split("dev")


def test_example_text_and_validation():
    qa = Example(prompt="Q: 2+2? A:", target=" 4", kind="qa", meta={}, cot=" 2 + 2 = 4. #### 4")
    assert qa.text() == "Q: 2+2? A: 4\n"
    assert qa.text(cot=True) == "Q: 2+2? A: 2 + 2 = 4. #### 4\n"
    plain = Example(prompt="", target="Hello.", kind="text", meta={})
    assert plain.text(cot=True) == "Hello.\n"  # no cot: falls back to the target
    assert len({qa, plain}) == 2  # hashable despite the meta dict
    with pytest.raises(ValueError, match="Example.kind"):
        Example(prompt="", target="x", kind="story", meta={})
    with pytest.raises(ValueError, match="Example.prompt"):
        Example(prompt="Q:", target="x", kind="text", meta={})


def test_split_returns_a_fresh_list():
    task = _small("facts-synthetic")
    task.split("train").clear()
    assert task.split("train")


# --- Properties every task has ---


@pytest.mark.parametrize("name", list(TASKS))
def test_splits_are_nonempty_and_serialisable(name):
    task = _small(name)
    for split in SPLITS:
        examples = task.split(split)
        assert examples, split
        for example in examples[:200]:
            json.dumps(example.meta)
            # every sample ends with the end-of-sample newline, except windows of a running text
            assert example.terminated == (name != "text")
            assert example.text() == example.prompt + example.target + ("\n" if example.terminated else "")


@pytest.mark.parametrize("name", QA_TASKS)
def test_qa_format(name):
    task = _small(name)
    for split in SPLITS:
        for example in task.split(split):
            if example.kind == "qa":
                assert example.target.startswith(" ") and example.target.strip(), example
                assert example.prompt.endswith("A:") or example.prompt.endswith("Answer:"), example
                if example.cot is not None:
                    assert example.cot.endswith("#### " + example.target.strip()), example
    for split in ("validation", "test"):
        assert {example.kind for example in task.split(split)} == {"qa"}


@pytest.mark.parametrize("name", SEEDED)
def test_same_seed_same_splits_other_seed_different(name):
    first, again, other = _small(name, seed=1), _small(name, seed=1), _small(name, seed=2)
    for split in SPLITS:
        assert first.split(split) == again.split(split)
    assert any(first.split(split) != other.split(split) for split in SPLITS)


@pytest.mark.parametrize("name", list(TASKS))
def test_no_leakage(name):
    if name == "sort-of-clevr":
        # The same question is asked of every image by design; what must never repeat is the image.
        task = _small(name)
        train = {img.tobytes() for img in task.images("train")}
        assert not any(img.tobytes() in train for split in ("validation", "test") for img in task.images(split))
        return
    assert check_leakage(_small(name)) == []


@pytest.mark.parametrize("name", ["facts-synthetic", "facts-real"])
@pytest.mark.parametrize("holdout", ["template", "entity"])
def test_no_leakage_facts_both_holdouts(name, holdout):
    assert check_leakage(_small(name, qa_holdout=holdout)) == []


def test_no_leakage_default_arithmetic(default_arithmetic):
    assert check_leakage(default_arithmetic) == []


class _LeakyTask(Task):
    name = "leaky"

    class Config:  # the base class only needs a constructible Config
        pass

    def _build_splits(self):
        def qa(prompt: str) -> Example:
            return Example(prompt=prompt, target=" 1", kind="qa", meta={})

        train = [qa("Q: a? A:"), Example(prompt="", target="As said: Q: b? A: 2", kind="text", meta={})]
        return {"train": train, "validation": [qa("Q: a? A:")], "test": [qa("Q: b? A:"), qa("Q: c? A:")]}


def test_leakage_is_detected():
    assert check_leakage(_LeakyTask()) == ["Q: a? A:", "Q: b? A:"]


def test_find_substrings_is_exact():
    haystack = "xxQ: abcQ: abd\0Q: ab"
    needles = {"Q: abc", "Q: abd", "Q: abdx", "Q: ab", "c", "Q: abe"}
    assert find_substrings(haystack, needles) == {n for n in needles if n in haystack}


# --- facts-synthetic ---


def test_declared_attribute_data():
    assert len(facts_synthetic.ATTRIBUTES) >= 6
    for name, (values, relation) in facts_synthetic.ATTRIBUTES.items():
        assert len(set(values)) == len(values) >= 50, name
        assert len(relation.statements) >= 3 and len(relation.questions) >= 3, name
        assert len(set(relation.questions)) == len(relation.questions)


def test_entity_names_are_unique_two_part_and_seeded():
    task = get_task("facts-synthetic")
    assert len(set(task.entities)) == 500
    assert all(re.fullmatch(r"[A-Z][a-z]{3,6} [A-Z][a-z]{3,6}", name) for name in task.entities)
    assert get_task("facts-synthetic").entities == task.entities
    assert get_task("facts-synthetic", seed=1).entities != task.entities


def test_template_holdout_structure():
    task = get_task("facts-synthetic")
    train, validation, test = (task.split(s) for s in SPLITS)
    assert len(task.facts) == 2000
    assert len(validation) == 200 and len(test) == 1800

    def key(example: Example) -> tuple[str, str]:
        return example.meta["entity"], example.meta["attribute"]

    # Every fact: stated in all 3 statement templates, asked in 2 training templates and 1 held-out template.
    statements = [e for e in train if e.kind == "text"]
    assert len(statements) == 2000 * 3
    trained_templates: dict[tuple[str, str], set[int]] = {}
    for example in train:
        if example.kind == "qa":
            trained_templates.setdefault(key(example), set()).add(example.meta["template"])
    held = validation + test
    assert len({key(e) for e in held}) == 2000
    for example in held:
        assert example.meta["template"] not in trained_templates[key(example)]
        assert len(trained_templates[key(example)]) == 2
    value = {(f.entity, f.attribute): f.value for f in task.facts}
    assert all(e.target == " " + value[key(e)] for e in held)
    for example in statements:
        assert example.target.endswith(value[key(example)] + ".")


def test_entity_holdout_structure():
    task = get_task("facts-synthetic", n_entities=100, n_validation=40, qa_holdout="entity")
    train, validation, test = (task.split(s) for s in SPLITS)
    asked_in_training = {e.meta["entity"] for e in train if e.kind == "qa"}
    stated = {e.meta["entity"] for e in train if e.kind == "text"}
    held = {e.meta["entity"] for e in validation + test}
    assert len(asked_in_training) == len(held) == 50
    assert not asked_in_training & held and held <= stated
    assert len(validation) == 40 * 3 and len(test) == (200 - 40) * 3  # every question template per fact


def test_article_in_statements():
    relation = facts_synthetic.ATTRIBUTES["job"][1]
    assert relation.state(0, "Vorla Minet", "actor") == "Vorla Minet works as an actor."
    assert relation.state(0, "Vorla Minet", "baker") == "Vorla Minet works as a baker."


# --- arithmetic ---


def _evaluate(meta: dict) -> int:
    """Recompute a problem's answer from its meta, left to right, checking divisions are exact."""
    value = meta["values"][0]
    for op, operand in zip(meta["ops"], meta["operands"]):
        assert op != "/" or value % operand == 0
        value = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.floordiv}[op](value, operand)
    return value


def test_arithmetic_declarations():
    assert len(arithmetic.NAMES) >= 20 and len(arithmetic.OBJECTS) >= 10
    for op in arithmetic.OPS:
        assert len(arithmetic.STEP_TEMPLATES[op]) >= 2
        for k in arithmetic.FACTORS:
            for sentence in arithmetic.step_sentences(op, k):
                assert len(sentence.replace("{P}", "She").encode()) <= 25, sentence
    assert arithmetic.step_sentences("*", 2)[1] == "{P} doubles them."


def test_arithmetic_default_splits(default_arithmetic):
    task = default_arithmetic
    train, validation, test = (task.split(s) for s in SPLITS)
    assert (len(train), len(validation), len(test)) == (200_000, 500, 1_000)
    assert task.meta_stats(test) == {"steps": {"1": 250, "2": 250, "3": 250, "4": 250}}
    assert len({e.prompt for e in test}) == 1000
    assert not {e.prompt for e in test} & {e.prompt for e in validation}
    counts = task.meta_stats(train)["steps"]
    assert set(counts) == {"1", "2", "3", "4"} and min(counts.values()) > 45_000


def test_arithmetic_problems_are_correct_and_in_range():
    task = get_task("arithmetic", ops=("+", "-", "*", "/"), n_train=4000, n_validation=10, n_test=10)
    seen_ops = set()
    for example in task.split("train"):
        meta = example.meta
        assert meta["steps"] == len(meta["ops"]) == len(meta["operands"]) == len(meta["values"]) - 1
        assert 0 <= meta["values"][0] <= 20 and all(0 <= v <= 99 for v in meta["values"])
        assert example.target == f" {_evaluate(meta)}" == f" {meta['values'][-1]}"
        for op, operand in zip(meta["ops"], meta["operands"]):
            assert 2 <= operand <= 5 if op in "*/" else 1 <= operand <= 20
        seen_ops.update(meta["ops"])
        assert re.fullmatch(r"Q: [A-Z][a-z]+ has \d+ [a-z]+\. (.+\. )+How many [a-z]+ now\? A:", example.prompt)
    assert seen_ops == {"+", "-", "*", "/"}


def test_arithmetic_singular_start():
    task = get_task("arithmetic", n_train=3000, n_validation=0, n_test=0)
    ones = [e for e in task.split("train") if e.meta["values"][0] == 1]
    assert ones and all(re.match(r"Q: \w+ has 1 [a-z]+[^s]\. ", e.prompt) for e in ones)


def test_arithmetic_uneven_steps_and_impossible_config():
    task = get_task("arithmetic", min_steps=2, max_steps=4, n_train=10, n_validation=0, n_test=10)
    assert task.meta_stats(task.split("test")) == {"steps": {"2": 4, "3": 3, "4": 3}}
    impossible = get_task("arithmetic", ops=("/",), max_operand=1, max_value=1, n_train=1, n_validation=0, n_test=4)
    with pytest.raises(ValueError, match="n_test: cannot draw"):
        impossible.split("test")


def test_arithmetic_cot_format():
    example = get_task("arithmetic", n_train=10, n_validation=0, n_test=8).split("test")[-1]
    assert re.fullmatch(r"( \d+ [-+*/] \d+ = \d+\.)+ #### \d+", example.cot)
    assert example.meta["steps"] == 4 and example.cot.count("=") == 4


# --- facts-real ---


def _write_countries(path: Path, rows: list[dict[str, str]]) -> None:
    columns = ["CLDR display name", "Capital", "Continent", "ISO4217-currency_name"]
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def test_facts_real_keeps_na_and_skips_missing(tmp_path):
    _write_countries(tmp_path / facts_real.COUNTRIES_FILE, [
        {"CLDR display name": "Canada", "Capital": "Ottawa", "Continent": "NA",
         "ISO4217-currency_name": "Canadian Dollar"},
        {"CLDR display name": "Nowhere", "Capital": "", "Continent": "", "ISO4217-currency_name": "Euro"},
        {"CLDR display name": "Lesotho", "Capital": "Maseru", "Continent": "AF", "ISO4217-currency_name": "Loti,Rand"},
    ])
    loaded = facts_real.load_country_facts(tmp_path / facts_real.COUNTRIES_FILE)
    facts = {(f.entity, f.attribute): f.value for f in loaded}
    assert facts == {
        ("Canada", "capital"): "Ottawa", ("Canada", "continent"): "North America",
        ("Canada", "currency"): "Canadian Dollar", ("Nowhere", "currency"): "Euro",
        ("Lesotho", "capital"): "Maseru", ("Lesotho", "continent"): "Africa",
    }


@needs_data
def test_facts_real_from_shared_files():
    task = get_task("facts-real")
    facts = {(f.entity, f.attribute): f.value for f in task.facts}
    assert facts[("Canada", "continent")] == "North America"
    assert facts[("Mexico", "continent")] == "North America"
    assert facts[("France", "capital")] == "Paris"
    assert facts[("Hydrogen", "symbol")] == "H" and facts[("Oganesson", "atomic_number")] == "118"
    assert sum(value == "North America" for value in facts.values()) >= 35


def test_facts_real_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"country-codes\.csv: no such file; expected a UTF-8 CSV"):
        get_task("facts-real", path=tmp_path)


# --- gsm8k ---


@needs_data
def test_gsm8k_splits():
    task = get_task("gsm8k")
    train, validation, test = (task.split(s) for s in SPLITS)
    assert (len(train) + len(validation), len(validation), len(test)) == (7473, 747, 1319)
    janet = test[0]
    assert janet.prompt.startswith("Question: Janet") and janet.prompt.endswith("\nAnswer:")
    assert janet.target == " 18"
    assert janet.cot == (" Janet sells 16 - 3 - 4 = 9 duck eggs a day. She makes 9 * 2 = $18 every day at the"
                         " farmer\u2019s market. #### 18")
    for example in train + validation + test:
        assert "<<" not in example.cot and "\n" not in example.cot
        assert re.fullmatch(r" -?[0-9.]+", example.target)
    assert " 2125" in {e.target for e in test}  # "#### 2,125" loses its comma


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_gsm8k_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"train\.jsonl: no such file; expected JSON lines.*question"):
        get_task("gsm8k", path=tmp_path).split("train")
    good = json.dumps({"question": "1+1?", "answer": "1+1=2\n#### 2"})
    _write(tmp_path / "test.jsonl", [good])
    cases = {
        "{not json": r"train\.jsonl, line 2: bad JSON",
        json.dumps({"question": "q"}): r"train\.jsonl, line 2: missing field 'answer'",
        json.dumps({"question": "q", "answer": "no marker"}): r"line 2: 'answer' has no '####'",
        json.dumps(["a list"]): r"line 2: expected a JSON object",
    }
    for bad, message in cases.items():
        _write(tmp_path / "train.jsonl", [good, bad])
        with pytest.raises(ValueError, match=message):
            get_task("gsm8k", path=tmp_path).split("train")


# --- triviaqa ---


@needs_data
def test_triviaqa_splits():
    task = get_task("triviaqa")
    splits = [task.split(s) for s in SPLITS]
    assert [len(s) for s in splits] == [2000, 250, 250]
    everything = [e for split in splits for e in split]
    assert len({e.prompt for e in everything}) == 2500
    for example in everything:
        assert example.prompt.startswith("Question: ") and example.prompt.endswith("\nAnswer:")
        assert example.target[1:] in example.aliases


def test_triviaqa_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.jsonl: no such file.*aliases"):
        get_task("triviaqa", path=tmp_path / "missing.jsonl").split("test")
    path = _write(tmp_path / "t.jsonl", [json.dumps({"context": "Question: q\nAnswer:", "answer": "a"})])
    with pytest.raises(ValueError, match=r"t\.jsonl, line 1: missing field 'aliases'"):
        get_task("triviaqa", path=path).split("test")
    path = _write(tmp_path / "t.jsonl", [json.dumps({"context": "c", "answer": "a", "aliases": "a"})])
    with pytest.raises(ValueError, match=r"line 1: 'aliases' must be a list of strings"):
        get_task("triviaqa", path=path).split("test")


def test_triviaqa_custom_file(tmp_path):
    records = [
        {"context": f"Question: q{i}?\nAnswer:", "answer": f"a{i}", "aliases": [f"a{i}", "x"]} for i in range(20)
    ]
    path = _write(tmp_path / "t.jsonl", [json.dumps(r) for r in records])
    task = get_task("triviaqa", path=path)
    assert [len(task.split(s)) for s in SPLITS] == [16, 2, 2]
    assert task.split("test")[0].aliases[1] == "x"


# --- text ---


@needs_data
def test_text_matches_nanogpt_split():
    task = get_task("text")
    assert len(task.corpus("train")) == 1_003_854
    assert len(task.corpus("validation")) == 111_540
    assert task.corpus("validation") == task.corpus("test")
    assert "".join(e.target for e in task.split("train")) == task.corpus("train")
    assert all(len(e.target) == 256 for e in task.split("train")[:-1])


def test_text_custom_file_and_errors(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("héllo wörld " * 10, encoding="utf-8")
    task = get_task("text", path=path, chunk_length=7)
    assert task.corpus("train") + task.corpus("test") == "héllo wörld " * 10
    assert task.split("validation")[0].kind == "text"
    with pytest.raises(FileNotFoundError, match="nothing.txt: no such file; expected a plain UTF-8 text file"):
        get_task("text", path=tmp_path / "nothing.txt").corpus("train")
    (tmp_path / "bad.txt").write_bytes(b"ok \xff\xfe")
    with pytest.raises(ValueError, match="bad.txt: not valid UTF-8"):
        get_task("text", path=tmp_path / "bad.txt").corpus("train")


# --- data location ---


def test_data_dir_default_and_override(monkeypatch, tmp_path):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    repo_root = Path(__file__).resolve().parents[1]
    assert data_dir() == repo_root.parent / "shared" / "data"
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    assert data_dir() == tmp_path
    assert get_task("triviaqa").config.path == tmp_path / "triviaqa" / "triviaqa_sub_2500.jsonl"


# --- rmt data show ---


def test_data_show_facts(capsys):
    assert main(["data", "show", "facts-synthetic", "--n", "2", "--split", "test", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "split sizes: train 10000, validation 200, test 1800" in out
    assert out.count("\n[") == 2 and "prompt: 'Q: " in out
    assert re.search(r"length in characters \(full sample text\): min \d+, mean [\d.]+, max \d+", out)
    assert "answers: " in out and "top 10:" in out


def test_data_show_arithmetic_steps(capsys):
    assert main(["data", "show", "arithmetic", "--n", "1", "--split", "test"]) == 0
    out = capsys.readouterr().out
    assert "steps: 1: 250, 2: 250, 3: 250, 4: 250" in out and "cot:" in out


def test_data_show_with_path(capsys, tmp_path):
    records = [{"context": f"Question: q{i}?\nAnswer:", "answer": "yes", "aliases": ["yes"]} for i in range(10)]
    path = _write(tmp_path / "t.jsonl", [json.dumps(r) for r in records])
    assert main(["data", "show", "triviaqa", "--path", str(path), "--n", "1"]) == 0
    out = capsys.readouterr().out
    assert "split sizes: train 8, validation 1, test 1" in out and "'yes' 8" in out


def test_data_show_errors(capsys, tmp_path):
    assert main(["data", "show", "nope"]) == 2
    assert "unknown task 'nope'; known tasks: facts-synthetic" in capsys.readouterr().err
    assert main(["data", "show", "arithmetic", "--path", "x"]) == 2
    assert "no config field 'path'" in capsys.readouterr().err
    assert main(["data", "show", "gsm8k", "--path", str(tmp_path)]) == 2
    assert "train.jsonl: no such file" in capsys.readouterr().err


# --- issue 16: `--path FILE` reads that file ---


def test_data_show_gsm8k_reads_a_file_as_the_split_asked_for(capsys, tmp_path):
    records = [json.dumps({"question": f"What is {i} + 1?", "answer": f"{i}+1={i + 1}\n#### {i + 1}"})
               for i in range(10)]
    path = _write(tmp_path / "mine.jsonl", records)
    assert main(["data", "show", "gsm8k", "--path", str(path), "--split", "test", "--n", "1"]) == 0
    out = capsys.readouterr().out
    assert "split sizes: train 0, validation 0, test 10" in out and '"source": "mine.jsonl"' in out
    assert main(["data", "show", "gsm8k", "--path", str(path), "--n", "1"]) == 0  # --split train (the default)
    assert "split sizes: train 9, validation 1, test 0" in capsys.readouterr().out
    # A malformed line 4 in the file: the same one-line error a folder's file gets, naming the file and line.
    path = _write(tmp_path / "broken.jsonl", records[:3] + ['{"question": "no closing brace"'] + records[3:])
    for split in ("train", "test"):
        assert main(["data", "show", "gsm8k", "--path", str(path), "--split", split]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"rmt data show: error: {path}, line 4: bad JSON") and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1
    assert main(["data", "show", "gsm8k", "--path", str(tmp_path / "missing.jsonl")]) == 2
    assert f"{tmp_path / 'missing.jsonl'}: no such file" in capsys.readouterr().err


def test_gsm8k_file_split(tmp_path):
    good = [json.dumps({"question": f"q{i}?", "answer": f"#### {i}"}) for i in range(20)]
    path = _write(tmp_path / "any.jsonl", good)
    with pytest.raises(ValueError, match="set file_split to 'test'"):  # a file's role is never guessed
        get_task("gsm8k", path=path).split("test")
    sizes = {s: [len(get_task("gsm8k", path=path, file_split=s).split(x)) for x in SPLITS] for s in SPLITS}
    assert sizes == {"train": [18, 2, 0], "validation": [18, 2, 0], "test": [0, 0, 20]}
    named = _write(tmp_path / "test.jsonl", good)  # a file named like one of the folder's is read as that one
    assert len(get_task("gsm8k", path=named).split("test")) == 20
    with pytest.raises(ValueError, match="file_split: expected one of"):
        get_task("gsm8k", path=path, file_split="dev")


def test_jsonl_reader_names_folders_and_bad_bytes(tmp_path):
    from rmt.tasks.jsonl import read_jsonl

    with pytest.raises(FileNotFoundError, match="is a folder; expected a JSON-lines file"):
        read_jsonl(tmp_path, ("a",), '{"a": 1}')
    (tmp_path / "x.jsonl").write_bytes(b'{"a": 1}\n\xff\xfe\n')
    with pytest.raises(ValueError, match=r"x\.jsonl, line 2: not valid UTF-8"):
        read_jsonl(tmp_path / "x.jsonl", ("a",), '{"a": 1}')


def test_data_show_folder_task_given_a_file(capsys, tmp_path):
    path = _write(tmp_path / "facts.csv", ["a,b"])
    assert main(["data", "show", "facts-real", "--path", str(path)]) == 2
    assert "facts-real reads a folder" in capsys.readouterr().err
