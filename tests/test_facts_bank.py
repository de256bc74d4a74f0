"""`facts-bank`: questions whose facts are only in the explicit bank; the model's text bank; the fact file and
`rmt memory write|edit|delete|list`, `rmt generate --facts`."""

import json

import pytest
import torch

from rmt.cli import main
from rmt.checkpoint import save_model
from rmt.errors import UsageError
from rmt.factfile import read_facts, write_facts
from rmt.model import RMT
from rmt.model.presets import preset
from rmt.tasks import check_leakage, get_task
from rmt.tasks.facts_bank import FactBank
from rmt.tokenizer import ByteTokenizer

SMALL = dict(n_train_entities=60, n_validation_entities=10, n_test_entities=20, bank_entities=8)


def bank_model() -> RMT:
    torch.manual_seed(0)
    tok = ByteTokenizer()
    cfg = preset("tiny", {"core": {"mixer": "gru", "n_layers": 1, "iters": 1}, "product_keys": {"enabled": False},
                          "bank": {"read": "softmax"}, "reader": {"query_ema": 8, "query_state": False},
                          "vocab_size": tok.vocab_size, "pad_id": tok.pad_id})
    return RMT(cfg)


def test_splits_hold_out_people_and_phrasing():
    task = get_task("facts-bank", **SMALL)
    train, test = task.split("train"), task.split("test")
    assert not {ex.meta["entity"] for ex in train} & {ex.meta["entity"] for ex in test}
    assert len(test) == 20 * 4 and len(train) == 60 * 4 * 2
    # a training fact is never asked in its held-out phrasing; held_out_phrasing asks exactly that one
    asked = {(ex.meta["entity"], ex.meta["attribute"], ex.meta["template"]) for ex in train}
    held = task.held_out_phrasing()
    assert len(held) == 60 * 4 and not asked & {(ex.meta["entity"], ex.meta["attribute"], ex.meta["template"])
                                                  for ex in held}
    assert check_leakage(task) == []
    for ex in test:  # the prompt never states the fact
        assert ex.target.strip() not in ex.prompt


def test_a_batch_bank_holds_the_asked_facts_and_distractors():
    task = get_task("facts-bank", **SMALL)
    rows = task.split("test")[:3]
    entries = task.bank_entries("test", rows)
    keys = dict(entries)
    for ex in rows:
        assert keys[f"{ex.meta['entity']} {ex.meta['attribute']}"] == ex.target
    assert len(entries) == 8 * 4  # bank_entities people, every attribute
    assert task.bank_entries("test", rows) == entries  # seeded: the same rows get the same bank


def test_a_key_is_the_query_its_own_text_would_send():
    # RMT.text_bank encodes a key as the reader's query at the key text's last token: a prompt made of exactly
    # the key's words then scores that entry with the same vector the bank stores.
    model = bank_model().eval()
    tok = ByteTokenizer()
    src = FactBank.from_texts([("Vorla Minet city", " Paris"), ("Bo Ka pet", " cat")], tok, rows=1)
    with torch.no_grad():
        keys = model.reader.text_keys(src.keys, src.key_lens, model.embed(src.keys))
        ids = torch.tensor([tok.encode("Vorla Minet city")])
        terms, _ = model.reader.token_terms(ids, model.embed(ids))
        q = model.reader.bank.query_proj(terms[0, -1])
    torch.testing.assert_close(q, keys[0])


def test_the_retrieval_loss_points_at_the_asked_entry():
    model = bank_model()
    task = get_task("facts-bank", **SMALL)
    rows = task.split("train")[:4]
    src = task.bank_source("train", ByteTokenizer())(rows)
    entries = task.bank_entries("train", rows)
    for ex, g in zip(rows, src.gold.tolist()):
        assert entries[g] == (f"{ex.meta['entity']} {ex.meta['attribute']}", ex.target)
    bank, aux = src.build(model)
    assert set(aux) == {"retrieval"} and aux["retrieval"].requires_grad
    assert task.bank_source("test", ByteTokenizer())(rows).build(model)[1] is None  # no labels at test time


