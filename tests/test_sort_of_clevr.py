"""Sort-of-CLEVR: the generator (determinism, no overlap, hand-checked answers, answer statistics, cache), the
softmax memory read, the image encoder inside the model, and `rmt train` ending with the visual report."""

import json
import math
from collections import Counter

import numpy as np
import pytest
import torch

from rmt.cli import main
from rmt.model import RMT, ConfigError, RMTConfig, loss_fn
from rmt.model.memory import SoftmaxMemoryBank
from rmt.tasks import get_task
from rmt.tasks.image_encoder import ImageBank, PatchEncoder
from rmt.tasks.sort_of_clevr import ANSWERS, COLORS, QUESTIONS, RGB, SortOfClevrConfig, answer, generate, stamps
from tests.oracles import softmax_attention_reference

SMALL = dict(n_train=300, n_validation=20, n_test=20, cache=False)


@pytest.fixture(scope="module")
def scenes():
    return generate(300, SortOfClevrConfig(**SMALL), "train")


# ------------------------------------------------------------------------------------------------ generator
def test_generation_is_deterministic_from_the_seed():
    a = generate(20, SortOfClevrConfig(seed=1, cache=False), "train")
    b = generate(20, SortOfClevrConfig(seed=1, cache=False), "train")
    c = generate(20, SortOfClevrConfig(seed=2, cache=False), "train")
    assert np.array_equal(a.images, b.images) and np.array_equal(a.questions, b.questions)
    assert not np.array_equal(a.images, c.images)


def test_objects_do_not_overlap_and_are_drawn_in_their_colour(scenes):
    size = 10
    square, circle = stamps(size)
    for n in range(len(scenes.images)):
        covered = np.zeros((75, 75), dtype=int)
        for colour, (x, y, s) in enumerate(scenes.objects[n]):
            mask = square if s == 0 else circle
            covered[y:y + size, x:x + size] += mask
            # every pixel of the shape has the object's colour
            assert (scenes.images[n, y:y + size, x:x + size][mask] == RGB[colour]).all()
        assert covered.max() == 1  # no pixel belongs to two objects
        # and the pixels of no object are anything but background
        assert ((scenes.images[n] != 255).any(-1) == (covered == 1)).all()


def test_a_circle_is_not_a_square():
    square, circle = stamps(10)
    assert square.sum() == 100 and 60 < circle.sum() < 100
    assert not circle[0, 0] and circle[5, 5]


def test_answers_on_a_hand_checked_scene():
    # Top-left corners (x, y) and shapes (0 square, 1 circle) per colour; centres are corner + 4.5.
    objects = np.array([
        [0, 0, 0],     # red square, top-left corner
        [15, 0, 1],    # green circle, right of red: red's closest
        [60, 60, 0],   # blue square, bottom-right: furthest from red
        [60, 0, 1],    # orange circle, top-right
        [0, 60, 1],    # gray circle, bottom-left
        [30, 40, 0],   # yellow square, centre x 34.5 < 37.5 (left), centre y 44.5 (bottom)
    ], dtype=np.int16)
    q = {name: i for i, (name, _, _) in enumerate(QUESTIONS)}
    red, green, blue, orange, gray, yellow = range(6)
    assert answer(objects, red, q["shape"], 75, 10) == "square"
    assert answer(objects, green, q["shape"], 75, 10) == "circle"
    assert answer(objects, red, q["left"], 75, 10) == "yes"
    assert answer(objects, orange, q["left"], 75, 10) == "no"
    assert answer(objects, yellow, q["left"], 75, 10) == "yes"
    assert answer(objects, yellow, q["top"], 75, 10) == "no"
    assert answer(objects, orange, q["top"], 75, 10) == "yes"
    assert answer(objects, red, q["closest"], 75, 10) == "circle"  # green
    assert answer(objects, red, q["furthest"], 75, 10) == "square"  # blue
    assert answer(objects, blue, q["furthest"], 75, 10) == "square"  # red
    assert answer(objects, gray, q["closest"], 75, 10) == "square"  # yellow (30, 40): 31.6 px vs 60 to red
    assert answer(objects, red, q["count"], 75, 10) == "3"  # red, blue, yellow squares
    assert answer(objects, green, q["count"], 75, 10) == "3"


