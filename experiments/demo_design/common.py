"""Shared pieces of the demo-design probes: word-level tokenizer, data encoding, timing helpers.

Self-contained on purpose (plain PyTorch + `tokenizers`); the only project import is `rmt.tasks`.
"""
from __future__ import annotations

import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers, trainers  # noqa: E402

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

SPECIALS = ["[PAD]", "[UNK]", "[EOS]"]
PAD, UNK, EOS = 0, 1, 2


def get_task_retry(name, **kw):
    """`rmt.tasks.get_task`, retried: the package is being restructured while these probes run."""
    for attempt in range(10):
        try:
            from rmt.tasks import get_task
            return get_task(name, **kw)
        except Exception as exc:  # noqa: BLE001 - retry whatever a half-moved package raises
            if attempt == 9:
                raise
            print(f"rmt.tasks import failed ({exc!r}); retrying in 60 s", flush=True)
            time.sleep(60)


def example_texts(ex):
    """(prompt, answer) strings; a `text` example (a fact statement) has an empty prompt."""
    return ex.prompt, ex.target


def build_wordlevel(texts, min_frequency=1):
    """Word-level tokenizer: whitespace + punctuation pre-tokenizer (\\w+ | [^\\w\\s]+), vocab from `texts`."""
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=SPECIALS, min_frequency=min_frequency)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def build_wordpiece(texts, vocab_size=2000):
    """Word-piece tokenizer (same pre-tokenizer): common words whole, unseen words split into known pieces."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, min_frequency=1)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def encode_qa(tok, examples, max_len=None):
    """Encode prompt+answer+EOS. Returns (ids [N,T] padded with PAD, prompt_len [N], answer ids list).

    The answer is predicted from position prompt_len-1 onward; loss/eval use answer tokens + EOS.
    """
    prompts = [e.prompt for e in examples]
    answers = [e.target for e in examples]
    p_ids = [x.ids for x in tok.encode_batch(prompts)]
    a_ids = [x.ids + [EOS] for x in tok.encode_batch(answers)]
    seqs = [p + a for p, a in zip(p_ids, a_ids)]
    T = max(len(s) for s in seqs) if max_len is None else max_len
    ids = torch.full((len(seqs), T), PAD, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s[:T])
    plen = torch.tensor([len(p) for p in p_ids])
    alen = torch.tensor([len(a) for a in a_ids])
    return ids, plen, alen


def answer_mask(ids, plen, alen):
    """Targets and mask for next-token loss on the answer tokens (incl. EOS) only."""
    B, T = ids.shape
    pos = torch.arange(T - 1).unsqueeze(0)
    # position t predicts token t+1; answer tokens live at [plen, plen+alen)
    m = (pos >= (plen - 1).unsqueeze(1)) & (pos < (plen + alen - 1).unsqueeze(1))
    return ids[:, 1:], m


class Timer:
    def __init__(self):
        self.t0 = time.perf_counter()
        self.c0 = time.process_time()

    def wall(self):
        return time.perf_counter() - self.t0

    def cpu(self):
        return time.process_time() - self.c0
