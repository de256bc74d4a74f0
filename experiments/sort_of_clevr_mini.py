"""Sort-of-CLEVR read/encoder micro-probe: PatchEncoder + one softmax bank read + MLP, the question given as a
one-hot (colour, question) embedding (no text model), CPU, ~10 steps/s. Settings by environment variable (STEM,
NL, LR, HEADS, STEPS, QS=nonrel|all|<question>, KEYNOPOS=1 keys from content only, SINK=1, MP=1 pool stem, INK=1,
COORD=1, CH, QBAG=1 question as a bag of bytes, QFACT=1 query = colour embedding + question-kind embedding,
QTRI=n hashed byte n-gram bag (run with PYTHONHASHSEED=0), AUX=w pixel-reconstruction loss of weight w on the
entries, SIG=1 sigmoid read). Every 300 steps it prints, per question kind, each head's attention mass on the
cells the named object covers. Not part of the library; how the choices in experiments/README.md (Sort-of-CLEVR) were made."""
import torch, random, sys, os, time
import torch.nn.functional as F
import math
from rmt.model.memory import SoftmaxMemoryBank
from rmt.tasks.image_encoder import PatchEncoder, PatchEncoderConfig
from rmt.model.memory import ExplicitMemoryRead
from rmt.tasks import get_task
from rmt.tasks.sort_of_clevr import COLORS, QUESTIONS, ANSWERS
torch.manual_seed(0); torch.set_num_threads(1)
# SIG=1: a sigmoid read (independent weights sigmoid(score + SIGB), no normalisation) instead of the softmax
BIAS = float(os.environ.get("SIGB", str(-math.log(100))))
def sig_read(self, queries):
    b, t, _ = queries.shape
    h = self.heads
    q = queries.view(b, t, h, -1).transpose(1, 2)
    k = self.keys.view(b, -1, h, self.d_key // h).transpose(1, 2)
    v = self.values.view(b, -1, h, self.d_value // h).transpose(1, 2)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.d_key // h)
    w = torch.sigmoid(scores + BIAS)
    if self.record: self.recorded.append(w.detach().permute(0, 2, 1, 3))
    return (w @ v).transpose(1, 2).reshape(b, t, self.d_value)
if os.environ.get("SIG"):
    SoftmaxMemoryBank.read = sig_read
E = lambda k, d: type(d)(os.environ.get(k, d))
stem, LR, HEADS, STEPS, B, QS = E("STEM", "conv"), E("LR", 1e-3), E("HEADS", 4), E("STEPS", 1200), E("B", 64), E("QS", "nonrel")
t = get_task('sort-of-clevr', seed=0)
ex = [e for e in t.split("train") if QS == "all" or (QS == "nonrel" and e.meta["type"] == "non_relational") or e.meta["question"] == QS]
im = torch.from_numpy(t.images('train'))
enc = PatchEncoder(64, PatchEncoderConfig(image_size=75, patch=E("P", 15), channels=E("CH", 32), stem=stem, conv_layers=E("NL", 4)))
KEYNOPOS = E("KEYNOPOS", 0)
INK, NOMLP, COORD = E("INK", 0), E("NOMLP", 0), E("COORD", 0)
if COORD:
    first = enc.patchify[0] if stem == "conv" else enc.patchify
    new = torch.nn.Conv2d(5, first.out_channels, first.kernel_size, first.stride, first.padding)
    if stem == "conv": enc.patchify[0] = new
    else: enc.patchify = new
if E("MP", 0):
    C = E("CH", 32); L = []
    for i in range(3):
        L += [torch.nn.Conv2d(3 if i == 0 else C, C, 3, 1, 1), torch.nn.GroupNorm(1, C), torch.nn.GELU(), torch.nn.MaxPool2d(2)]
    enc.patchify = torch.nn.Sequential(*L)
    g = 9; enc.grid = g
    enc.row = torch.nn.Parameter(torch.randn(g, 64) * 0.02); enc.col = torch.nn.Parameter(torch.randn(g, 64) * 0.02)
    y_, x_ = torch.meshgrid(torch.linspace(-1, 1, g), torch.linspace(-1, 1, g), indexing="ij")
    enc.coords = torch.stack([x_, y_, x_ * x_ + y_ * y_], -1).view(g * g, 3)
if E("S1", 0):
    C = E("CH", 32)
    enc.patchify = torch.nn.Sequential(torch.nn.Conv2d(3, C, 3, 1, 1), torch.nn.GroupNorm(1, C), torch.nn.GELU(), *list(enc.patchify))
    enc.patchify[3] = torch.nn.Conv2d(C, C, 3, 2, 1)
yy, xx = torch.meshgrid(torch.linspace(-1, 1, 75), torch.linspace(-1, 1, 75), indexing="ij")
def fwd(images):
    x = images.permute(0, 3, 1, 2).float()
    x = (1 - x / 255) if INK else x / 127.5 - 1
    if COORD: x = torch.cat([x, xx.expand(x.shape[0], 1, 75, 75), yy.expand(x.shape[0], 1, 75, 75)], 1)
    x = enc.blocks(enc.patchify(x))
    x = torch.nn.functional.gelu(enc.norm(x)).flatten(2).transpose(1, 2)
    c = enc.proj(x)
    x = c + enc.positions()
    x = x if NOMLP else x + enc.mlp(enc.mlp_norm(x))
    return (c, x) if KEYNOPOS else x
enc.forward = fwd
read = ExplicitMemoryRead(64, 64, heads=HEADS, read="softmax", sink=bool(E("SINK", 0)))
qemb = torch.nn.Embedding(6*6, 64)
bemb = torch.nn.Embedding(256, 64)
recon = torch.nn.Linear(64, 192)
cemb = torch.nn.Embedding(6, 64); qtemb = torch.nn.Embedding(6, 64); temb = torch.nn.Embedding(4096, 64)
head = torch.nn.Sequential(torch.nn.Linear(128, 128), torch.nn.GELU(), torch.nn.Linear(128, 10))
ps = [*enc.parameters(), *read.parameters(), *qemb.parameters(), *bemb.parameters(), *recon.parameters(), *cemb.parameters(), *qtemb.parameters(), *temb.parameters(), *head.parameters()]
opt = torch.optim.AdamW(ps, lr=LR)
rng = random.Random(0); acc = []; per = {}; t0 = time.time()
for step in range(1, STEPS + 1):
    b = [rng.choice(ex) for _ in range(B)]
    qi = torch.tensor([COLORS.index(e.meta['color'])*6 + [q[0] for q in QUESTIONS].index(e.meta['question']) for e in b])
    y = torch.tensor([ANSWERS.index(e.target.strip()) for e in b])
    bank = read.new_bank(); o = enc(im[[e.meta['image'] for e in b]])
    if KEYNOPOS: bank.write(read.key_proj(o[0]), read.value_proj(o[1]))
    else: bank.write(*read.encode_entries(o))
    q = qemb(qi)
    if os.environ.get("QFACT"):
        q = cemb(torch.tensor([COLORS.index(e.meta['color']) for e in b])) + qtemb(torch.tensor([[q[0] for q in QUESTIONS].index(e.meta['question']) for e in b]))
    if os.environ.get("QTRI"):
        NG = int(os.environ.get("QTRI"))
        qs = []
        for e in b:
            by = list(e.prompt.encode())
            grams = [hash(bytes(by[max(0, i - NG + 1):i + 1])) % 4096 for i in range(len(by))]
            qs.append(temb(torch.tensor(grams)).sum(0) / len(grams) ** 0.5)
        q = torch.stack(qs)
    if os.environ.get("QBAG"):  # the question as its bag of bytes (N(0,1) byte vectors, sum / sqrt(n))
        ids = [list(e.prompt.encode()) for e in b]
        q = torch.stack([bemb(torch.tensor(i)).sum(0) / len(i) ** 0.5 for i in ids])
    bank.record = step % 300 == 0
    r = read(q[:, None], bank)[:, 0]
    if bank.record:
        w = bank.recorded[0][:, 0]  # (B, H, M)
        objs = t.scenes['train'].objects; G = enc.grid; cell = 75 / G
        masses = []
        for bi, e in enumerate(b):
            x0, y0, _ = (int(v) for v in objs[e.meta['image'], COLORS.index(e.meta['color'])])
            m = torch.zeros(G, G)
            for py in range(y0, y0 + 10):
                for px in range(x0, x0 + 10):
                    m[min(int(py / cell), G - 1), min(int(px / cell), G - 1)] = 1
            masses.append((w[bi] * m.view(1, -1)).sum(-1))
        masses = torch.stack(masses)
        for qn in ('shape', 'left', 'top'):
            sel = torch.tensor([e.meta['question'] == qn for e in b])
            print(step, qn, 'attn mass on object per head', [round(v, 2) for v in masses[sel].mean(0).tolist()], 'max w', [round(v, 2) for v in w[sel].max(-1).values.mean(0).tolist()], flush=True)
    logits = head(torch.cat([q, r], -1))
    loss = F.cross_entropy(logits, y)
    if os.environ.get("AUX"):
        imgs_b = im[[e.meta['image'] for e in b]].permute(0, 3, 1, 2).float() / 127.5 - 1
        tgt = F.pad(imgs_b, (0, 5, 0, 5), value=1.0).unfold(2, 8, 8).unfold(3, 8, 8)  # (B, 3, 10, 10, 8, 8)
        tgt = tgt.permute(0, 2, 3, 1, 4, 5).reshape(len(b), 100, 192)
        ent = o[1] if KEYNOPOS else o
        aux = F.mse_loss(recon(ent), tgt)
        loss = loss + float(os.environ.get("AUX")) * aux
        if step % 100 == 0: print('aux', round(aux.item(), 4))
    opt.zero_grad(); loss.backward(); opt.step()
    okk = (logits.argmax(-1) == y).tolist(); acc.append(sum(okk) / len(okk))
    for e, o in zip(b, okk): per.setdefault(e.meta["question"], []).append(o)
    if step % 100 == 0: print(os.environ.get("TAG"), step, round(time.time()-t0), round(loss.item(), 3), round(sum(acc[-100:])/100, 3), {k: round(sum(v[-300:])/len(v[-300:]), 2) for k, v in per.items()}, flush=True)
