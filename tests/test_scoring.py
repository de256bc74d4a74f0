"""Scoring must reproduce lm-evaluation-harness; these cases pin its documented quirks, plus `rmt score`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rmt.cli import main
from rmt.tasks import data_dir
from rmt.tasks.scoring import (
    GSM8K_STRICT,
    INVALID,
    exact_match,
    gsm8k_metrics,
    regex_extract,
    triviaqa_metrics,
    triviaqa_prediction,
)

GSM8K_TEST = data_dir() / "gsm8k" / "test.jsonl"
TRIVIAQA = data_dir() / "triviaqa" / "triviaqa_sub_2500.jsonl"
needs_data = pytest.mark.skipif(not GSM8K_TEST.is_file(), reason=f"shared data not found at {data_dir()}")


def _lines(path: Path) -> list[dict]:
    # Not splitlines(): it also splits at U+2028 and friends, which occur inside TriviaQA's JSON strings.
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]


def _gsm8k_single(prediction: str, answer: str) -> dict[str, float]:
    return gsm8k_metrics([prediction], [answer])


# --- GSM8K ---


@needs_data
def test_every_gsm8k_test_answer_parses_to_a_number():
    records = _lines(GSM8K_TEST)
    assert len(records) == 1319
    for record in records:
        extracted = regex_extract(record["answer"], GSM8K_STRICT)
        assert extracted != INVALID
        float(extracted.replace(",", ""))
    # The reference solutions score perfectly under both filters.
    answers = [record["answer"] for record in records]
    assert gsm8k_metrics(answers, answers) == {"strict_match": 1.0, "flexible_extract": 1.0}


@needs_data
def test_gsm8k_real_line():
    janet = _lines(GSM8K_TEST)[0]["answer"]  # "... #### 18"
    both = {"strict_match": 1.0, "flexible_extract": 1.0}
    assert _gsm8k_single(" She makes 9 * 2 = $18 every day. #### 18", janet) == both
    only_flexible = {"strict_match": 0.0, "flexible_extract": 1.0}
    assert _gsm8k_single(" 16 - 3 - 4 = 9 eggs, so she makes 9 * 2 = 18.", janet) == only_flexible
    assert _gsm8k_single(" #### 19", janet) == {"strict_match": 0.0, "flexible_extract": 0.0}


@pytest.mark.parametrize(
    "prediction, answer, strict, flexible",
    [
        ("#### 18", "18", 1.0, 1.0),
        ("18.", "18", 0.0, 1.0),  # no "####": strict fails; the trailing period is ignored
        ("#### 18.", "18", 1.0, 1.0),  # strict captures "18." and "\.$" drops the period
        ("It costs $1,000.", "Total #### 1,000", 0.0, 1.0),  # "$", "," and a final "." are ignored
        ("#### $1,000", "1000", 0.0, 1.0),  # strict's character class has no "$": nothing to capture
        ("The change is -5 dollars. #### -5", "#### -5", 1.0, 1.0),
        ("I do not know.", "7", 0.0, 0.0),  # no number: both filters give "[invalid]"
        ("", "7", 0.0, 0.0),
        ("#### 3 and later #### 4", "3", 1.0, 0.0),  # strict takes the first match, flexible the last
        ("2 + 3 = 5 apples", "5", 0.0, 1.0),  # flexible: the last number
        ("#### 18\n\nQuestion: Tom has 3. #### 3", "18", 1.0, 1.0),  # cut at "Question:", as generation stops
        ("#### 1.5", "1.5", 1.0, 1.0),
        ("#### 18.0", "18", 0.0, 0.0),  # no numeric normalisation in the harness
    ],
)
def test_gsm8k_edge_cases(prediction, answer, strict, flexible):
    assert _gsm8k_single(prediction, answer) == {"strict_match": strict, "flexible_extract": flexible}


def test_gsm8k_averages_and_checks_lengths():
    assert gsm8k_metrics(["#### 1", "#### 2"], ["1", "3"]) == {"strict_match": 0.5, "flexible_extract": 0.5}
    with pytest.raises(ValueError, match="2 predictions but 1 answers"):
        gsm8k_metrics(["1", "2"], ["1"])
    with pytest.raises(ValueError, match="no predictions"):
        gsm8k_metrics([], [])


# --- TriviaQA ---


@needs_data
def test_triviaqa_real_line():
    onion = _lines(TRIVIAQA)[0]
    assert onion["answer"] == "Onion"
    for generation, expected in [
        (" Onion", 1.0),
        (" onions.", 1.0),  # cut at "." then case-folded: "onions" is an alias
        (" Onion, I think", 1.0),  # cut at ","
        (" Onion\nQuestion: next", 1.0),  # cut at newline
        ("Onion", 1.0),
        (" Allium cepa", 1.0),
        (" The onion", 0.0),  # articles are NOT removed by the harness
        ("  Onion", 1.0),  # surrounding whitespace is stripped (lm-eval 0.4.13's remove_whitespace)
        (" Onion ", 1.0),
        (" On ion", 0.0),  # inner whitespace is kept
        (" Garlic", 0.0),
    ]:
        assert triviaqa_metrics([generation], [onion["aliases"]]) == {"exact_match": expected}, generation


def test_triviaqa_normalisation():
    assert triviaqa_prediction(" Dr. Who, the show") == "Dr"
    # Aliases lose their ASCII punctuation too: "J.K. Rowling" -> "jk rowling", which "J K Rowling" does not match.
    assert triviaqa_metrics(["J K Rowling"], [["J.K. Rowling"]]) == {"exact_match": 0.0}
    assert triviaqa_metrics(["JK Rowling"], [["J.K. Rowling"]]) == {"exact_match": 1.0}
    assert triviaqa_metrics([" O'Neill!"], [["ONeill"]]) == {"exact_match": 1.0}  # ASCII punctuation removed
    assert triviaqa_metrics([" café"], [["Café"]]) == {"exact_match": 1.0}
    assert triviaqa_metrics([" Paris", " Rome"], [["Paris"], ["Milan"]]) == {"exact_match": 0.5}
    with pytest.raises(ValueError, match="1 predictions but 2 alias lists"):
        triviaqa_metrics([" Paris"], [["Paris"], ["Rome"]])


# --- exact_match for the synthetic tasks ---


def test_exact_match():
    assert exact_match(" Paris\n", " Paris")
    assert exact_match("Paris\nQ: Where does", " Paris")
    assert exact_match(" 21", ["21"])
    assert exact_match(" Lamb", (" Rack of lamb", "Lamb"))
    assert not exact_match(" Pari", " Paris")
    assert not exact_match(" paris", " Paris")
    assert not exact_match("\nParis", " Paris")


# --- rmt score ---


def _write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


@needs_data
def test_score_gsm8k_command(tmp_path, capsys):
    records = _lines(GSM8K_TEST)
    data = _write_jsonl(tmp_path / "data.jsonl", records[:4])
    predictions = [{"prediction": r["answer"]} for r in records[:3]] + [{"prediction": "no idea"}]
    preds = _write_jsonl(tmp_path / "preds.jsonl", predictions)
    assert main(["score", "gsm8k", "--predictions", str(preds), "--data", str(data)]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "task": "gsm8k", "n": 4, "strict_match": 0.75, "flexible_extract": 0.75,
    }


@needs_data
def test_score_triviaqa_command(tmp_path, capsys):
    records = _lines(TRIVIAQA)[:2]  # Onion, Antelope
    data = _write_jsonl(tmp_path / "data.jsonl", records)
    preds = _write_jsonl(tmp_path / "preds.jsonl", [{"prediction": " onion."}, {"prediction": " Gazelle"}])
    assert main(["score", "triviaqa", "--predictions", str(preds), "--data", str(data)]) == 0
    assert json.loads(capsys.readouterr().out) == {"task": "triviaqa", "n": 2, "exact_match": 0.5}


def test_score_command_errors(tmp_path, capsys):
    data = _write_jsonl(tmp_path / "data.jsonl", [{"question": "1+1?", "answer": "#### 2"}] * 3)
    preds = _write_jsonl(tmp_path / "preds.jsonl", [{"prediction": "#### 2"}] * 2)
    assert main(["score", "gsm8k", "--predictions", str(preds), "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert "has 2 predictions but" in err and "has 3 records" in err

    preds.write_text('{"prediction": "#### 2"}\n{"prediction": 2}\n', encoding="utf-8")
    assert main(["score", "gsm8k", "--predictions", str(preds), "--data", str(data)]) == 2
    assert "preds.jsonl, line 2: 'prediction' must be a string" in capsys.readouterr().err

    preds.write_text('{"prediction": "#### 2"}\n{"pred": "2"}\n', encoding="utf-8")
    assert main(["score", "gsm8k", "--predictions", str(preds), "--data", str(data)]) == 2
    assert "line 2: missing field 'prediction'" in capsys.readouterr().err

    _write_jsonl(preds, [{"prediction": "#### 2"}])
    assert main(["score", "triviaqa", "--predictions", str(preds), "--data", str(tmp_path / "none.jsonl")]) == 2
    assert "none.jsonl: no such file" in capsys.readouterr().err
