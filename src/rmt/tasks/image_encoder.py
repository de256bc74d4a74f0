"""The image encoder a visual task brings: a small convolutional patch encoder whose patch embeddings become
memory-bank entries (R8). The core model does not know it: a config carries it as an encoder
(``[model.encoders.image] type = "image-patches"``, `rmt.model.encoders`), and `ImageBank`, a batch's images,
runs it inside the model's forward.

    uint8 image (B, S, S, 3)
      -> stem, 3 -> C channels                          (B, C, G, G): one vector per grid cell
           "patch": conv k=p, stride p                  G = S // p
           "conv":  n x [3x3 conv stride 2]             G = S halved n times, rounded up (75 -> 10 for n = 3)
           "pool":  n x [3x3 conv, 2x2 max-pool]        G = S halved n times, rounded down
      -> 2 residual blocks of [GroupNorm, GELU, conv 3x3] (each patch sees its neighbours: a 10-pixel object
         spans 2-3 patches of 5 pixels, and its shape is only visible across them)
      -> linear C -> d_model = content, plus a 2-D position embedding
      -> + MLP(RMSNorm(.))                                (B, G*G, d_model): the entries (bank values)
    key inputs = content + key_position(position), key_position zero at the start (see `PatchEncoder.encode`)
    optional: entries -> linear -> the cell's pixels             (reconstruction_loss, an auxiliary objective)

The final MLP mixes what a patch shows with where it is, nonlinearly. Without it an entry is linear in
(content + position), so the *average* of all entries -- what an untrained, uniform read returns -- carries no
"red is on the left" information at all (the position part averages to a constant); the read's gradient then
has nothing to pull the queries towards, and training sat at chance for 450 steps in a first test. With
content x position features in every entry, even the uniform read is informative, downstream layers start
using it, and that gives the queries a consistent direction to sharpen towards.

The position embedding has two parts. A learned row embedding plus a learned column embedding (factorised, so
G*G positions cost 2G vectors) lets keys say "this patch is in row i". And fixed coordinate features
(x, y, x^2 + y^2, with x, y in [-1, 1]) through a linear map: with them a dot product q.k can express
-|p - p_i|^2 = 2 p.p_i - |p_i|^2 - |p|^2 exactly, so a query built from one object's position can score every
patch by its distance from it (the "closest"/"furthest" questions of Sort-of-CLEVR) without having to learn a
distance function from scratch.

The optional reconstruction head (``recon=True``) decodes every entry, by one linear map, back into the pixels
of its grid cell; `reconstruction_loss` is the mean squared error. It gives the encoder a dense signal from the
first step: every entry has to say what its cell shows -- colour, and where the edges and corners are -- rather
than only what the question-answering loss asks for through a read that has not yet learned where to look.
Without it, Sort-of-CLEVR's "what shape is X?" (a square and a circle of 10 px differ in 24 corner pixels)
stayed at chance for ~1,000 steps after the colour binding was learned; with it, shape was learned together
with the binding (experiments/README.md, Sort-of-CLEVR, fourth session). An autoencoder's objective, as in
masked-autoencoder pre-training but without the masking: here the entries must keep the detail, not infer it.

Trained from scratch; no pretrained weights, nothing downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from rmt.model.config import ConfigError, Section
from rmt.model.memory import Bank
from rmt.model.memory.bank import SoftmaxMemoryBank
from rmt.model.rmt import BankSource
from rmt.model.ssm import RMSNorm


@dataclass
class PatchEncoderConfig(Section):
    """Settings of `PatchEncoder`: ``[model.encoders.<name>]`` with ``type = "image-patches"``."""

    path: ClassVar[str] = "model.encoders.image"
    image_size: int = 75
    patch: int = 5  # "patch" stem: pixels per patch side, (image_size / patch) ** 2 entries per image
    channels: int = 32
    # "patch": one k=p, stride-p conv; "conv": conv_layers 3x3 stride-2 convs (the Relation Network's CNN),
    # grid = image_size halved that many times, rounded up; "pool": conv_layers [3x3 conv, 2x2 max-pool] blocks.
    stem: str = "patch"
    conv_layers: int = 4
    recon: float = 0.0  # weight of the pixel-reconstruction loss of the entries (training); 0 = no decoder
    # The relational hop (`HopRead`): > 0 = the hidden width of the MLP that scores the thinking core's re-reads
    # of the picture from the cell, the core's query and the cell's offset from where the prelude's read looked.
    # hop_heads and hop_query must equal the bank's heads and d_key (the task checks the model config).
    hop: int = 0
    hop_heads: int = 4
    hop_query: int = 64

    def validate(self) -> None:
        super().validate()
        self._positive("image_size", "patch", "channels", "conv_layers")
        if self.stem not in ("patch", "conv", "pool"):
            raise ConfigError(f"{self.path}.stem: expected 'patch', 'conv' or 'pool', got {self.stem!r}")
        if self.stem == "patch" and self.image_size % self.patch:
            raise ConfigError(f"{self.path}.patch: must divide image_size={self.image_size}, got {self.patch}")
        if self.hop < 0:
            raise ConfigError(f"{self.path}.hop: expected a hidden width >= 0 (0 = off), got {self.hop}")
        self._positive("hop_heads", "hop_query")
        if not self.recon >= 0.0:
            raise ConfigError(f"{self.path}.recon: expected a weight >= 0, got {self.recon}")


class _ResidualConv(nn.Module):
    """x + conv3x3(GELU(GroupNorm(x))) on (B, C, G, G). GroupNorm, not BatchNorm: it normalises each image by
    itself, so training and batch-size-1 inference compute the same thing."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(1, channels)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(nn.functional.gelu(self.norm(x)))


