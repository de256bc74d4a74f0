"""lm-evaluation-harness: the registered `rmt` model's requests, and local tasks run offline whose numbers equal
the project's own scorer (`rmt.tasks.scoring`) on the same generations."""

import os

import pytest
import torch

pytest.importorskip("lm_eval")

from rmt.checkpoint import save_model  # noqa: E402
from rmt.cli import main  # noqa: E402
from rmt.model.config import RMTConfig  # noqa: E402
from rmt.integrations.harness import RMTHarnessLM, evaluate  # noqa: E402
from rmt.model import RMT  # noqa: E402
from rmt.tasks.scoring import exact_match, gsm8k_metrics, triviaqa_metrics  # noqa: E402
from rmt.tokenizer import ByteTokenizer  # noqa: E402

TINY = dict(d_model=32, n_prelude=1, n_coda=1, ssm={"head_dim": 16}, product_keys={"n_keys": 8, "topk": 4, "d_key": 16},
            bank={"d_key": 16}, core={"iters": 2})


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("ckpt")
    save_model(RMT(RMTConfig.from_dict(TINY)).eval(), d, ByteTokenizer())
    return d


class _Req:  # lm-eval's Instance exposes .args; only that is read
    def __init__(self, *args):
        self.args = args


def test_loglikelihood_is_the_sum_of_continuation_log_probs(checkpoint):
    lm = RMTHarnessLM(str(checkpoint), batch_size=4)
    context, continuation = "Q: 2 + 2 = ", "4"
    (ll, greedy), = lm.loglikelihood([_Req(context, continuation)], disable_tqdm=True)
    # By hand: trailing space moves to the continuation; byte ids; positions that predict " 4".
    ids = list(b"Q: 2 + 2 = 4")
    logp = torch.log_softmax(lm.model(torch.tensor([ids[:-1]])).logits[0].float(), -1)
    n = len(" 4")
    expected = sum(float(logp[len(ids) - 1 - n + j, ids[len(ids) - n + j]]) for j in range(n))
    assert ll == pytest.approx(expected, abs=1e-4)
    assert greedy == all(int(logp[len(ids) - 1 - n + j].argmax()) == ids[len(ids) - n + j] for j in range(n))
    # A continuation that is the model's own greedy output is greedy by definition.
    greedy_ids = lm.model.generate(torch.tensor([list(b"Q: 2 + 2 =")]), 3).tokens[0].tolist()
    text = bytes(greedy_ids).decode("latin-1")
    if all(t < 128 for t in greedy_ids):  # decodable as the same bytes
        assert lm.loglikelihood([_Req("Q: 2 + 2 =", text)], disable_tqdm=True)[0][1] is True


def test_generate_until_stops_at_the_stop_string_and_matches_rmt_generate(checkpoint):
    lm = RMTHarnessLM(str(checkpoint))
    prompt = "Question: what is 3 + 4?\nAnswer:"
    full = lm.generate_until([_Req(prompt, {"until": [], "max_gen_toks": 20})], disable_tqdm=True)[0]
    ref = lm.model.generate(torch.tensor([list(prompt.encode())]), 20, eos_id=lm.tok.eos_id).tokens[0].tolist()
    ref_text = lm.tok.decode([t for t in ref if t != lm.tok.eos_id][: ref.index(lm.tok.eos_id) if lm.tok.eos_id in ref else 20])
    assert full == ref_text
    if len(full) > 3:
        stop = full[2:4]
        cut = lm.generate_until([_Req(prompt, {"until": [stop], "max_gen_toks": 20})], disable_tqdm=True)[0]
        assert cut == full.split(stop)[0]
    with pytest.raises(ValueError, match="greedily"):
        lm.generate_until([_Req(prompt, {"until": [], "do_sample": True, "temperature": 1.0})], disable_tqdm=True)


