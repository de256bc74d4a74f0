"""The shared machinery of the fact-recall tasks: (entity, attribute, value) facts -> statement text and QA splits.

Each attribute (a `Relation`) comes with several statement templates (value at the end of the sentence) and
several question templates. Training text states every fact in every statement template. What is held out for
evaluation depends on `holdout`:

- "template": every fact gets one question template drawn as its held-out phrasing. Training asks the fact in its
  other question templates; validation/test ask it in the held-out one. This measures whether recall transfers to
  an unseen phrasing of a fact the model was drilled on.
- "entity": the entities are split in half. Training asks questions (all templates) about the first half only;
  validation/test ask about the second half, whose facts the model has only read as statements. This measures
  whether reading a fact is enough to answer questions about it.

In both modes the held-out facts are shuffled (seeded) and the first `n_validation` go to validation, the rest to
test.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from rmt.tasks.base import Example

HOLDOUTS: tuple[str, ...] = ("template", "entity")


@dataclass(frozen=True)
class Relation:
    """An attribute and the sentences that state or ask it.

    Templates use ``{e}`` for the entity and ``{v}`` for the value; statements may use ``{a}`` for the
    indefinite article of the value ("a baker", "an actor"). The value must end the statement (so the sentence
    doubles as a cloze question), and questions end in "A:" so the answer, " {v}", follows directly.
    """

    name: str
    statements: tuple[str, ...]
    questions: tuple[str, ...]

    def __post_init__(self) -> None:
        for template in self.statements:
            if not template.rstrip(".").endswith("{v}"):
                raise ValueError(f"Relation {self.name!r}: statement must end with the value, got {template!r}")
        for template in self.questions:
            if not template.endswith("A:") or "{e}" not in template:
                raise ValueError(
                    f"Relation {self.name!r}: question must contain {{e}} and end with 'A:', got {template!r}"
                )
        if len(self.questions) < 2:
            # Template hold-out needs one phrasing to hold out and at least one to train on.
            raise ValueError(
                f"Relation {self.name!r}: expected at least 2 question templates, got {len(self.questions)}"
            )

    def state(self, template: int, entity: str, value: str) -> str:
        return self.statements[template].format(e=entity, v=value, a=indefinite_article(value))

    def ask(self, template: int, entity: str) -> str:
        return self.questions[template].format(e=entity)


@dataclass(frozen=True)
class Fact:
    entity: str
    attribute: str
    value: str


def indefinite_article(word: str) -> str:
    """"a" or "an" by the first letter: good enough for the declared word lists (no "hour", no "unicorn")."""
    return "an" if word[:1].lower() in "aeiou" else "a"


def build_fact_splits(
    facts: list[Fact],
    relations: dict[str, Relation],
    holdout: str,
    n_validation: int,
    rng: random.Random,
) -> dict[str, list[Example]]:
    """Turn `facts` into train/validation/test splits (see the module docstring for the two hold-out modes).

    Training examples are shuffled; validation and test keep the order of `facts`. All randomness comes from `rng`.
    """
    if holdout not in HOLDOUTS:
        raise ValueError(f"qa_holdout: expected one of {HOLDOUTS}, got {holdout!r}")

    train = [
        Example(
            prompt="",
            target=relations[fact.attribute].state(t, fact.entity, fact.value),
            kind="text",
            meta={"entity": fact.entity, "attribute": fact.attribute, "template": t, "form": "statement"},
        )
        for fact in facts
        for t in range(len(relations[fact.attribute].statements))
    ]

    def questions(fact: Fact, templates: list[int]) -> list[Example]:
        relation = relations[fact.attribute]
        return [
            Example(
                prompt=relation.ask(t, fact.entity),
                target=" " + fact.value,
                kind="qa",
                meta={"entity": fact.entity, "attribute": fact.attribute, "template": t, "form": "question"},
            )
            for t in templates
        ]

    def all_templates(fact: Fact) -> list[int]:
        return list(range(len(relations[fact.attribute].questions)))

    held_out: list[tuple[Fact, list[int]]] = []  # (fact, the question templates it is evaluated in)
    if holdout == "template":
        for fact in facts:
            templates = all_templates(fact)
            evaluation_template = rng.choice(templates)
            train += questions(fact, [t for t in templates if t != evaluation_template])
            held_out.append((fact, [evaluation_template]))
    else:
        entities = list(dict.fromkeys(fact.entity for fact in facts))
        rng.shuffle(entities)
        trained_entities = set(entities[: len(entities) // 2])
        for fact in facts:
            if fact.entity in trained_entities:
                train += questions(fact, all_templates(fact))
            else:
                held_out.append((fact, all_templates(fact)))

    if not 0 <= n_validation < len(held_out):
        raise ValueError(
            f"n_validation: expected 0 <= n_validation < {len(held_out)} (the held-out facts, so test is not empty), "
            f"got {n_validation}"
        )
    order = list(range(len(held_out)))
    rng.shuffle(order)
    validation_ids = set(order[:n_validation])
    validation: list[Example] = []
    test: list[Example] = []
    for i, (fact, templates) in enumerate(held_out):
        (validation if i in validation_ids else test).extend(questions(fact, templates))

    rng.shuffle(train)
    return {"train": train, "validation": validation, "test": test}