def test_every_stored_answer_agrees_with_the_objects(scenes):
    for image, colour, subtype, answer_index in scenes.questions:
        assert ANSWERS[answer_index] == answer(scenes.objects[image], colour, subtype, 75, 10)


def test_answer_distribution_per_question_type(scenes):
    """Each question's answers have the distribution the generator promises: colours and subtypes uniform, yes/no
    and square/circle balanced (objects' shapes and positions are uniform), the count 1 + Binomial(5, 1/2).
    Bounds are 5 standard deviations of the binomial sampling noise at this sample size."""
    by_question: dict[str, Counter] = {name: Counter() for name, _, _ in QUESTIONS}
    for _, _, subtype, answer_index in scenes.questions:
        by_question[QUESTIONS[subtype][0]][ANSWERS[answer_index]] += 1
    kinds = Counter(QUESTIONS[s][1] for s in scenes.questions[:, 2])
    assert kinds["non_relational"] == kinds["relational"] == 300 * 10

    def close(count: int, n: int, p: float) -> bool:
        return abs(count - n * p) <= 5 * math.sqrt(n * p * (1 - p))

    for name, (a, b) in {"shape": ("square", "circle"), "left": ("yes", "no"), "top": ("yes", "no"),
                         "closest": ("square", "circle"), "furthest": ("square", "circle")}.items():
        counts = by_question[name]
        assert set(counts) == {a, b}, name
        assert close(counts[a], sum(counts.values()), 0.5), (name, counts)
    counts = by_question["count"]
    n = sum(counts.values())
    assert set(counts) <= {"1", "2", "3", "4", "5", "6"}
    for k in range(1, 7):
        assert close(counts[str(k)], n, math.comb(5, k - 1) / 32), (k, counts)
    colours = Counter(int(c) for c in scenes.questions[:, 1])
    assert all(close(colours[c], len(scenes.questions), 1 / 6) for c in range(6))


def test_task_splits_images_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RMT_CACHE_DIR", str(tmp_path))
    cfg = dict(n_train=30, n_validation=5, n_test=10)
    task = get_task("sort-of-clevr", **cfg)
    test = task.split("test")
    assert len(test) == 10 * 20 and task.images("test").shape == (10, 75, 75, 3)
    assert task.images("test").dtype == np.uint8
    ex = test[0]
    assert ex.prompt.startswith("Q: ") and ex.prompt.endswith(" A:") and ex.target.strip() in ANSWERS
    assert ex.meta["color"] in COLORS and ex.meta["color"] in ex.prompt
    # the curriculum's step filter separates the question kinds
    assert all(e.meta["steps"] == (1 if e.meta["type"] == "non_relational" else 2) for e in test)
    assert task.cache_path().is_file() and str(task.cache_path()).startswith(str(tmp_path))
    again = get_task("sort-of-clevr", **cfg)  # read back from the cache file
    assert np.array_equal(again.images("train"), task.images("train"))
    assert [e.prompt for e in again.split("train")] == [e.prompt for e in task.split("train")]
    assert get_task("sort-of-clevr", **cfg, seed=1).cache_path() != task.cache_path()
    # the test images are the same whatever the size of the training set
    bigger = get_task("sort-of-clevr", **{**cfg, "n_train": 40})
    assert np.array_equal(bigger.images("test"), task.images("test"))


def test_bad_config_is_named():
    with pytest.raises(ValueError, match="n_test"):
        SortOfClevrConfig(n_test=-1)
    with pytest.raises(ValueError, match="image_size"):
        SortOfClevrConfig(image_size=20)


