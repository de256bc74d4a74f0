# Sort-of-CLEVR shape oracle: can the PatchEncoder learn square vs circle when the read is given (weights = each
# cell's share of the object's pixels; ORACLE=max: all on the cell with most of it)? STEM, NL, CH, LR, STEPS, B by env.
import torch, random, os, time, numpy as np
import torch.nn.functional as F
from rmt.tasks.image_encoder import PatchEncoder, PatchEncoderConfig
from rmt.tasks import get_task
torch.manual_seed(0); torch.set_num_threads(1)
E = lambda k, d: type(d)(os.environ.get(k, d))
STEM, NL, CH, LR, STEPS, B = E("STEM", "conv"), E("NL", 3), E("CH", 32), E("LR", 1e-3), E("STEPS", 1500), E("B", 64)
t = get_task('sort-of-clevr', seed=0)
sc = t.scenes["train"]; im = torch.from_numpy(sc.images); objs = sc.objects
enc = PatchEncoder(64, PatchEncoderConfig(image_size=75, patch=15, channels=CH, stem=STEM, conv_layers=NL))
G = enc.grid; cell = 75 / G
def weights(img, col):
    x, y, s = (int(v) for v in objs[img, col])
    w = np.zeros((G, G))
    for py in range(y, y + 10):
        for px in range(x, x + 10):
            w[min(int(py / cell), G - 1), min(int(px / cell), G - 1)] += 1
    w = w.ravel()
    if os.environ.get('ORACLE') == 'max': w = (w == w.max()).astype(float)
    return w / w.sum(), s
head = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.Linear(128, 2))
opt = torch.optim.AdamW([*enc.parameters(), *head.parameters()], lr=LR, weight_decay=0.1)
rng = random.Random(0); acc = []; t0 = time.time()
for step in range(1, STEPS + 1):
    pairs = [(rng.randrange(len(im)), rng.randrange(6)) for _ in range(B)]
    ws, ys = zip(*[weights(i, c) for i, c in pairs])
    w = torch.tensor(np.stack(ws), dtype=torch.float32); y = torch.tensor(ys, dtype=torch.long)
    ent = enc(im[[i for i, _ in pairs]])  # (B, G*G, D)
    r = torch.einsum("bn,bnd->bd", w, ent)
    logits = head(r); loss = F.cross_entropy(logits, y)
    opt.zero_grad(); loss.backward(); opt.step()
    acc.append((logits.argmax(-1) == y).float().mean().item())
    if step % 100 == 0: print(os.environ.get("TAG"), step, round(time.time() - t0), round(loss.item(), 3), round(sum(acc[-100:]) / 100, 3), flush=True)