class PatchEncoder(nn.Module):
    """uint8 images (B, S, S, 3) -> patch embeddings (B, G * G, d_model), row-major patch order.

    Args:
        d_model: width of the embeddings (the model's width).
        config: `PatchEncoderConfig` -- image_size S, patch side, channels C, stem ("patch", "conv" or "pool",
            module docstring), conv_layers (depth of the "conv" and "pool" stems), recon (the weight of the
            pixel-reconstruction loss; > 0 adds the decoder, `reconstruction_loss`).
    """

    Config = PatchEncoderConfig

    def __init__(self, d_model: int, config: PatchEncoderConfig | None = None) -> None:
        super().__init__()
        config = config or PatchEncoderConfig()
        self.config = config
        image_size, patch, channels = config.image_size, config.patch, config.channels
        stem, conv_layers, recon = config.stem, config.conv_layers, config.recon > 0
        self.image_size, self.patch = image_size, patch
        if stem == "patch":
            if image_size % patch:
                raise ValueError(f"image_size ({image_size}) must be divisible by patch ({patch})")
            self.grid = g = image_size // patch
            self.patchify = nn.Conv2d(3, channels, patch, stride=patch)
        elif stem == "conv":
            # Pixel-level 3x3 stride-2 convs (as the Relation Network's CNN): features do not depend on how an
            # object happens to align with a patch boundary, as a single k = stride patchify conv's do.
            layers: list[nn.Module] = []
            g = image_size
            for i in range(conv_layers):
                layers += [nn.Conv2d(3 if i == 0 else channels, channels, 3, stride=2, padding=1),
                           nn.GroupNorm(1, channels), nn.GELU()]
                g = (g + 1) // 2
            self.patchify = nn.Sequential(*layers[:-2])  # the blocks below start with their own norm + GELU
            self.grid = g
        elif stem == "pool":
            # Stride-1 3x3 convs at full resolution, each followed by 2x2 max-pooling: a local detector fires
            # wherever its pattern sits, and the pool keeps "it is here" whatever the alignment.
            layers = []
            g = image_size
            for i in range(conv_layers):
                layers += [nn.Conv2d(3 if i == 0 else channels, channels, 3, padding=1), nn.GroupNorm(1, channels),
                           nn.GELU(), nn.MaxPool2d(2)]
                g //= 2
            self.patchify = nn.Sequential(*layers)
            self.grid = g
        else:
            raise ValueError(f"stem: expected 'patch', 'conv' or 'pool', got {stem!r}")
        self.blocks = nn.Sequential(_ResidualConv(channels), _ResidualConv(channels))
        self.norm = nn.GroupNorm(1, channels)
        self.proj = nn.Linear(channels, d_model)
        self.row = nn.Parameter(torch.randn(g, d_model) * 0.02)
        self.col = nn.Parameter(torch.randn(g, d_model) * 0.02)
        self.coord_proj = nn.Linear(3, d_model, bias=False)
        # Where a patch is enters its *key* only through this projection, zero at the start (see `encode`).
        self.key_position = nn.Linear(d_model, d_model, bias=False)
        nn.init.zeros_(self.key_position.weight)
        self.mlp_norm = RMSNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 2 * d_model), nn.GELU(), nn.Linear(2 * d_model, d_model))
        y, x = torch.meshgrid(torch.linspace(-1, 1, g), torch.linspace(-1, 1, g), indexing="ij")
        coords = torch.stack([x, y, x * x + y * y], -1).view(g * g, 3)
        self.register_buffer("coords", coords, persistent=False)  # (G*G, 3), fixed: not a checkpoint entry
        # Grid cell i covers pixels [i * cell, (i + 1) * cell): the image padded to G * cell on the right and
        # bottom; the padding is masked out of the loss.
        self.cell = -(-image_size // g)
        self.recon = nn.Linear(d_model, self.cell * self.cell * 3) if recon else None
        self.hop = (HopScorer(d_model, config.hop_query, config.hop_heads, config.hop) if config.hop else None)

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    def positions(self) -> Tensor:
        """The 2-D position embedding of every patch, (G*G, d_model), row-major."""
        g = self.grid
        learned = (self.row.view(g, 1, -1) + self.col.view(1, g, -1)).view(g * g, -1)
        return learned + self.coord_proj(self.coords)

    def encode(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images (B, S, S, 3) uint8 (or float in [0, 255]) -> (key inputs, entries), each (B, G*G, d_model).

        Entries (what a read returns: content, position and their product) are what `forward` gives. Key inputs
        are what a patch shows plus ``key_position(position)``, a projection that starts at zero: a question
        first has to learn to find "red" by colour, and while the keys carry position a query can lower its
        loss a little with a fixed "look at the bottom row" prior instead, which saturates the softmax and
        stalls the content match (every question read the same patches in our first runs; content-only keys
        learned left/top in ~1,200 steps where mixed keys sat at chance -- experiments/README.md). Relations
        ("closest to red") need positions in the keys later; the projection grows when they pay off.
        """
        if images.dim() != 4 or images.shape[1:] != (self.image_size, self.image_size, 3):
            raise ValueError(f"expected images (B, {self.image_size}, {self.image_size}, 3), got {tuple(images.shape)}")
        x = images.permute(0, 3, 1, 2).to(self.proj.weight.dtype) / 127.5 - 1.0  # (B, 3, S, S) in [-1, 1]
        x = self.blocks(self.patchify(x))  # (B, C, G, G)
        x = nn.functional.gelu(self.norm(x)).flatten(2).transpose(1, 2)  # (B, G*G, C)
        content = self.proj(x)
        pos = self.positions()
        x = content + pos
        return content + self.key_position(pos), x + self.mlp(self.mlp_norm(x))

    def reconstruction_loss(self, images: Tensor, entries: Tensor) -> Tensor:
        """Mean squared error of every entry's linear decoding against its cell's pixels (scaled to [-1, 1]).

        images (B, S, S, 3) uint8, entries (B, G*G, d_model) from `encode` of the same images -> scalar.
        """
        if self.recon is None:
            raise ValueError("this encoder was built without the reconstruction head (recon=False)")
        b, c, g, s = images.shape[0], self.cell, self.grid, self.image_size
        x = images.permute(0, 3, 1, 2).to(entries.dtype) / 127.5 - 1.0  # (B, 3, S, S)
        pad = g * c - s

        def cells(t: Tensor) -> Tensor:
            """(N, 3, S, S) -> padded (N, 3, G*c, G*c) -> (N, G, G, 3, c, c) -> (N, G*G, 3*c*c), cell-major like
            the entries."""
            t = nn.functional.pad(t, (0, pad, 0, pad)).unfold(2, c, c).unfold(3, c, c)
            return t.permute(0, 2, 3, 1, 4, 5).reshape(t.shape[0], g * g, -1)

        present = cells(torch.ones(1, 3, s, s, dtype=x.dtype, device=x.device))  # 0 where padding
        err = (self.recon(entries) - cells(x)) ** 2 * present
        return err.sum() / (present.sum() * b)

    def aux_losses(self, images: Tensor, entries: Tensor) -> dict[str, Tensor] | None:
        """The weighted training losses of this encoder: {"vision_recon": recon * reconstruction_loss}, or None
        when recon = 0."""
        if self.recon is None:
            return None
        return {"vision_recon": self.config.recon * self.reconstruction_loss(images, entries)}

    def forward(self, images: Tensor) -> Tensor:
        """images (B, S, S, 3) uint8 (or float in [0, 255]) -> entries (B, G*G, d_model)."""
        return self.encode(images)[1]


class HopScorer(nn.Module):
    """The relational hop's scoring MLP: for every query position t, head h and cell i,

        score = W2 GELU(W_cell e_i + W_query q_t + W_geom [p_i - f_t, |p_i - f_t|^2, a_ti]) + b      (B, H, T, M)

    e_i the cell's entry, q_t the thinking core's query, f_t where the prelude's read at t looked (its weight-
    averaged cell position) and a_ti that read's weight on the cell (relative to its largest): "the one closest
    to red" is a cell near f that is an object and not red itself, a comparison of positions that a dot product
    q.k only expresses when its keys spell the distance out (experiments/README.md, "The relational hop").
    The first layer is a sum of three projections, so its cost is B*T*M*hidden adds, not a matmul per pair.

    Each head's score also gets ``slope_h * |p_i - f_t|^2 + inhibit_h * a_ti``, learnable and started as in ALiBi
    at slopes spread from attracting to repelling (-3 .. 3 over the heads) with inhibition -3: from the first
    step one head reads what lies near the named object (but not the object itself), another what lies far from
    it, so the answer has a shape to learn from before the MLP has learned to search. Started at zero the hop sat
    at furthest ~0.63 for ~8,000 relational steps and left that plateau on one seed of two; with this start it
    leaves it within ~1,000 (experiments/README.md, "A start that reads near and far").
    """

    def __init__(self, d_model: int, d_query: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.heads = heads
        self.cell = nn.Linear(d_model, hidden)
        self.query = nn.Linear(d_query, hidden, bias=False)
        self.geometry = nn.Linear(4, hidden, bias=False)
        self.out = nn.Linear(hidden, heads)
        self.slope = nn.Parameter(torch.linspace(-3.0, 3.0, heads))
        self.inhibit = nn.Parameter(torch.full((heads,), -3.0))

    def forward(self, entries: Tensor, queries: Tensor, geometry: Tensor) -> Tensor:
        """entries (B, M, D), queries (B, T, d_query), geometry (B, T, M, 4) -> logits (B, H, T, M)."""
        x = self.cell(entries)[:, None] + self.query(queries)[:, :, None] + self.geometry(geometry)
        prior = (self.slope[:, None, None, None] * geometry[None, ..., 2]
                 + self.inhibit[:, None, None, None] * geometry[None, ..., 3])  # (H, B, T, M)
        return self.out(nn.functional.gelu(x)).permute(0, 3, 1, 2) + prior.transpose(0, 1)


class SceneBank(SoftmaxMemoryBank):
    """The picture's bank when the encoder has a hop: a softmax bank that keeps the weights of its latest read
    (the prelude's, at every position), which its `core_view`, a `HopRead`, scores the core's re-reads from."""

    def __init__(self, d_key: int, d_value: int, heads: int, sink: bool) -> None:
        super().__init__(d_key, d_value, heads, sink)
        self.focus: Tensor | None = None  # (B, H, T, M), detached

    def weights(self, queries: Tensor) -> Tensor:
        w = super().weights(queries)
        self.focus = w.detach()  # the hop's reference point only: the prelude's read learns from its own use
        return w


class HopRead:
    """The thinking core's re-read of a `SceneBank`: queries (B, T, d_key) -> (B, T, d_value), over the bank's
    values with `HopScorer` logits (softmax with the bank's sink). Reads at the positions of the prelude read
    it follows (the same T); records its weights like a bank (``record``, ``recorded``) for the read pictures."""

    def __init__(self, scene: SceneBank, scorer: HopScorer, entries: Tensor, coords: Tensor) -> None:
        self.scene, self.scorer, self.entries, self.coords = scene, scorer, entries, coords[:, :2]
        self.record = False
        self.recorded: list[Tensor] = []

    def read(self, queries: Tensor) -> Tensor:
        a1 = self.scene.focus
        if a1 is None or a1.shape[2] != queries.shape[1]:
            raise ValueError(f"the hop read follows the prelude's read of its bank at the same positions; that "
                             f"read has {'not run' if a1 is None else f'{a1.shape[2]} positions'}, this one has "
                             f"{queries.shape[1]}")
        own = a1.mean(1)
        own = own / own.amax(-1, keepdim=True).clamp_min(1e-6)  # (B, T, M): read 1's weight, relative to its top
        # f: the centroid of the cells read 1 weighs at least half its top -- the named object. The centroid of
        # all its weight sat ~3 grid cells from the object in a trained model (the reads' low weight spread over
        # the picture pulls it to the middle); this one 0.6-1.6, as far as the diffuse prelude read allows
        # (experiments/sort_of_clevr_focus.py; experiments/README.md).
        top = own * (own >= 0.5)
        f = (top @ self.coords) / top.sum(-1, keepdim=True).clamp_min(1e-6)  # (B, T, 2); (0, 0) if all on the sink
        rel = self.coords[None, None] - f[:, :, None]  # (B, T, M, 2)
        geometry = torch.cat([rel, (rel ** 2).sum(-1, keepdim=True), own[..., None]], -1).to(queries.dtype)
        logits = self.scorer(self.entries, queries, geometry)
        w = self.scene.normalise(logits, queries.dtype)
        if self.record:
            self.recorded.append(w.detach().permute(0, 2, 1, 3))  # (B, T, H, M)
        return self.scene.apply_weights(w)


class ImageBank(BankSource):
    """A batch's images, one per row, which the model's image encoder (``model.encoders[encoder]``) writes into
    a fresh bank inside forward; the encoder's weighted reconstruction loss comes back as the aux loss
    "vision_recon" while training."""

    def __init__(self, images: Tensor, encoder: str = "image"):
        self.images = images  # (B, S, S, 3) uint8
        self.encoder = encoder

    def build(self, model) -> tuple[Bank, dict[str, Tensor] | None]:
        if self.encoder not in model.encoders:
            raise ValueError(f"this model has no {self.encoder!r} encoder (its config's [model.encoders] has "
                             f"{sorted(model.encoders) or 'none'})")
        enc = model.encoders[self.encoder]
        key_inputs, entries = enc.encode(self.images)
        if enc.hop is None:
            bank = model.new_memory_bank()
        else:
            b = model.config.bank
            if (b.read, b.heads, b.d_key) != ("softmax", enc.config.hop_heads, enc.config.hop_query):
                raise ValueError(f"the {self.encoder!r} encoder's hop reads a softmax bank of hop_heads="
                                 f"{enc.config.hop_heads}, d_key={enc.config.hop_query}; the model's bank is "
                                 f"read={b.read!r}, heads={b.heads}, d_key={b.d_key}")
            bank = SceneBank(b.d_key, model.reader.bank.d_value, b.heads, b.sink)
        model.write_memory(bank, entries, key_entries=key_inputs)
        if enc.hop is not None:
            bank.core_view = HopRead(bank, enc.hop, entries, enc.coords)
        return bank, (enc.aux_losses(self.images, entries) if model.training else None)

    def select(self, rows: slice) -> "ImageBank":
        return ImageBank(self.images[rows], self.encoder)

    def to(self, device) -> "ImageBank":
        return ImageBank(self.images.to(device), self.encoder)
