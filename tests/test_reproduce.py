"""Issue #5: refinement rounds, the chain-of-thought baseline, `rmt reproduce` end to end (tiny) and `rmt report`."""

import json
from dataclasses import replace

import pytest
import torch

from rmt.baselines.cot import evaluate_gpt, final_answer, matching_config, train_gpt
from rmt.baselines.gpt import GPT
from rmt.model.config import RMTConfig
from rmt.evaluation.evaluate import evaluate_qa
from rmt.model import RMT
from rmt.evaluation.refine import evaluate_refined, refine_prompt, refinement_examples, weights_fingerprint
from rmt.evaluation.report import ReportError, claims, load_seed_reports, write_report
from rmt.harness.demo import DemoPlan
from rmt.harness.reproduce import ReproducePlan, extrapolation_set, mean_over_seeds, parse_seeds, run_reproduce
from rmt.tasks import Example, get_task
from rmt.tokenizer import ByteTokenizer
from rmt.training import Stage

from tests.test_training import DEMO_FACTS, TINY, TINY_DEMO


def _arith(n: int = 40) -> list[Example]:
    return get_task("arithmetic", n_train=n, n_validation=0, n_test=0, seed=0).split("train")


# ----------------------------------------------------------------------------------------------- refinement
def test_refine_prompt_rereads_the_question_after_the_draft():
    assert refine_prompt("Q: 2+2? A:", " 5\nignored") == "Q: 2+2? A: 5\nQ: 2+2? A:"


def test_refinement_examples_mix_right_and_wrong_drafts_and_keep_the_target():
    examples = _arith(400)
    refined = refinement_examples(examples, seed=0)
    right = [ex.meta["refine_draft_right"] for ex in refined]
    assert 0.4 < sum(right) / len(right) < 0.6
    for ex, r in zip(examples, refined):
        assert r.target == ex.target and r.prompt.startswith(ex.prompt) and r.prompt.endswith("\n" + ex.prompt)
        draft = r.prompt[len(ex.prompt):].split("\n")[0]
        assert (draft == ex.target) == r.meta["refine_draft_right"]
    assert refinement_examples(examples, seed=0) == refined  # deterministic


def test_weights_fingerprint_sees_a_one_ulp_change():
    torch.manual_seed(0)
    model = RMT(RMTConfig.from_dict(TINY))
    before = weights_fingerprint(model)
    assert weights_fingerprint(model) == before
    with torch.no_grad():
        w = model.embed.weight
        w[0, 0] = torch.nextafter(w[0, 0], torch.tensor(1.0))
    assert weights_fingerprint(model) != before


def test_refinement_leaves_weights_identical_and_round_zero_is_plain_evaluation():
    torch.manual_seed(0)
    model = RMT(RMTConfig.from_dict(TINY))
    tok = ByteTokenizer()
    examples = _arith(12)
    res = evaluate_refined(model, examples, tok, rounds=2, max_new_tokens=4)
    assert res.weights_unchanged
    assert len(res.accuracy_by_round) == 3
    assert 0 <= res.rounds_run <= 2
    plain = evaluate_qa(model, examples, tok, max_new_tokens=4)
    assert res.acc_before == plain.accuracy
    zero = evaluate_refined(model, examples, tok, rounds=0, max_new_tokens=4)
    assert zero.accuracy_by_round == [plain.accuracy] and zero.rounds_run == 0
    assert zero.predictions == [p.split("\n")[0] for p in plain.predictions]
    with pytest.raises(ValueError, match="rounds"):
        evaluate_refined(model, examples, tok, rounds=-1)


# ----------------------------------------------------------------------------------------------- CoT baseline
def test_matching_config_is_within_ten_percent():
    for n in (300_000, 1_511_299, 5_000_000):
        cfg = matching_config(n)
        with torch.device("meta"):
            got = GPT(cfg).num_params()
        assert abs(got - n) / n <= 0.10, (n, cfg, got)


def test_final_answer_reads_the_strict_gsm8k_marker():
    assert final_answer(" 7 + 5 = 12. 12 * 2 = 24. #### 24", has_cot=True) == "24"
    assert final_answer(" 7 + 5 = 12.", has_cot=True) == ""  # no marker: no answer
    assert final_answer(" Paris\nmore", has_cot=False) == " Paris"


