"""`facts-bank`: questions about invented people whose facts are only in the explicit memory bank.

The knowledge a model can only have by reading memory. Every question comes with a bank of pre-encoded facts,
(key text, value text) pairs such as ("Vorla Minet city", " Paris"), holding the asked person's facts and those
of other people (distractors); nothing about the person is in the prompt. So:

- there are many more training people (20,000 by default, 80,000 facts) than a small model's weights can
  memorise in a short run, and the **test people never appear in training at all**: their facts exist only in
  the bank written at test time (run-time facts). With memory off a model can only guess a value prior.
- a fact is stated one way (a key and a value in the bank) and asked another way (a question, in one of the
  attribute's question templates; the test people are asked in one template each, drawn per fact). For the
  training people each fact keeps one template out of training, `held_out_phrasing` asks it.

Values and attribute templates are those of `facts-synthetic`. `FactBank` is the `BankSource` of a batch:
its texts are tokenized here and encoded by the model itself (`RMT.text_bank`) inside the forward pass.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, fields, replace
from typing import Callable

import torch
from torch import Tensor

from rmt.model import BankSource, ConfigError
from rmt.tasks.base import Example, Task, seeded_rng
from rmt.tasks.facts_synthetic import ATTRIBUTES, make_names


@dataclass(frozen=True)
class FactsBankConfig:
    n_train_entities: int = 20_000
    n_validation_entities: int = 100
    n_test_entities: int = 500
    attributes: int = 4
    bank_entities: int = 32  # people whose facts a question's bank holds (the asked ones, then distractors)
    retrieval_loss: float = 1.0  # weight of the supervised retrieval loss in training (see `FactBank`)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_train_entities", "n_validation_entities", "n_test_entities", "bank_entities"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected >= 1, got {getattr(self, name)}")
        if not 1 <= self.attributes <= len(ATTRIBUTES):
            raise ValueError(f"attributes: expected 1..{len(ATTRIBUTES)}, got {self.attributes}")


def key_text(entity: str, attribute: str) -> str:
    """The text a fact is found by: the person's name and the attribute's name ("Vorla Minet city")."""
    return f"{entity} {attribute}"


@dataclass
class FactBank(BankSource):
    """A batch's bank: (key, value) texts, one bank shared by the batch's `rows` rows (a `BankSource`).

    Token ids are right-padded: keys (M, Lk) with lengths (M,), values (M, Lv) with lengths (M,).
    For training, `questions` (B, Lq) with lengths (B,) and `gold` (B,) (the entry each row asks for) add the
    retrieval loss: cross-entropy of the bank's attention at the last question token against the gold entry,
    weighted by `retrieval_weight` (supervised retrieval, as dense retrievers are trained; at test time
    nothing says which entry is asked). It needs the reader's query to be the token terms alone
    (reader.query_state = false): then the query of a question is exactly what `RMT.text_bank` makes of its text.
    """

    keys: Tensor
    key_lens: Tensor
    values: Tensor
    value_lens: Tensor
    rows: int
    questions: Tensor | None = None
    question_lens: Tensor | None = None
    gold: Tensor | None = None
    retrieval_weight: float = 0.0

    @staticmethod
    def _pad(texts: list[str], tokenizer) -> tuple[Tensor, Tensor]:
        ids = [tokenizer.encode(t) for t in texts]
        if any(not i for i in ids):
            raise ValueError("a bank entry's key or value text encodes to no tokens")
        out = torch.full((len(ids), max(map(len, ids))), tokenizer.pad_id, dtype=torch.long)
        for j, i in enumerate(ids):
            out[j, :len(i)] = torch.tensor(i)
        return out, torch.tensor([len(i) for i in ids])

    @classmethod
    def from_texts(cls, entries: list[tuple[str, str]], tokenizer, rows: int,
                   questions: list[str] | None = None, gold: list[int] | None = None,
                   retrieval_weight: float = 0.0) -> "FactBank":
        extra = {}
        if questions is not None and retrieval_weight > 0:
            q, q_lens = cls._pad(questions, tokenizer)
            extra = dict(questions=q, question_lens=q_lens, gold=torch.tensor(gold), retrieval_weight=retrieval_weight)
        return cls(*cls._pad([k for k, _ in entries], tokenizer), *cls._pad([v for _, v in entries], tokenizer),
                   rows, **extra)

    def build(self, model):
        bank = model.text_bank(self.keys, self.key_lens, self.values, self.value_lens, batch=self.rows)
        if not (model.training and self.retrieval_weight > 0 and self.gold is not None):
            return bank, None
        q = model.reader.text_keys(self.questions, self.question_lens, model.embed(self.questions))  # (B, d_key)
        scores = bank.scores(q.unsqueeze(1))[:, :, 0].float()  # (B, H, M)
        gold = self.gold.unsqueeze(1).expand(-1, scores.shape[1])
        loss = torch.nn.functional.cross_entropy(scores.flatten(0, 1), gold.flatten(), ignore_index=-1)
        return bank, {"retrieval": self.retrieval_weight * loss}

    def select(self, rows: slice) -> "FactBank":
        pick = (lambda t: t[rows] if t is not None else None)  # the bank's entries are shared by every row
        return replace(self, rows=len(range(*rows.indices(self.rows))), questions=pick(self.questions),
                       question_lens=pick(self.question_lens), gold=pick(self.gold))

    def to(self, device) -> "FactBank":
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)
                                if isinstance(getattr(self, f.name), Tensor)})


class FactsBank(Task):
    name = "facts-bank"
    Config = FactsBankConfig

    def __init__(self, config: FactsBankConfig | None = None) -> None:
        super().__init__(config)
        c = self.config
        rng = seeded_rng(c.seed, "facts-bank")
        names = make_names(c.n_train_entities + c.n_validation_entities + c.n_test_entities, rng)
        a, b = c.n_train_entities, c.n_train_entities + c.n_validation_entities
        self.entities = {"train": names[:a], "validation": names[a:b], "test": names[b:]}
        self.attribute_names = list(ATTRIBUTES)[: c.attributes]
        self.facts: dict[str, dict[str, str]] = {
            e: {attr: rng.choice(ATTRIBUTES[attr][0]) for attr in self.attribute_names} for e in names}

    def _build_splits(self) -> dict[str, list[Example]]:
        rng = seeded_rng(self.config.seed, "facts-bank/templates")
        splits = {}
        for split, entities in self.entities.items():
            rows = []
            for e in entities:
                for attr in self.attribute_names:
                    relation = ATTRIBUTES[attr][1]
                    held_out = rng.randrange(len(relation.questions))  # this fact's evaluation phrasing
                    templates = ([t for t in range(len(relation.questions)) if t != held_out] if split == "train"
                                 else [held_out])
                    rows += [Example(prompt=relation.ask(t, e), target=" " + self.facts[e][attr], kind="qa",
                                     meta={"entity": e, "attribute": attr, "template": t,
                                           "held_out_template": held_out}) for t in templates]
            if split == "train":
                seeded_rng(self.config.seed, "facts-bank/order").shuffle(rows)
            splits[split] = rows
        return splits

    def held_out_phrasing(self) -> list[Example]:
        """Questions about the training people in the phrasing each of their facts was never asked in during
        training (one per fact, in people order): the trained-people recall, with the bank."""
        seen = {}
        for ex in self.split("train"):
            seen.setdefault((ex.meta["entity"], ex.meta["attribute"]), ex.meta["held_out_template"])
        return [Example(prompt=ATTRIBUTES[attr][1].ask(t, e), target=" " + self.facts[e][attr], kind="qa",
                        meta={"entity": e, "attribute": attr, "template": t, "held_out_template": t})
                for e in self.entities["train"] for attr in self.attribute_names for t in [seen[(e, attr)]]]

    def bank_entries(self, split: str, examples: list[Example], facts: dict[str, dict[str, str]] | None = None
                     ) -> list[tuple[str, str]]:
        """The (key, value) texts of the bank for `examples`: every fact of the people they ask about, then of
        distractor people of the same split until `bank_entities` people, in a seeded order. `facts` overrides
        what is written (edited or deleted facts); by default the task's own."""
        facts = self.facts if facts is None else facts
        asked = list(dict.fromkeys(ex.meta["entity"] for ex in examples))
        rng = random.Random(f"{self.config.seed}/bank/{split}/" + "|".join(asked))
        pool = self.entities[split]
        people = set(asked)
        while len(people) < min(self.config.bank_entities, len(pool)):
            people.add(pool[rng.randrange(len(pool))])
        order = sorted(people)
        rng.shuffle(order)
        return [(key_text(e, attr), " " + v) for e in order for attr, v in facts.get(e, {}).items()]

    def in_context(self, split: str, examples: list[Example], n_people: int = 4) -> list[Example]:
        """The questions for a model without a bank: each prompt starts with the facts of the asked person and of
        n_people - 1 distractor people of the same split, one sentence per fact ("Vorla Minet city Paris."), in
        a seeded order, then the question. (An oracle retrieval: a bank holds far more people.)"""
        pool, out = self.entities[split], []
        for ex in examples:
            e = ex.meta["entity"]
            rng = random.Random(f"{self.config.seed}/context/{split}/{e}/{ex.meta['attribute']}/{ex.meta['template']}")
            people = {e}
            while len(people) < min(n_people, len(pool)):
                people.add(pool[rng.randrange(len(pool))])
            lines = [f"{key_text(p, attr)} {v}." for p in sorted(people) for attr, v in self.facts[p].items()]
            rng.shuffle(lines)
            out.append(replace(ex, prompt=" ".join(lines) + "\n" + ex.prompt))
        return out

    def bank_source(self, split: str, tokenizer=None) -> Callable[[list[Example]], FactBank]:
        """examples -> their `FactBank`; training batches also carry the retrieval loss's questions and gold
        entries (`retrieval_loss`)."""
        if tokenizer is None:
            raise ValueError("facts-bank: the bank's texts need the tokenizer (bank_source(split, tokenizer))")
        weight = self.config.retrieval_loss if split == "train" else 0.0

        def source(examples: list[Example]) -> FactBank:
            entries = self.bank_entries(split, examples)
            index = {key: i for i, (key, _) in enumerate(entries)}
            gold = [index[key_text(ex.meta["entity"], ex.meta["attribute"])] for ex in examples]
            return FactBank.from_texts(entries, tokenizer, len(examples), [ex.prompt for ex in examples], gold,
                                       weight)
        return source

    def check_model(self, config) -> None:
        if not config.bank.enabled:
            raise ConfigError("facts-bank needs the explicit memory bank (model.bank.enabled = true)")
        if self.config.retrieval_loss > 0 and config.reader.query_state:
            raise ConfigError("facts-bank's retrieval loss needs model.reader.query_state = false (the query is the "
                              "question's token terms, which is what the loss trains)")
        if not config.reader.query_ema:
            raise ConfigError("facts-bank needs the reader's token bag (model.reader.query_ema > 0): a fact's key "
                              "is encoded as the query that should find it")