def test_local_tasks_run_offline_and_match_the_project_scorer(checkpoint, monkeypatch):
    from rmt.tasks import data_dir

    if not data_dir().is_dir():  # rmt_gsm8k and rmt_triviaqa read the shared JSONL files
        pytest.skip(f"shared data not found at {data_dir()}")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tasks = ["rmt_gsm8k", "rmt_triviaqa", "rmt_facts_synthetic", "rmt_arithmetic"]
    out = evaluate(checkpoint, tasks, limit=2, gen_kwargs={"max_gen_toks": 16})
    res, samples = out["results"], out["samples"]
    assert set(res) == set(tasks)
    metric = {"rmt_gsm8k": ["exact_match,strict-match", "exact_match,flexible-extract"],
              "rmt_triviaqa": ["exact_match,remove_whitespace"], "rmt_facts_synthetic": ["exact_match,first-line"],
              "rmt_arithmetic": ["exact_match,first-line"]}
    for task in tasks:
        assert set(metric[task]) <= set(res[task])
    # lm-eval logs one sample per (document, filter); the raw generation is the same for every filter.
    docs = {t: [s for s in samples[t] if s["filter"] == metric[t][0].split(",")[1]] for t in tasks}
    for task in tasks:
        assert len(docs[task]) == 2
    raw = {t: [s["resps"][0][0] for s in docs[t]] for t in tasks}
    gsm = gsm8k_metrics(raw["rmt_gsm8k"], [s["doc"]["answer"] for s in docs["rmt_gsm8k"]])
    assert res["rmt_gsm8k"]["exact_match,strict-match"] == gsm["strict_match"]
    assert res["rmt_gsm8k"]["exact_match,flexible-extract"] == gsm["flexible_extract"]
    tqa = triviaqa_metrics(raw["rmt_triviaqa"], [s["doc"]["answers"] for s in docs["rmt_triviaqa"]])
    assert res["rmt_triviaqa"]["exact_match,remove_whitespace"] == tqa["exact_match"]
    for task in ("rmt_facts_synthetic", "rmt_arithmetic"):
        ours = [exact_match(p, s["doc"]["answers"]) for p, s in zip(raw[task], docs[task])]
        assert res[task]["exact_match,first-line"] == sum(ours) / len(ours)
        # Per document too, not only the mean.
        assert [s["exact_match"] for s in docs[task]] == [float(x) for x in ours]


def test_rmt_eval_command(checkpoint, tmp_path, capsys):
    assert main(["eval", "--harness", "rmt_arithmetic", "--limit", "2", "--max-gen-toks", "4",
                 "--checkpoint", str(checkpoint), "--out", str(tmp_path / "ev")]) == 0
    assert "rmt_arithmetic" in capsys.readouterr().out
    assert (tmp_path / "ev" / "results.json").is_file()
    assert len((tmp_path / "ev" / "samples.jsonl").read_text().splitlines()) == 2


HUB_NAMES_OFFLINE = r'''
import contextlib, io, json, sys
from rmt.cli import main

out = {}
for name in ("gsm8k", "triviaqa", "no_such_task"):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["eval", "--harness", name, "--limit", "1", "--checkpoint", sys.argv[1]])
    out[name] = {"rc": rc, "stderr": err.getvalue()}
print("\nREPORT " + json.dumps(out))
'''


def test_hub_task_names_offline_say_which_local_task_to_use(checkpoint, tmp_path):
    """Issue 16: `rmt eval --harness gsm8k` offline is one line naming rmt_gsm8k, not a 40-line traceback. Run in
    a fresh process with an empty Hugging Face cache, so the Hub datasets cannot come from anywhere."""
    import json
    import subprocess
    import sys

    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", HUB_NAMES_OFFLINE, str(checkpoint)], cwd=tmp_path, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    report = json.loads(proc.stdout.split("\nREPORT ", 1)[1])
    for name, local in (("gsm8k", "rmt_gsm8k"), ("triviaqa", "rmt_triviaqa"), ("no_such_task", "rmt_gsm8k")):
        got = report[name]
        lines = [line for line in got["stderr"].splitlines() if line.startswith("rmt eval: error:")]
        assert got["rc"] != 0, name
        assert len(lines) == 1 and "Traceback" not in got["stderr"], got["stderr"]
        assert f"--harness {name}:" in lines[0] and local in lines[0], lines[0]
    assert "Hugging Face Hub" in report["gsm8k"]["stderr"] and "rmt eval --harness rmt_gsm8k" in report["gsm8k"]["stderr"]
    assert "not an lm-eval task" in report["no_such_task"]["stderr"]


def test_local_task_for_maps_hub_names_and_variants():
    from rmt.integrations.harness import local_task_for

    assert local_task_for("gsm8k") == "rmt_gsm8k" and local_task_for("gsm8k_cot") == "rmt_gsm8k"
    assert local_task_for("triviaqa") == "rmt_triviaqa"
    assert local_task_for("rmt_gsm8k") is None and local_task_for("mmlu") is None