def test_cot_baseline_learns_and_counts_every_generated_token():
    torch.manual_seed(0)
    tok = ByteTokenizer()
    examples = _arith(4)
    gpt = GPT(matching_config(100_000, d_model=48, max_len=160))
    stages = [Stage("math", 120, {"arithmetic": 1.0}, batch_size=4, lr=3e-3, warmup=10)]
    seconds = train_gpt(gpt, tok, {"arithmetic": examples}, stages, seed=0, progress=False)
    assert seconds > 0
    res = evaluate_gpt(gpt, examples, tok, max_new_tokens=120, group_by="steps")
    assert res.accuracy == 1.0  # four memorised problems
    expected = sum(len(tok.encode(ex.cot)) + 1 for ex in examples) / len(examples)  # working + end marker
    assert res.tokens_per_answer == expected
    assert all("####" in p for p in res.predictions)


# ----------------------------------------------------------------------------------------------- reproduce
def _tiny_plan() -> ReproducePlan:
    stages = [Stage("facts", 2, {"facts-bank": 1.0}, batch_size=4, warmup=1, think_iters_min=0, think_iters_max=0,
                    frozen=["router"], router_cost=0.0),
              Stage("math", 2, {"arithmetic": 0.75, "facts-bank": 0.25}, batch_size=4, warmup=1, think_iters_min=1,
                    think_iters_max=1, intermediate=True)]
    demo = DemoPlan(RMTConfig.from_dict(TINY_DEMO), stages, n_knowledge_eval=6, n_math_eval=6, n_edits=4, n_timed=2,
                    arithmetic={"n_train": 300, "max_steps": 2, "n_test": 20, "n_validation": 10}, facts=DEMO_FACTS)
    return ReproducePlan(demo, eval_max_steps=3, n_extrapolation_per_steps=2, think_iters_eval=(1, 2),
                         refine_rounds=1, n_refine_eval=4, n_router_timing=1, n_router_examples=1,
                         cot_max_new_tokens=24)


def test_extrapolation_set_has_longer_problems_never_seen_in_training():
    plan = _tiny_plan()
    train = get_task("arithmetic", seed=0, **plan.demo.arithmetic).split("train")
    long = extrapolation_set(plan, 0, train)
    assert sorted({ex.meta["steps"] for ex in long}) == [1, 2, 3]
    assert not {ex.prompt for ex in long} & {ex.prompt for ex in train}
    assert plan.arithmetic_max_steps == 2