def test_memory_off_never_builds_the_bank(monkeypatch):
    model = bank_model()
    task = get_task("facts-bank", **SMALL)
    src = task.bank_source("train", ByteTokenizer())(task.split("train")[:2])
    monkeypatch.setattr(model, "text_bank", lambda *a, **k: pytest.fail("built a bank with memory off"))
    model(torch.randint(0, 255, (2, 5)), memory=False, explicit_bank=src)


def test_fact_file_round_trip_and_errors(tmp_path):
    path = tmp_path / "facts.jsonl"
    write_facts(path, {"Vorla Minet city": "Paris", "Vorla Minet pet": "cat"})
    assert read_facts(path) == {"Vorla Minet city": "Paris", "Vorla Minet pet": "cat"}
    path.write_text('{"key": "a", "value": "b"}\n{"key": "a", "val": "c"}\n')
    with pytest.raises(UsageError, match=r"line 2: expected an object with exactly the fields key and value"):
        read_facts(path)
    path.write_text('{"key": "a", "value": "b"}\nnot json\n')
    with pytest.raises(UsageError, match="line 2: bad JSON"):
        read_facts(path)


def test_memory_commands_change_what_generate_reads(tmp_path, capsys):
    model = bank_model()
    ckpt = tmp_path / "ckpt"
    save_model(model, ckpt, ByteTokenizer())
    base = ["--checkpoint", str(ckpt)]
    assert main(["memory", "write", *base, "--key", "Vorla Minet city", "--value", "Paris"]) == 0
    assert main(["memory", "write", *base, "--key", "Vorla Minet pet", "--value", "cat"]) == 0
    assert main(["memory", "edit", *base, "--key", "Vorla Minet city", "--value", "Rome"]) == 0
    assert read_facts(ckpt / "facts.jsonl") == {"Vorla Minet city": "Rome", "Vorla Minet pet": "cat"}
    assert main(["memory", "delete", *base, "--key", "Vorla Minet pet"]) == 0
    capsys.readouterr()
    assert main(["memory", "list", *base]) == 0
    assert capsys.readouterr().out == "Vorla Minet city\tRome\n"
    assert main(["memory", "edit", *base, "--key", "Nobody city", "--value", "Oslo"]) == 2
    assert "no fact with key 'Nobody city' to edit" in capsys.readouterr().err
    # generate reads the bank (an untrained model: only that it runs and answers with the bank present)
    assert main(["generate", *base, "--facts", "--json", "--max-new-tokens", "3",
                 "--prompt", "Q: Where does Vorla Minet live? A:"]) == 0
    assert "answer" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_a_data_parallel_split_keeps_the_bank_and_splits_the_rows():
    task = get_task("facts-bank", **SMALL)
    rows = task.split("train")[:4]
    src = task.bank_source("train", ByteTokenizer())(rows)
    part = src.select(slice(1, 3)).to("cpu")
    assert part.rows == 2 and part.gold.tolist() == src.gold.tolist()[1:3]
    assert torch.equal(part.keys, src.keys) and torch.equal(part.questions, src.questions[1:3])


def test_in_context_prompts_state_the_asked_fact_among_distractors():
    task = get_task("facts-bank", **SMALL)
    rows = task.split("test")[:5]
    ctx = task.in_context("test", rows, n_people=3)
    for ex, c in zip(rows, ctx):
        facts, question = c.prompt.split("\n")
        assert question == ex.prompt and c.target == ex.target
        sentences = facts.split(". ")
        assert len(sentences) == 3 * 4  # every fact of 3 people, the asked one among them
        assert f"{ex.meta['entity']} {ex.meta['attribute']}{ex.target}" in facts
    assert task.in_context("test", rows, n_people=3) == ctx  # seeded
