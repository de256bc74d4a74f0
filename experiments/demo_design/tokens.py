"""Q1: word-level tokens for `arithmetic` and `facts-synthetic` (vocab from TRAIN only).

Reports vocabulary size, tokens per example vs bytes, numbers as whole tokens, and [UNK]s in test prompts/answers,
plus the run-time-facts case (entities never seen in training) and a word-piece fallback for it.
Run: OMP_NUM_THREADS=1 ../../.venv/bin/python tokens.py
"""
import json
import statistics as st

from common import UNK, build_wordlevel, build_wordpiece, get_task_retry


def stats(tok, examples, name):
    enc_p = tok.encode_batch([e.prompt for e in examples])
    enc_a = tok.encode_batch([e.target for e in examples])
    n_tok = [len(p.ids) + len(a.ids) + 1 for p, a in zip(enc_p, enc_a)]  # +1 EOS
    n_byte = [len((e.prompt + e.target + "\n").encode()) for e in examples]
    unk_p = sum(i == UNK for p in enc_p for i in p.ids)
    unk_a = sum(i == UNK for a in enc_a for i in a.ids)
    ex_unk = sum(any(i == UNK for i in p.ids + a.ids) for p, a in zip(enc_p, enc_a))
    ans_len = [len(a.ids) for a in enc_a]
    r = dict(split=name, n=len(examples), tokens_mean=round(st.mean(n_tok), 1), tokens_max=max(n_tok),
             bytes_mean=round(st.mean(n_byte), 1), bytes_max=max(n_byte),
             unk_in_prompts=unk_p, unk_in_answers=unk_a, examples_with_unk=ex_unk,
             answer_tokens_max=max(ans_len))
    print(json.dumps(r))
    return r


def main():
    out = {}
    arith = get_task_retry("arithmetic")
    tr, te = arith.split("train"), arith.split("test")
    tok = build_wordlevel([e.prompt + e.target for e in tr])
    v = tok.get_vocab()
    nums = sorted(int(w) for w in v if w.isdigit())
    print(f"arithmetic: vocab {tok.get_vocab_size()} (incl. 3 specials); number tokens {len(nums)} "
          f"({nums[0]}..{nums[-1]}, missing 0..99: {sorted(set(range(100)) - set(nums))})")
    print("example:", tok.encode(te[0].prompt + te[0].target).tokens)
    out["arithmetic"] = dict(vocab=tok.get_vocab_size(), numbers=len(nums),
                             train=stats(tok, tr, "train"), test=stats(tok, te, "test"))
    # every test answer is a single whole-number token in vocab?
    ans_ok = all(len(tok.encode(e.target).ids) == 1 and tok.encode(e.target).ids[0] != UNK for e in te)
    print("every arithmetic test answer is one in-vocab token:", ans_ok)

    facts = get_task_retry("facts-synthetic")
    ftr, fte = facts.split("train"), facts.split("test")
    ftok = build_wordlevel([e.prompt + " " + e.target for e in ftr])
    print(f"facts-synthetic: vocab {ftok.get_vocab_size()}; train {len(ftr)} examples "
          f"({sum(e.kind == 'text' for e in ftr)} statements), test {len(fte)} questions (held-out phrasing)")
    print("example:", ftok.encode(fte[0].prompt + fte[0].target).tokens)
    out["facts"] = dict(vocab=ftok.get_vocab_size(), train=stats(ftok, ftr, "train"), test=stats(ftok, fte, "test"))

    # Run-time facts: 100 entities beyond the 500 trained ones (names never in the tokenizer's training text).
    big = get_task_retry("facts-synthetic", n_entities=600, qa_holdout="template")
    trained = set(facts.entities)
    new = [n for n in big.entities if n not in trained]
    new_qs = [e for e in big.split("test") + big.split("train") if e.kind == "qa" and e.meta["entity"] in set(new)]
    print(f"run-time entities: {len(new)} new names, {len(new_qs)} questions about them")
    out["facts_runtime_wordlevel"] = stats(ftok, new_qs, "runtime-entities(wordlevel)")
    both = build_wordlevel([e.prompt + " " + e.target for e in ftr + arith.split("train")[:20000]])
    print(f"joint word-level vocab (facts + arithmetic train): {both.get_vocab_size()}")
    out["joint_vocab"] = both.get_vocab_size()
    for vs in (1000, 1500):
        wp = build_wordpiece([e.prompt + " " + e.target for e in ftr], vocab_size=vs)
        print(f"word-piece vocab {wp.get_vocab_size()}: new name 'X' ->", wp.encode(new[0]).tokens,
              "| trained name ->", wp.encode(facts.entities[0]).tokens)
        out[f"facts_runtime_wordpiece{vs}"] = stats(wp, new_qs, f"runtime-entities(wordpiece {vs})")
        out[f"facts_test_wordpiece{vs}"] = stats(wp, fte, f"test(wordpiece {vs})")
    json.dump(out, open("results/tokens.json", "w"), indent=1)


if __name__ == "__main__":
    main()
