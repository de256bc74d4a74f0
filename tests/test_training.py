import json

import pytest
import torch

from rmt.checkpoint import load_model
from rmt.model.config import ConfigError, RMTConfig
from rmt.harness.demo import DemoPlan, format_table, run_demo
from rmt.model import RMT
from rmt.tasks import Example
from rmt.tokenizer import ByteTokenizer, TokenizerConfig
from rmt.training import Stage, Trainer
from rmt.training.batches import TaskMix, collate, encode_example, intermediate_targets
from rmt.training.trainer import NonFiniteLoss, lr_at, param_groups

TINY = dict(d_model=32, n_prelude=1, n_coda=1, ssm={"head_dim": 16, "chunk": 16},
            product_keys={"n_keys": 8, "heads": 2, "topk": 4, "d_key": 16}, bank={"d_key": 16}, core={"iters": 2})
# the demo's kind of model, as small: a GRU core, a fact bank read by softmax, text keys
TINY_DEMO = dict(d_model=32, n_prelude=1, n_coda=1, ssm={"head_dim": 16, "chunk": 16},
                 product_keys={"enabled": False}, bank={"d_key": 16, "read": "softmax"},
                 reader={"query_ema": 8, "query_state": False}, core={"mixer": "gru", "n_layers": 1, "iters": 1})
DEMO_FACTS = {"n_train_entities": 50, "n_validation_entities": 5, "n_test_entities": 20}


def _pools():
    qa = [Example(f"Q: {a} plus 1? A:", f" {a + 1}", "qa", {"steps": 1}) for a in range(10)]
    text = [Example("", f"The number {a} comes before {a + 1}.", "text", {}) for a in range(10)]
    return {"qa": qa, "text": text}


def test_qa_rows_score_only_the_answer():
    tok = ByteTokenizer()
    ex = Example("Q: 2? A:", " 3", "qa", {})
    x, y = collate([encode_example(ex, tok)], tok.pad_id)
    scored = [int(t) for t in y[0] if t != -100]
    assert tok.decode(scored) == " 3\n"
    text = Example("", "abc", "text", {})
    x, y = collate([encode_example(text, tok), encode_example(ex, tok)], tok.pad_id)
    assert tok.decode([int(t) for t in y[0] if t != -100]) == "bc\n"  # every next token of the text
    assert (x[0, 3:] == tok.pad_id).all()


def test_intermediate_targets_score_the_running_value_inside_the_prompt():
    from rmt.tasks import get_task
    tok = ByteTokenizer()
    ex = get_task("arithmetic", seed=0, n_train=50, n_validation=0, n_test=0).split("train")[7]
    ids, start = encode_example(ex, tok)
    marks = intermediate_targets(ex, tok, ids)
    assert len(marks) == ex.meta["steps"] + 1  # after the start sentence and after each step
    x, y = collate([(ids, start)], tok.pad_id, [marks])
    for (pos, target), value in zip(marks, ex.meta["values"]):
        assert tok.decode(x[0, :pos + 1].tolist()).endswith(".")  # read up to a sentence's end
        assert int(y[0, pos]) == target == tok.encode(f" {value}")[0]
    plain = collate([(ids, start)], tok.pad_id)[1]
    assert torch.equal(y[0, start - 1:], plain[0, start - 1:])  # the answer's targets are unchanged
    assert int((y != -100).sum()) == int((plain != -100).sum()) + len(marks)
    # off by default: a stage scores them only when asked
    pools = {"arithmetic": [ex]}
    off = TaskMix(pools, {"arithmetic": 1.0}, tok, seed=0).batch(2)[1]
    on = TaskMix(pools, {"arithmetic": 1.0}, tok, seed=0, intermediate=True).batch(2)[1]
    assert int((on != -100).sum()) == int((off != -100).sum()) + 2 * len(marks)
    with pytest.raises(ConfigError, match="intermediate"):
        Stage("s", 1, {"arithmetic": 1.0}, intermediate="yes")


def test_intermediate_target_inside_a_token_is_refused():
    tok = TokenizerConfig("bpe", 300).build(["Q: Mia has 7 apples. She gets 5 more. A: 12\n"] * 20)
    ex = Example("Q: Mia has 7 apples. A:", " 7", "qa", {}, intermediate=((14, " 7"),))  # inside "apples"
    ids, _ = encode_example(ex, tok)
    with pytest.raises(ValueError, match="character 14"):
        intermediate_targets(ex, tok, ids)


def test_training_reduces_the_loss_and_is_deterministic():
    def run():
        torch.manual_seed(0)
        model = RMT(RMTConfig.from_dict(TINY))
        tr = Trainer(model, ByteTokenizer(), _pools(), seed=3, progress=False, log_every=10)
        tr.run_stage(Stage("s", 60, {"qa": 1.0, "text": 1.0}, batch_size=8, lr=1e-2, warmup=5,
                           think_iters_min=1, think_iters_max=2))
        return model, tr.history
    m1, h1 = run()
    m2, h2 = run()
    assert h1[-1]["loss"] < 0.6 * h1[0]["loss"]
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), k


def test_frozen_parts_do_not_move_and_memory_values_get_their_own_group():
    torch.manual_seed(0)
    model = RMT(RMTConfig.from_dict(TINY))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stage = Stage("s", 5, {"qa": 1.0}, batch_size=4, frozen=["prelude", "router"], memory_lr_mult=7.0)
    groups = param_groups(model, stage)
    values = model.reader.product_keys.values.weight
    assert [g["lr_mult"] for g in groups if any(p is values for p in g["params"])] == [7.0]
    Trainer(model, ByteTokenizer(), _pools(), progress=False).run_stage(stage)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(("prelude", "router")))
    assert not torch.equal(before["reader.product_keys.values.weight"], after["reader.product_keys.values.weight"])