def test_reproduce_writes_every_key_the_issue_names_and_resumes(tmp_path):
    plan = _tiny_plan()
    top = run_reproduce([0], tmp_path, progress=False, jobs=1, plan=plan)
    report = top["per_seed"]["0"]
    on_disk = json.loads((tmp_path / "seed-0" / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    assert {"params", "acc", "tokens_per_answer", "knowledge_em"} <= set(report["cot_baseline"])
    assert abs(report["cot_baseline"]["params"] - report["params"]) / report["params"] <= 0.10
    assert set(report["math"]["acc_by_steps"]) == {"1", "2", "3"}
    assert set(report["math"]["acc_by_think_iters"]) == {"1", "2"}
    assert report["tta"]["weights_unchanged"] is True
    assert {"acc_before", "acc_after"} <= set(report["tta"])
    assert {"think_iters_knowledge", "think_iters_math"} <= set(report["router"])
    assert {"em", "em_memory_off", "edit_success"} <= set(report["knowledge"])
    assert "acc_recurrence_off" in report["math"]
    assert top["math"]["acc"] == report["math"]["acc"] and top["seeds"] == [0]
    assert [ex["kind"] for ex in report["router_examples"]] == ["knowledge", "math"]
    # the RMT measured is the demo's, with its checkpoint and report
    assert (tmp_path / "seed-0" / "rmt" / "checkpoint" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "seed-0" / "rmt" / "report.json").read_text())["math"]["n"] == 6
    # the CoT baseline gets the knowledge questions with their facts in context
    assert "context" in report["cot_baseline"]["knowledge_setting"]
    # A finished job is not run again (a killed run continues where it stopped) ...
    stamp = (tmp_path / "seed-0" / "rmt.json").stat().st_mtime_ns
    (tmp_path / "seed-0" / "cot_baseline.json").unlink()
    again = run_reproduce([0], tmp_path, progress=False, jobs=1, plan=plan)
    assert (tmp_path / "seed-0" / "rmt.json").stat().st_mtime_ns == stamp
    cot, cot_again = report["cot_baseline"], again["per_seed"]["0"]["cot_baseline"]
    assert {k: v for k, v in cot_again.items() if "seconds" not in k} == {k: v for k, v in cot.items()
                                                                        if "seconds" not in k}
    # ... and a folder holding another plan's results is refused.
    with pytest.raises(ValueError, match="different plan"):
        run_reproduce([0], tmp_path, progress=False, jobs=1, plan=replace(plan, refine_rounds=2))


# ----------------------------------------------------------------------------------------------- report
def _fake_seed(seed: int, acc: float) -> dict:
    """A seed report shaped like seed_report's, with chosen numbers (to check the arithmetic of the report)."""
    steps = {"1": acc, "2": acc, "3": acc / 2}
    return {
        "seed": seed, "params": 1000, "train_seconds": 10.0,
        "knowledge": {"em": 0.9, "em_memory_off": 0.5},
        "math": {"acc": acc, "acc_recurrence_off": acc / 4, "tokens_per_answer": 3.0, "acc_by_steps": steps,
                 "acc_by_steps_trained_range_recurrence_off": {"1": 0.1, "2": 0.1},
                 "acc_by_think_iters": {"1": acc / 2, "4": acc, "8": acc},
                 "acc_by_steps_by_think_iters": {"1": {"1": acc, "2": acc / 2, "3": 0.0}, "4": steps,
                                                 "8": {"1": acc, "2": acc, "3": acc}},
                 "train_steps_max": 2, "train_think_iters_mean": 2.0, "think_iters_default": 4},
        "cot_baseline": {"params": 1050, "acc": 0.5, "tokens_per_answer": 40.0, "acc_by_steps": {"1": 0.6, "2": 0.4},
                         "knowledge_em": 0.3, "train_seconds": 5.0},
        "tta": {"acc_before": acc, "acc_after": acc, "weights_unchanged": True, "acc_by_round": [acc, acc],
                "rounds_run": 1.0, "tokens_per_answer": 6.0},
        "router": {"think_iters_knowledge": 0.5, "think_iters_math": 2.0,
                   "seconds_per_answer_batch1": {k: {"routed": 0.01, "forced_think": 0.02}
                                                 for k in ("math", "knowledge")}},
        "ablations_from_scratch": {"no_memory": {"em": 0.6, "acc": acc, "train_seconds": 9.0},
                                   "no_think": {"em": 0.9, "acc": 0.1, "train_seconds": 4.0}},
        "router_examples": [{"kind": "math", "prompt": "Q: A:", "tokens": list("Q: A:"),
                             "p": [[0.2, 0.4, 0.4]] * 5, "think": [1] * 5}],
    }


def test_report_tables_and_plots(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    seeds = [_fake_seed(0, 0.6), _fake_seed(1, 0.8)]
    (run / "report.json").write_text(json.dumps({**mean_over_seeds(seeds), "per_seed": {"0": seeds[0], "1": seeds[1]}}))
    path = write_report([run])
    text = path.read_text()
    assert "0.700 ± 0.141" in text  # math accuracy over the two seeds
    for png in ("acc_vs_think_iters", "acc_vs_steps", "ablations", "tokens_per_answer", "router_heatmap"):
        assert (run / f"{png}.png").stat().st_size > 1000
    verdicts = {c: ok for c, _, _, ok in claims(load_seed_reports([run]))}
    assert verdicts["RMT math accuracy ≥ CoT baseline's"] is True  # 0.7 vs 0.5
    assert verdicts["…with ≥ 10× fewer generated tokens per answer"] is True  # 3 vs 40
    assert verdicts["memory off (switch): knowledge EM ≥ 20 points lower"] is True  # 0.9 -> 0.5
    assert verdicts["router: ≥ 3× more thinking iterations per token on math than knowledge"] is True  # 4x
    assert verdicts["recurrence off (trained without): math accuracy at most half"] is True
    # a reproduction without ablations trained from scratch (today's) has no such claims
    bare = [{k: v for k, v in r.items() if k != "ablations_from_scratch"} for r in seeds]
    assert not any("trained without" in c for c, _, _, _ in claims(bare))


def test_report_rejects_bad_runs(tmp_path):
    with pytest.raises(ReportError, match="no report.json"):
        load_seed_reports([tmp_path])
    (tmp_path / "report.json").write_text("{not json")
    with pytest.raises(ReportError, match="not valid JSON"):
        load_seed_reports([tmp_path])
    (tmp_path / "report.json").write_text(json.dumps({"seed": 0, "math": {}}))
    with pytest.raises(ReportError, match="lacks"):
        load_seed_reports([tmp_path])
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "report.json").write_text(json.dumps(_fake_seed(3, 0.5)))
    with pytest.raises(ReportError, match="repeat a seed"):
        load_seed_reports([a, b])


def test_parse_seeds():
    assert parse_seeds("0,1,2") == [0, 1, 2]
    for bad in ("a,b", "1,1", ""):
        with pytest.raises(SystemExit):
            parse_seeds(bad)


def test_mean_over_seeds_nests():
    m = mean_over_seeds([_fake_seed(0, 0.6), _fake_seed(1, 0.8)])
    assert m["math"]["acc"] == pytest.approx(0.7)
    assert m["math"]["acc_by_think_iters"]["1"] == pytest.approx(0.35)
    assert m["tta"]["weights_unchanged"] is True
    assert "router_examples" not in m


def test_eval_and_generate_commands_take_test_time_compute_flags(tmp_path, capsys):
    from rmt.checkpoint import save_model
    from rmt.cli import main

    torch.manual_seed(0)
    save_model(RMT(RMTConfig.from_dict(TINY)), tmp_path / "ckpt", ByteTokenizer())
    assert main(["eval", "--task", "arithmetic", "--checkpoint", str(tmp_path / "ckpt"), "--limit", "6",
                 "--think-iters", "3", "--refine-rounds", "1", "--max-gen-toks", "4", "--out", str(tmp_path / "ev")]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["n"] == 6 and out["think_iters"] == 3 and out["weights_unchanged"] is True
    assert len(out["accuracy_by_round"]) == 2
    assert len((tmp_path / "ev" / "samples.jsonl").read_text().splitlines()) == 6
    assert main(["generate", "--checkpoint", str(tmp_path / "ckpt"), "--prompt", "Q: 1? A:", "--think-iters", "2",
                 "--refine-rounds", "2", "--max-new-tokens", "3", "--json"]) == 0
    gen = json.loads(capsys.readouterr().out.strip())
    assert gen["answer"] == gen["rounds"][-1] and 1 <= len(gen["rounds"]) <= 3
    # a bad argument is one line on stderr and exit status 2, as for every command (issue 20)
    assert main(["generate", "--checkpoint", str(tmp_path), "--prompt", "x"]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_a_direct_answer_baseline_is_scored_on_its_first_line():
    """Trained without chain of thought (`cot=False`), a model answers directly even where the example has a
    chain of thought, and is scored on that answer (not on a '####' it was never taught to write)."""
    torch.manual_seed(0)
    tok = ByteTokenizer()
    examples = _arith(4)
    gpt = GPT(matching_config(100_000, d_model=48, max_len=160))
    stages = [Stage("math", 120, {"arithmetic": 1.0}, batch_size=4, lr=3e-3, warmup=10)]
    train_gpt(gpt, tok, {"arithmetic": examples}, stages, seed=0, progress=False, cot=False)
    direct = evaluate_gpt(gpt, examples, tok, max_new_tokens=8, cot=False)
    assert direct.accuracy == 1.0 and not any("####" in p for p in direct.predictions)
    assert evaluate_gpt(gpt, examples, tok, max_new_tokens=8).accuracy == 0.0  # read as CoT: no marker, no answer