def test_data_show_prints_the_answer_statistics(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RMT_CACHE_DIR", str(tmp_path))
    assert main(["data", "show", "sort-of-clevr", "--n", "1", "--split", "test"]) == 0
    out = capsys.readouterr().out
    for line in ("answers (non_relational):", "answers (relational):", "answers (count):", "question type:"):
        assert line in out


# ------------------------------------------------------------------------------------------------ softmax read
def test_softmax_bank_matches_the_reference_with_masks_and_two_writes():
    torch.manual_seed(0)
    q = torch.randn(3, 5, 8)
    k, v = torch.randn(3, 7, 8), torch.randn(3, 7, 12)
    mask = torch.rand(3, 7) > 0.3
    mask[2] = False  # an empty row reads zero
    bank = SoftmaxMemoryBank(8, 12, heads=2)
    bank.write(k[:, :4], v[:, :4], mask[:, :4])
    bank.write(k[:, 4:], v[:, 4:], mask[:, 4:])
    ref = softmax_attention_reference(q, k, v, heads=2, mask=mask)
    assert torch.allclose(bank.read(q).double(), ref, atol=1e-5)
    assert bank.read(q)[2].abs().max() == 0
    assert bank.num_entries.tolist() == mask.sum(1).tolist()


def test_softmax_bank_can_pick_one_entry_and_records_weights():
    keys = torch.zeros(1, 25, 4)
    keys[0, 7] = torch.tensor([30.0, 0, 0, 0])
    values = torch.arange(25.0).view(1, 25, 1).expand(1, 25, 4).contiguous()
    bank = SoftmaxMemoryBank(4, 4)
    bank.record = True
    bank.write(keys, values)
    out = bank.read(torch.tensor([[[1.0, 0, 0, 0]]]))
    assert abs(float(out[0, 0, 0]) - 7.0) < 1e-3  # the linear read's elu+1 features cannot be this sharp
    assert bank.recorded[0].shape == (1, 1, 1, 25) and float(bank.recorded[0][0, 0, 0, 7]) > 0.999


def test_linear_read_with_several_heads_is_refused():
    with pytest.raises(ConfigError, match=r"model\.bank\.heads"):
        RMTConfig(bank={"heads": 4})


# ------------------------------------------------------------------------------------------------ model
VISION = dict(d_model=32, n_prelude=1, n_coda=1, ssm={"head_dim": 16, "chunk": 16}, product_keys={"enabled": False},
              bank={"read": "softmax", "heads": 2, "d_key": 16}, reader={"core_reads": True},
              encoders={"image": {"type": "image-patches", "channels": 8}}, core={"iters": 2})


def vision_config(vision: dict | None = None, **changes) -> RMTConfig:
    """VISION with some sections changed (partial dicts are merged into the section); `vision`: settings of
    the image encoder, merged into encoders.image."""
    if vision is not None:
        changes["encoders"] = {"image": vision}
    return RMTConfig.from_dict(VISION).replace(**changes)


def test_vision_config_round_trips_and_defaults_stay_off(tmp_path):
    cfg = vision_config()
    assert RMTConfig.from_toml(cfg.to_toml()) == cfg
    cfg.to_json(tmp_path / "c.json")
    assert RMTConfig.from_json(tmp_path / "c.json") == cfg
    default = RMTConfig()
    assert default.encoders == {} and not default.reader.core_reads and default.bank.read == "linear"
    assert len(RMT(default).encoders) == 0
    with pytest.raises(ConfigError, match=r"model\.encoders\.image\.patch"):
        vision_config(vision={"patch": 4})


def test_the_image_encoder_is_the_task_s_not_an_option_of_the_core():
    """The model config names the encoder by type; its code and settings live in rmt.tasks.image_encoder. An
    old config's [vision] section migrates to it, and a bad encoder table names the field."""
    model = RMT(vision_config())
    assert isinstance(model.encoders["image"], PatchEncoder) and model.encoders["image"].config.channels == 8
    old = {k: v for k, v in VISION.items() if k != "encoders"} | {"vision": {"enabled": True, "channels": 8}}
    assert RMTConfig.from_dict(old) == vision_config()
    assert RMTConfig.from_dict(old | {"vision": {"enabled": False, "channels": 8}}).encoders == {}
    text_only = {k: v for k, v in VISION.items() if k != "encoders"}
    custom = text_only | {"encoders": {"image": {"type": "rmt.tasks.image_encoder:PatchEncoder", "channels": 8}}}
    assert isinstance(RMT(RMTConfig.from_dict(custom)).encoders["image"], PatchEncoder)
    for encoders, match in [({"image": {"channels": 8}}, r"model\.encoders\.image: expected a table with a string 'type'"),
                            ({"image": {"type": "vit"}}, r"model\.encoders\.image\.type: expected one of \['image-patches'\]"),
                            ({"image": {"type": "rmt.nowhere:Encoder"}}, r"model\.encoders\.image\.type: cannot import"),
                            ({"image": {"type": "rmt.model.config:RMTConfig"}}, "is not an encoder"),
                            ({"image": {"type": "image-patches", "size": 75}}, r"unknown model\.encoders\.image key"),
                            ({"pic": {"type": "image-patches", "stem": "vit"}}, r"model\.encoders\.pic\.stem")]:
        with pytest.raises(ConfigError, match=match):
            RMTConfig.from_dict(text_only | {"encoders": encoders})
    with pytest.raises(ConfigError, match=r"model\.encoders\.image: an encoder writes into the explicit bank"):
        vision_config(bank={"enabled": False}, reader={"core_reads": False})


@pytest.mark.parametrize("options", [{}, {"vision": {"stem": "conv", "conv_layers": 3}, "reader": {"query_conv": 6},
                                          "bank": {"sink": True}}, {"vision": {"stem": "pool", "conv_layers": 3}},
                                     {"reader": {"query_ema": 16}}, {"reader": {"query_ema": 8, "query_conv": 4}},
                                     {"reader": {"query_ema": 64, "query_state": False}},
                                     {"reader": {"query_ema": 16, "query_state": False, "core_keys": True}},
                                     {"vision": {"stem": "conv", "conv_layers": 3, "hop": 16, "hop_heads": 2,
                                                 "hop_query": 16}, "bank": {"sink": True}}])
def test_image_model_decodes_token_by_token_like_the_full_forward(options):
    torch.manual_seed(0)
    model = RMT(vision_config(**options)).eval()
    images = torch.randint(0, 256, (2, 75, 75, 3), dtype=torch.uint8)
    idx = torch.randint(0, 256, (2, 12))
    bank, _ = ImageBank(images).build(model)
    with torch.no_grad():
        full = model(idx, explicit_bank=bank).logits
        assert torch.allclose(model(idx, explicit_bank=ImageBank(images)).logits, full)
        logits, _, cache = model.prefill(idx[:, :8], explicit_bank=bank)
        assert torch.allclose(logits, full[:, 7], atol=1e-5)
        for t in range(8, 12):
            logits, _, cache = model.step(idx[:, t], cache)
            assert torch.allclose(logits, full[:, t], atol=1e-4)
        # the picture matters with memory on and is never looked at with memory off
        other = model(idx, explicit_bank=ImageBank(images.flip(0))).logits
        assert not torch.allclose(other, full)
        assert torch.equal(model(idx, explicit_bank=ImageBank(images), memory=False).logits,
                           model(idx, memory=False).logits)


def test_query_decayed_sum_is_the_recurrence_it_claims():
    """reader.query_ema: the term added to the queries is s_t = lambda s_{t-1} + sqrt(1 - lambda^2) e_t over the
    query byte embeddings, lambda per group of channels (learned, all starting at the configured time constant),
    whatever the sequence's length against the scan's chunk."""
    torch.manual_seed(0)
    model = RMT(vision_config(ssm={"chunk": 8}, reader={"query_ema": 40}))
    reader = model.reader
    lam = torch.sigmoid(reader.ema_logit.detach())
    tau = -1 / lam.log()  # lambda = exp(-1 / tau)
    assert torch.allclose(tau, torch.full_like(tau, 40.0))
    with torch.no_grad():  # groups with different decays, as after training
        reader.ema_logit.copy_(torch.linspace(-1.0, 4.0, len(lam)))
    lam = torch.sigmoid(reader.ema_logit.detach())
    idx = torch.randint(0, 256, (3, 21))
    term, state = reader.token_terms(idx, model.embed(idx))
    assert state.tail is None
    lam_c = lam.repeat_interleave(model.config.d_model // len(lam))  # per channel
    e = reader.ema_embed(idx)
    s = torch.zeros(3, model.config.d_model)
    for t in range(21):
        s = lam_c * s + (1 - lam_c ** 2).sqrt() * e[:, t]
        assert torch.allclose(term[:, t], s, atol=1e-4)
    assert torch.allclose(state.ema, s, atol=1e-4)
    with pytest.raises(ConfigError, match=r"model\.reader\.query_ema"):
        vision_config(reader={"query_ema": 1})
    with pytest.raises(ConfigError, match=r"model\.reader\.query_state"):
        vision_config(reader={"query_state": False})


def test_query_without_the_state_reads_with_the_token_terms_only():
    """reader.query_state = false: the prelude read's query is the bag alone, so a change of the prelude's state
    leaves every read (and so the bank's attention) unchanged."""
    torch.manual_seed(0)
    model = RMT(vision_config(reader={"query_ema": 16, "query_state": False})).eval()
    images = torch.randint(0, 256, (2, 75, 75, 3), dtype=torch.uint8)
    idx = torch.randint(0, 256, (2, 9))
    h = torch.randn(2, 9, model.config.d_model)
    bank, _ = ImageBank(images).build(model)
    terms, _ = model.reader.token_terms(idx, model.embed(idx))
    with torch.no_grad():
        assert torch.allclose(model.reader.read(h, terms, bank), model.reader.read(h * 3 + 1, terms, bank))
        assert torch.allclose(model.reader.read(h, terms, bank), model.reader.bank(terms, bank))


def test_sink_read_is_a_read_with_one_more_zero_entry():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, 8), torch.randn(2, 5, 8), torch.randn(2, 5, 6)
    bank = SoftmaxMemoryBank(8, 6, heads=2, sink=True)
    bank.write(k, v)
    zero = torch.zeros(2, 1, 8)  # score q.0 = 0 and value 0: exactly the implicit sink entry
    ref = softmax_attention_reference(q, torch.cat([k, zero], 1), torch.cat([v, zero[..., :6]], 1), heads=2)
    assert torch.allclose(bank.read(q).double(), ref, atol=1e-5)
    # the weights say how much matched: two equal matching entries read twice as much as one (far from saturation)
    one, two = SoftmaxMemoryBank(1, 1, sink=True), SoftmaxMemoryBank(1, 1, sink=True)
    one.write(torch.tensor([[[-3.0], [-50.0]]]), torch.ones(1, 2, 1))
    two.write(torch.tensor([[[-3.0], [-3.0]]]), torch.ones(1, 2, 1))
    query = torch.ones(1, 1, 1)
    assert 1.9 < float(two.read(query)) / float(one.read(query)) < 2.0
    empty = SoftmaxMemoryBank(8, 6, sink=True)
    empty.write(k, v, torch.zeros(2, 5, dtype=torch.bool))
    assert empty.read(q).abs().max() == 0


@pytest.mark.parametrize("stem,layers,grid", [("patch", 0, 5), ("conv", 3, 10), ("conv", 4, 5), ("pool", 3, 9)])
def test_image_stems_and_their_grids(stem, layers, grid):
    cfg = vision_config(vision={"patch": 15, "stem": stem, "conv_layers": max(layers, 1)})
    model = RMT(cfg)
    images = torch.randint(0, 256, (2, 75, 75, 3), dtype=torch.uint8)
    assert model.encoders["image"].grid == grid and model.encoders["image"](images).shape == (2, grid * grid, cfg.d_model)
    with pytest.raises(ConfigError, match=r"model\.encoders\.image\.stem"):
        vision_config(vision={"stem": "vit"})


def test_image_keys_start_from_what_a_patch_shows_not_where_it_is():
    torch.manual_seed(0)
    model = RMT(vision_config())
    images = torch.randint(0, 256, (2, 75, 75, 3), dtype=torch.uint8)
    key_inputs, entries = model.encoders["image"].encode(images)
    assert torch.equal(entries, model.encoders["image"](images))
    bank, _ = ImageBank(images).build(model)
    assert torch.allclose(bank.keys, model.reader.bank.key_proj(key_inputs))
    # at initialisation the position reaches the values but not the keys (key_position starts at zero)
    assert model.encoders["image"].key_position.weight.abs().max() == 0
    with torch.no_grad():
        model.encoders["image"].row.add_(1.0)
        k2, e2 = model.encoders["image"].encode(images)
    assert torch.equal(k2, key_inputs) and not torch.allclose(e2, entries)


def test_core_keys_give_the_core_reads_their_own_keys_over_the_same_entries():
    """reader.core_keys: the bank gets a view with the same values and keys core_key(entries); the prelude's read
    keeps its keys, the core's re-reads use the view's, and the read pictures show both."""
    torch.manual_seed(0)
    model = RMT(vision_config(reader={"core_keys": True})).eval()
    images = torch.randint(0, 256, (2, 75, 75, 3), dtype=torch.uint8)
    idx = torch.randint(0, 256, (2, 10))
    bank, _ = ImageBank(images).build(model)
    key_inputs, entries = model.encoders["image"].encode(images)
    assert torch.allclose(bank.keys, model.reader.bank.key_proj(key_inputs))
    assert torch.allclose(bank.core_view.keys, model.reader.core_key(entries))
    assert torch.equal(bank.core_view.values, bank.values)
    with torch.no_grad():
        before = model(idx, explicit_bank=bank).logits
        k0 = model(idx, explicit_bank=bank, think_iters=0).logits
        model.reader.core_key.weight.mul_(3.0)
        bank, _ = ImageBank(images).build(model)
        assert not torch.allclose(model(idx, explicit_bank=bank).logits, before)  # the core reads the view
        assert torch.allclose(model(idx, explicit_bank=bank, think_iters=0).logits, k0)  # the prelude does not
    assert "core_key" not in dict(RMT(vision_config()).reader.named_children())  # off by default: no weights
    with pytest.raises(ConfigError, match=r"model\.reader\.core_keys: .*needs reader\.core_reads"):
        vision_config(reader={"core_keys": True, "core_reads": False})


HOP = {"stem": "conv", "conv_layers": 3, "hop": 16, "hop_heads": 2, "hop_query": 16}


def test_the_hop_scores_the_core_reads_from_where_the_prelude_read_looked():
    """encoders.image.hop: the core's re-reads are a HopRead over the bank's values, its logits an MLP of the cell,
    the core's query and the cell's offset from the prelude read's focus (computed here by hand); the prelude's
    read is the plain softmax read; the read pictures get both; the task refuses a model that cannot hold it."""
    torch.manual_seed(0)
    model = RMT(vision_config(vision=HOP, bank={"sink": True})).eval()
    enc = model.encoders["image"]
    images = torch.randint(0, 256, (2, 75, 75, 3), dtype=torch.uint8)
    bank, _ = ImageBank(images).build(model)
    key_inputs, entries = enc.encode(images)
    q1, q2 = torch.randn(2, 3, 16), torch.randn(2, 3, 16)
    with torch.no_grad():
        r1 = bank.read(q1)
        plain = SoftmaxMemoryBank(16, bank.d_value, 2, sink=True)
        plain.write(bank.keys, bank.values)
        assert torch.allclose(r1, plain.read(q1))
        a1 = bank.focus  # (B, H, T, M)
        pos = enc.coords[:, :2]
        own = a1.mean(1) / a1.mean(1).amax(-1, keepdim=True)
        top = torch.where(own >= 0.5, own, torch.zeros_like(own))  # the cells at >= half the top weight
        f = torch.einsum("btm,mc->btc", top, pos) / top.sum(-1)[..., None]
        rel = pos[None, None] - f[:, :, None]
        geometry = torch.cat([rel, (rel ** 2).sum(-1, keepdim=True), own[..., None]], -1)
        hidden = enc.hop.cell(entries)[:, None] + enc.hop.query(q2)[:, :, None] + enc.hop.geometry(geometry)
        logits = enc.hop.out(torch.nn.functional.gelu(hidden)).permute(0, 3, 1, 2)  # (B, H, T, M)
        # + each head's distance slope and inhibition of the prelude read's cells (ALiBi-like start)
        logits = logits + (enc.hop.slope.view(1, -1, 1, 1) * (rel ** 2).sum(-1)[:, None]
                           + enc.hop.inhibit.view(1, -1, 1, 1) * own[:, None])
        assert enc.hop.slope.tolist() == [-3.0, 3.0] and enc.hop.inhibit.tolist() == [-3.0, -3.0]
        w = torch.softmax(torch.cat([logits, torch.zeros(2, 2, 3, 1)], -1), -1)[..., :-1]
        v = bank.values.view(2, -1, 2, bank.d_value // 2).transpose(1, 2)
        expected = (w @ v).transpose(1, 2).reshape(2, 3, -1)
        assert torch.allclose(bank.core_view.read(q2), expected, atol=1e-5)
        with pytest.raises(ValueError, match="follows the prelude's read of its bank at the same positions"):
            bank.core_view.read(torch.randn(2, 5, 16))
    from rmt.evaluation.visual_qa import read_attention
    from rmt.tasks.sort_of_clevr import question_example
    from rmt.tokenizer import ByteTokenizer
    scenes_ = generate(1, SortOfClevrConfig(n_train=0, n_validation=0, n_test=1, cache=False), "test")
    pictures = read_attention(model, [question_example(scenes_, 0)], scenes_.images, ByteTokenizer())
    assert pictures[0].shape == (3, 10, 10)  # the prelude's read, then one per core iteration
    task = get_task("sort-of-clevr", n_train=1, n_validation=1, n_test=1, cache=False)
    task.check_model(vision_config(vision=HOP, bank={"sink": True}))
    for changes, match in [({"reader": {"core_reads": False}}, "needs model.reader.core_reads = true"),
                           ({"bank": {"heads": 4}}, "hop_heads / hop_query must equal")]:
        with pytest.raises(ConfigError, match=match):
            task.check_model(vision_config(**{"vision": HOP, **changes}))


def test_gradients_reach_the_image_encoder_and_the_core_query():
    torch.manual_seed(0)
    model = RMT(vision_config())
    images = torch.randint(0, 256, (2, 75, 75, 3), dtype=torch.uint8)
    out = model(torch.randint(0, 256, (2, 10)), explicit_bank=ImageBank(images))
    out.logits.sum().backward()
    assert model.encoders["image"].patchify.weight.grad.abs().sum() > 0
    assert model.encoders["image"].key_position.weight.grad.abs().sum() > 0  # zero at the start, but it learns
    assert model.reader.core_query.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("stem,layers", [("conv", 3), ("patch", 1), ("pool", 3)])
def test_reconstruction_loss_is_the_per_pixel_error_of_each_cell(stem, layers):
    torch.manual_seed(0)
    cfg = vision_config(vision={"patch": 15, "stem": stem, "conv_layers": layers, "recon": 0.5})
    enc = RMT(cfg).encoders["image"]
    images = torch.randint(0, 256, (2, 75, 75, 3), dtype=torch.uint8)
    entries = torch.randn(2, enc.num_patches, cfg.d_model)
    decoded = enc.recon(entries).detach().view(2, enc.grid, enc.grid, 3, enc.cell, enc.cell)
    pixels = images.double() / 127.5 - 1.0
    total, n = 0.0, 0
    for b in range(2):  # the slow way: every pixel that lies in the picture, against its cell's decoding
        for y in range(min(75, enc.grid * enc.cell)):
            for x in range(min(75, enc.grid * enc.cell)):
                i, j = y // enc.cell, x // enc.cell
                d = decoded[b, i, j, :, y - i * enc.cell, x - j * enc.cell].double()
                total += float(((d - pixels[b, y, x]) ** 2).sum())
                n += 3
    assert math.isclose(float(enc.reconstruction_loss(images, entries)), total / n, rel_tol=1e-5)


def test_reconstruction_loss_enters_training_only():
    torch.manual_seed(0)
    model = RMT(vision_config(vision={"recon": 2.0}))
    images = torch.randint(0, 256, (2, 75, 75, 3), dtype=torch.uint8)
    idx = torch.randint(0, 256, (2, 10))
    targets = torch.randint(0, 256, (2, 10))
    out = model(idx, explicit_bank=ImageBank(images))
    _, entries = model.encoders["image"].encode(images)
    recon = out.aux_losses["vision_recon"]
    assert torch.allclose(recon, 2.0 * model.encoders["image"].reconstruction_loss(images, entries))
    total, lm = loss_fn(out, targets)
    assert torch.allclose(total - lm, recon)
    total.backward()
    assert model.encoders["image"].recon.weight.grad.abs().sum() > 0 and model.encoders["image"].patchify.weight.grad.abs().sum() > 0
    assert model(idx, explicit_bank=ImageBank(images), memory=False).aux_losses is None  # not even encoded
    assert model.eval()(idx, explicit_bank=ImageBank(images)).aux_losses is None
    assert RMT(vision_config()).encoders["image"].recon is None  # off by default: no decoder, no checkpoint entry
    with pytest.raises(ValueError, match="reconstruction head"):
        RMT(vision_config()).encoders["image"].reconstruction_loss(images, entries)
    for recon in (-1.0, float("nan")):
        with pytest.raises(ConfigError, match=r"model\.encoders\.image\.recon: expected a weight >= 0"):
            vision_config(vision={"recon": recon})


# ------------------------------------------------------------------------------------------------ training
def test_rmt_train_ends_with_the_visual_report(tmp_path, monkeypatch):
    monkeypatch.setenv("RMT_CACHE_DIR", str(tmp_path / "cache"))
    model = vision_config().to_toml().replace("\n[", "\n[model.")
    config = tmp_path / "soc.toml"
    config.write_text(f"""
seed = 1
checkpoint_every = 0
[model]
{model}
[tasks.sort-of-clevr]
n_train = 40
n_validation = 2
n_test = 4
[[stages]]
name = "clevr"
steps = 3
tasks = {{ "sort-of-clevr" = 1.0 }}
batch_size = 8
frozen = ["router"]
think_iters_min = 2
think_iters_max = 2
""")
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())["sort_of_clevr"]
    for key in ("non_relational_acc", "relational_acc", "non_relational_acc_recurrence_off",
                "relational_acc_recurrence_off", "non_relational_acc_memory_off", "relational_acc_memory_off"):
        assert 0.0 <= report[key] <= 1.0
    assert report["train_wall_seconds"] > 0 and report["n"] == 4 * 20
    assert (out / "sort_of_clevr_attention.png").stat().st_size > 1000
    assert len((out / "predictions_sort_of_clevr.jsonl").read_text().splitlines()) == 80


def test_image_task_needs_a_vision_model(tmp_path, monkeypatch):
    monkeypatch.setenv("RMT_CACHE_DIR", str(tmp_path / "cache"))
    config = tmp_path / "soc.toml"
    config.write_text("""
[model]
d_model = 32
[model.ssm]
head_dim = 16
[tasks.sort-of-clevr]
n_train = 5
n_validation = 1
n_test = 1
[[stages]]
name = "clevr"
steps = 1
tasks = { "sort-of-clevr" = 1.0 }
""")
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
