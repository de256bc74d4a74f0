"""Scoring generated answers, reproducing lm-evaluation-harness so numbers are comparable with published ones.

The harness scores a generation in three stages, each reproduced here:

1. Truncation: generation stops at the task's `until` strings; the text is cut at the first occurrence of each
   (the harness's Hugging Face backend does ``text.split(stop)[0]`` for every stop string).
2. Filters: turn the generation into an answer string (a regex extraction, or whitespace handling).
3. Metric: `exact_match` as ported from Hugging Face `evaluate`: delete `regexes_to_ignore` matches from both
   prediction and reference, optionally lowercase, optionally delete ASCII punctuation (`string.punctuation`),
   then compare the strings exactly (no further whitespace stripping). With several references (TriviaQA
   aliases) a prediction scores 1 if it matches any of them.

GSM8K (``lm_eval/tasks/gsm8k/gsm8k.yaml``, version 3):
    until ["Question:", "</s>", "<|im_end|>"]; two filter pipelines, each followed by take_first:
    - strict-match: regex ``#### (\\-?[0-9\\.\\,]+)``, first match;
    - flexible-extract: regex ``(-?[$0-9.,]{2,})|(-?[0-9]+)``, last match (group_select -1);
    a failed extraction yields "[invalid]". exact_match with ignore_case=true, ignore_punctuation=false,
    regexes_to_ignore [",", "\\$", "(?s).*#### ", "\\.$"]. The reference is the full solution; the
    "(?s).*#### " rule reduces it to the final number (a bare number works too).

TriviaQA (``lm_eval/tasks/triviaqa/default.yaml``):
    until ["\\n", ".", ","]; filter remove_whitespace (strips leading and trailing whitespace, as in lm-eval
    0.4.13's WhitespaceFilter; older harness versions dropped one leading space only) then take_first;
    exact_match with ignore_case=true and ignore_punctuation=true against every alias. Articles are not removed
    and inner/trailing whitespace is kept: that is the harness's behaviour, not SQuAD-style normalisation.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

GSM8K_UNTIL: tuple[str, ...] = ("Question:", "</s>", "<|im_end|>")
GSM8K_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
GSM8K_FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
GSM8K_IGNORE: tuple[str, ...] = (",", "\\$", "(?s).*#### ", "\\.$")
TRIVIAQA_UNTIL: tuple[str, ...] = ("\n", ".", ",")
INVALID = "[invalid]"  # the harness regex filter's fallback when nothing matches

_ASCII_PUNCTUATION = str.maketrans("", "", string.punctuation)


def truncate(generation: str, until: Sequence[str]) -> str:
    """Cut `generation` at the first occurrence of every stop string, as the harness does after generating."""
    for stop in until:
        if stop:
            generation = generation.split(stop)[0]
    return generation


def regex_extract(text: str, pattern: re.Pattern[str], group_select: int = 0) -> str:
    """The harness's `regex` filter: the `group_select`-th match of `pattern` (for several groups, the first
    non-empty group of that match), stripped; "[invalid]" when nothing matches."""
    matches = pattern.findall(text)
    if not matches:
        return INVALID
    match = matches[group_select]
    if isinstance(match, tuple):
        match = next(group for group in match if group)
    return match.strip()


def harness_exact_match(
    prediction: str,
    reference: str,
    regexes_to_ignore: Sequence[str] = (),
    ignore_case: bool = False,
    ignore_punctuation: bool = False,
) -> bool:
    """One prediction against one reference, exactly as the harness's `exact_match_hf_evaluate`."""
    for pattern in regexes_to_ignore:
        prediction = re.sub(pattern, "", prediction)
        reference = re.sub(pattern, "", reference)
    if ignore_case:
        prediction, reference = prediction.lower(), reference.lower()
    if ignore_punctuation:
        prediction = prediction.translate(_ASCII_PUNCTUATION)
        reference = reference.translate(_ASCII_PUNCTUATION)
    return prediction == reference


def _check_lengths(predictions: Sequence[str], references: Sequence[object], what: str) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} {what}: expected one per item")
    if not predictions:
        raise ValueError("no predictions to score")


def gsm8k_metrics(predictions: Sequence[str], answers: Sequence[str]) -> dict[str, float]:
    """GSM8K accuracy under the harness's two filters: {"strict_match": f, "flexible_extract": f}.

    `answers` are the reference solutions ("... #### 18") or bare final answers ("18").
    """
    _check_lengths(predictions, answers, "answers")
    strict = flexible = 0
    for generation, answer in zip(predictions, answers):
        generation = truncate(generation, GSM8K_UNTIL)
        strict += harness_exact_match(
            regex_extract(generation, GSM8K_STRICT), answer, GSM8K_IGNORE, ignore_case=True
        )
        flexible += harness_exact_match(
            regex_extract(generation, GSM8K_FLEXIBLE, group_select=-1), answer, GSM8K_IGNORE, ignore_case=True
        )
    return {"strict_match": strict / len(answers), "flexible_extract": flexible / len(answers)}


def triviaqa_prediction(generation: str) -> str:
    """A raw generation as the harness scores it: cut at newline/period/comma, surrounding whitespace removed."""
    return truncate(generation, TRIVIAQA_UNTIL).strip()


def triviaqa_metrics(predictions: Sequence[str], aliases_list: Sequence[Sequence[str]]) -> dict[str, float]:
    """TriviaQA accuracy: {"exact_match": f}; a prediction is right if it matches any of its aliases."""
    _check_lengths(predictions, aliases_list, "alias lists")
    correct = 0
    for generation, aliases in zip(predictions, aliases_list):
        prediction = triviaqa_prediction(generation)
        correct += any(
            harness_exact_match(prediction, alias, ignore_case=True, ignore_punctuation=True) for alias in aliases
        )
    return {"exact_match": correct / len(predictions)}


def exact_match(prediction: str, targets: str | Sequence[str]) -> bool:
    """The synthetic tasks' metric: the generation up to its first newline (the end-of-answer marker), stripped,
    equals one of the stripped `targets` (a string or a sequence, e.g. ``(example.target, *example.aliases)``)."""
    if isinstance(targets, str):
        targets = (targets,)
    answer = prediction.split("\n", 1)[0].strip()
    return any(answer == target.strip() for target in targets)