def test_nan_loss_steps_are_skipped_then_the_run_stops(monkeypatch):
    torch.manual_seed(0)
    model = RMT(RMTConfig.from_dict(TINY))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    import rmt.training.trainer as trainer_mod

    real = trainer_mod.loss_fn
    monkeypatch.setattr(trainer_mod, "loss_fn", lambda out, y, *w: (real(out, y, *w)[0] * float("nan"),) * 2)
    tr = Trainer(model, ByteTokenizer(), _pools(), progress=False, max_bad_steps=3)
    with pytest.raises(NonFiniteLoss, match="not finite for 3 steps"):
        tr.run_stage(Stage("s", 10, {"qa": 1.0}, batch_size=4))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # no step was taken


def test_seq_len_caps_rows_and_constant_schedule():
    from rmt.training.batches import TaskMix

    mix = TaskMix(_pools(), {"text": 1.0}, ByteTokenizer(), seed=0, max_len=12)
    x, y, _ = mix.batch(4)
    assert x.shape[1] == 12
    st = Stage("s", 100, {"qa": 1.0}, lr=1.0, warmup=10, schedule="constant")
    assert lr_at(50, st) == 1.0 and lr_at(99, st) == 1.0


def test_schedule_warms_up_then_decays():
    st = Stage("s", 100, {"qa": 1.0}, lr=1.0, warmup=10, min_lr_frac=0.1)
    assert lr_at(0, st) == pytest.approx(0.1)
    assert lr_at(9, st) == pytest.approx(1.0)
    assert lr_at(99, st) == pytest.approx(0.1, abs=1e-3)


@pytest.mark.parametrize("kwargs,field", [
    ({"steps": 0}, "steps"), ({"tasks": {}}, "tasks"), ({"lr": 0.0}, "lr"),
    ({"think_iters_min": 3, "think_iters_max": 1}, "think_iters"), ({"schedule": "linear"}, "schedule"),
    ({"seq_len": -1}, "seq_len"), ({"batch_size": 2.5}, "batch_size"), ({"filters": {"qa": {"max_stps": 2}}}, "max_stps"),
])
def test_bad_stage_names_the_problem(kwargs, field):
    args = dict(name="s", steps=10, tasks={"qa": 1.0})
    args.update(kwargs)
    with pytest.raises(ConfigError, match=field):
        Stage(**args)


def test_unknown_stage_key_is_named():
    with pytest.raises(ConfigError, match="stepz"):
        Stage.from_dict({"name": "s", "stepz": 3, "tasks": {"qa": 1.0}})


def test_demo_pipeline_end_to_end(tmp_path):
    """A micro version of `rmt demo`: the real tasks, trainer, evaluation and report, a few steps each."""
    stages = [Stage("facts", 4, {"facts-bank": 1.0}, batch_size=8, frozen=["router"]),
              Stage("math", 4, {"arithmetic": 0.75, "facts-bank": 0.25}, batch_size=8)]
    plan = DemoPlan(RMTConfig.from_dict(TINY_DEMO), stages, n_knowledge_eval=20, n_math_eval=20, n_edits=10,
                    n_timed=2, arithmetic={"n_train": 2000, "n_validation": 20, "n_test": 100}, facts=DEMO_FACTS)
    report = run_demo(seed=1, out=tmp_path, plan=plan, progress=False)
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    for key in ("seed", "wall_seconds", "params"):
        assert key in on_disk
    assert set(on_disk["knowledge"]) >= {"em", "em_memory_off", "em_recurrence_off", "n", "edit_success",
                                          "deleted_still_answered", "seconds_per_answer_b1_routed"}
    assert set(on_disk["math"]) >= {"acc", "acc_recurrence_off", "acc_memory_off", "n"}
    assert on_disk["knowledge"]["n_edits"] == 10
    for v in (on_disk["knowledge"]["em"], on_disk["knowledge"]["em_memory_off"], on_disk["math"]["acc"],
              on_disk["math"]["acc_recurrence_off"]):
        assert 0.0 <= v <= 1.0
    assert on_disk["knowledge"]["n"] == 20 and on_disk["math"]["n"] == 20
    assert (tmp_path / "training.png").stat().st_size > 0
    assert (tmp_path / "checkpoint" / "model.safetensors").is_file()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert lines and all("loss" in json.loads(l) for l in lines)
    assert "knowledge EM" in format_table(report)


def test_demo_with_a_bpe_tokenizer_sizes_the_model_by_it_and_saves_it(tmp_path):
    stages = [Stage("facts", 3, {"facts-bank": 1.0}, batch_size=8, frozen=["router"])]
    plan = DemoPlan(RMTConfig.from_dict(TINY_DEMO), stages, n_knowledge_eval=10, n_math_eval=10, n_edits=5, n_timed=2,
                    arithmetic={"n_train": 500, "n_validation": 10, "n_test": 50}, facts=DEMO_FACTS,
                    tokenizer=TokenizerConfig("bpe", 400))
    report = run_demo(seed=0, out=tmp_path, plan=plan, progress=False)
    model, tok = load_model(tmp_path / "checkpoint")
    assert type(tok).__name__ == "BPETokenizer" and report["tokenizer"] == {"kind": "bpe", "vocab_size": tok.vocab_size}
    assert model.config.vocab_size == tok.vocab_size and model.config.pad_id == tok.pad_id
