"""`facts-real`: real-world facts (countries, chemical elements) in the same statement/question format as
`facts-synthetic`.

Sources, read in place from the folder `path` (default: the shared `facts/` folder):

- ``country-codes.csv``: country -> capital, continent, currency. Read with the `csv` module, which keeps the
  North America continent code "NA" as the string "NA" (pandas would turn it into a missing value).
- ``PeriodicTableJSON.json``: element -> chemical symbol, atomic number.

Rows with a missing value are skipped per fact; so are the few countries with more than one official currency,
since a fact needs one answer.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from rmt.tasks.base import Example, Task, seeded_rng
from rmt.tasks.factqa import HOLDOUTS, Fact, Relation, build_fact_splits
from rmt.tasks.paths import data_dir

COUNTRIES_FILE = "country-codes.csv"
ELEMENTS_FILE = "PeriodicTableJSON.json"

COUNTRY_NAME_COLUMN = "CLDR display name"
CONTINENTS: dict[str, str] = {
    "AF": "Africa", "AN": "Antarctica", "AS": "Asia", "EU": "Europe",
    "NA": "North America", "OC": "Oceania", "SA": "South America",
}

RELATIONS: dict[str, Relation] = {
    "capital": Relation(
        "capital",
        statements=("The capital of {e} is {v}.", "{e} has its capital in {v}.",
                    "The seat of government of {e} is {v}."),
        questions=("Q: What is the capital of {e}? A:", "Q: Which city is the capital of {e}? A:",
                   "Q: Where is the seat of government of {e}? A:"),
    ),
    "continent": Relation(
        "continent",
        statements=("{e} lies in {v}.", "{e} is located in {v}.", "The continent of {e} is {v}."),
        questions=("Q: On which continent is {e}? A:", "Q: What continent is {e} in? A:",
                   "Q: Where in the world is {e}? A:"),
    ),
    "currency": Relation(
        "currency",
        statements=("The currency of {e} is the {v}.", "In {e}, people pay with the {v}.",
                    "The money used in {e} is the {v}."),
        questions=("Q: What is the currency of {e}? A:", "Q: What do people pay with in {e}? A:",
                   "Q: Which money is used in {e}? A:"),
    ),
    "symbol": Relation(
        "symbol",
        statements=("The chemical symbol of {e} is {v}.", "{e} has the symbol {v}.",
                    "The symbol for the element {e} is {v}."),
        questions=("Q: What is the chemical symbol of {e}? A:", "Q: Which symbol stands for {e}? A:",
                   "Q: What symbol does {e} have? A:"),
    ),
    "atomic_number": Relation(
        "atomic_number",
        statements=("The atomic number of {e} is {v}.", "{e} has atomic number {v}.",
                    "In the periodic table, {e} is number {v}."),
        questions=("Q: What is the atomic number of {e}? A:", "Q: What number is {e} in the periodic table? A:",
                   "Q: How many protons does {e} have? A:"),
    ),
}


@dataclass(frozen=True)
class FactsRealConfig:
    """`path` is the folder holding ``country-codes.csv`` and ``PeriodicTableJSON.json``."""

    path: Path = field(default_factory=lambda: data_dir() / "facts")
    seed: int = 0
    qa_holdout: str = "template"  # "template" or "entity"; see rmt.tasks.factqa
    n_validation: int = 100

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        if self.qa_holdout not in HOLDOUTS:
            raise ValueError(f"qa_holdout: expected one of {HOLDOUTS}, got {self.qa_holdout!r}")
        if self.n_validation < 0:
            raise ValueError(f"n_validation: expected >= 0, got {self.n_validation}")


def _require_file(path: Path, expected_format: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; expected {expected_format}")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not valid UTF-8 ({error.reason} at byte {error.start})") from None


def load_country_facts(path: Path) -> list[Fact]:
    """Capital, continent and currency facts from the country-codes CSV."""
    _require_file(path, f"a UTF-8 CSV with the columns {COUNTRY_NAME_COLUMN!r}, 'Capital', 'Continent', "
                        "'ISO4217-currency_name' (datasets/country-codes)")
    facts = []
    with io.StringIO(_read_text(path), newline="") as file:
        for row in csv.DictReader(file):
            country = (row.get(COUNTRY_NAME_COLUMN) or "").strip()
            if not country:
                continue
            capital = (row.get("Capital") or "").strip()
            continent = CONTINENTS.get((row.get("Continent") or "").strip(), "")
            currencies = list(dict.fromkeys(c.strip() for c in (row.get("ISO4217-currency_name") or "").split(",")))
            currency = currencies[0] if len(currencies) == 1 else ""
            for attribute, value in (("capital", capital), ("continent", continent), ("currency", currency)):
                if value:
                    facts.append(Fact(country, attribute, value))
    return facts


def load_element_facts(path: Path) -> list[Fact]:
    """Symbol and atomic-number facts from the periodic-table JSON."""
    _require_file(path, 'a JSON object {"elements": [{"name": ..., "symbol": ..., "number": ...}, ...]} '
                        "(Bowserinator/Periodic-Table-JSON)")
    with io.StringIO(_read_text(path)) as file:
        try:
            elements = json.load(file)["elements"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{path}: expected a JSON object with an 'elements' list ({error})") from None
    facts = []
    for element in elements:
        name = str(element.get("name") or "").strip()
        if not name:
            continue
        for attribute, value in (("symbol", element.get("symbol")), ("atomic_number", element.get("number"))):
            if value not in (None, ""):
                facts.append(Fact(name, attribute, str(value)))
    return facts


class FactsReal(Task):
    name = "facts-real"
    Config = FactsRealConfig

    def __init__(self, config: FactsRealConfig | None = None) -> None:
        super().__init__(config)
        self.facts = load_country_facts(self.config.path / COUNTRIES_FILE)
        # An element named like a country would make questions ambiguous; keep the first fact source's entity.
        countries = {fact.entity for fact in self.facts}
        self.facts += [f for f in load_element_facts(self.config.path / ELEMENTS_FILE) if f.entity not in countries]

    def _build_splits(self) -> dict[str, list[Example]]:
        rng = seeded_rng(self.config.seed, "splits")
        return build_fact_splits(self.facts, RELATIONS, self.config.qa_holdout, self.config.n_validation, rng)
