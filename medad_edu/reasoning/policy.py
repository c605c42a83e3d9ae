"""A small image-to-text policy: a conv image encoder and a GRU decoder over the closed vocabulary.

MedAD-R1's policy is a large multimodal model (a vision encoder feeding a billion-parameter language model).
Ours keeps the same interface at a size a CPU trains in seconds:

- image encoder: three stride-2 3x3 convolutions (16-32-32 channels) and a 4x4 adaptive average pool, so the
  feature keeps *where* things are (a 4x4 layout is enough for a 3x3 region grid), then one linear layer. With
  ``use_map=True`` the input has a second channel, a trained detector's (normalised) anomaly map;
- the question type is embedded and joined to the image feature into a context vector ``c``;
- decoder: a one-layer GRU whose initial state is ``tanh(W c)`` and whose input at every step is the previous
  token's embedding concatenated with ``c``; a linear layer gives the next-token logits.

``token_logprobs`` scores given sequences with teacher forcing (SFT and the GRPO ratios); ``generate`` decodes
greedily or by sampling, batched, and returns the tokens with their log-probabilities and a mask that ends at
the first ``<eos>``.

Explained in notebooks/30_reasoning_vqa_sft.ipynb.

Example::

    policy = ReasoningPolicy(image_size=32)
    out = policy.generate(images, qtypes, greedy=True)       # images [B,1,32,32], qtypes [B]
    texts = [VOCAB.decode(t) for t in out.tokens]

Defined in: notebooks/30_reasoning_vqa_sft.ipynb
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .vocab import QUESTION_TYPES, VOCAB

MAX_NEW_TOKENS = 24


@dataclass
class Generation:
    tokens: torch.Tensor  # [B, T] generated ids (<pad> after <eos>)
    logprobs: torch.Tensor  # [B, T] log-prob of each generated token under the sampling distribution (0 on pad)
    mask: torch.Tensor  # [B, T] float: 1 up to and including the first <eos>


class ReasoningPolicy(nn.Module):
    """``(image [, anomaly map], question type) -> think-then-answer tokens``."""

    def __init__(self, image_size: int = 32, use_map: bool = False, vocab_size: int = len(VOCAB),
                 num_questions: int = len(QUESTION_TYPES), width: int = 32, hidden: int = 128, emb: int = 32):
        super().__init__()
        if image_size < 16:
            raise ValueError(f"image_size must be >= 16; got {image_size}")
        self.config = {"image_size": image_size, "use_map": use_map, "vocab_size": vocab_size,
                       "num_questions": num_questions, "width": width, "hidden": hidden, "emb": emb}
        self.use_map = use_map
        c_in = 2 if use_map else 1
        self.encoder = nn.Sequential(
            nn.Conv2d(c_in, 16, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(16, width, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(width, width, 3, 2, 1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(width * 16, hidden), nn.ReLU())
        self.question = nn.Embedding(num_questions, emb)
        self.context = nn.Linear(hidden + emb, hidden)
        self.init_state = nn.Linear(hidden, hidden)
        self.embed = nn.Embedding(vocab_size, emb)
        self.gru = nn.GRU(emb + hidden, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab_size)

    def encode(self, images: torch.Tensor, qtypes: torch.Tensor, maps: torch.Tensor | None = None) -> torch.Tensor:
        """Context vector ``c`` [B, hidden] from the image (and map) and the question type."""
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"images must be [B, 1, H, W]; got {tuple(images.shape)}")
        if self.use_map:
            if maps is None:
                raise ValueError("this policy was built with use_map=True: pass the anomaly maps")
            images = torch.cat([images, maps], 1)
        feat = self.encoder(images)
        return torch.tanh(self.context(torch.cat([feat, self.question(qtypes)], 1)))

    def _step_inputs(self, tokens: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.embed(tokens), ctx[:, None].expand(-1, tokens.shape[1], -1)], 2)

    def forward(self, images: torch.Tensor, qtypes: torch.Tensor, tokens: torch.Tensor,
                maps: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher forcing: logits [B, T, V] for predicting ``tokens`` [B, T] (the decoder reads
        ``<bos>`` + ``tokens[:, :-1]``)."""
        ctx = self.encode(images, qtypes, maps)
        bos = torch.full_like(tokens[:, :1], VOCAB.bos_id)
        inputs = torch.cat([bos, tokens[:, :-1]], 1)
        h0 = torch.tanh(self.init_state(ctx))[None]
        out, _ = self.gru(self._step_inputs(inputs, ctx), h0)
        return self.head(out)

    def token_logprobs(self, images: torch.Tensor, qtypes: torch.Tensor, tokens: torch.Tensor,
                       maps: torch.Tensor | None = None) -> torch.Tensor:
        """log pi(token_t | image, question, tokens_<t) for each position: [B, T]."""
        logits = self(images, qtypes, tokens, maps)
        return torch.log_softmax(logits.float(), -1).gather(2, tokens[..., None])[..., 0]

    @torch.no_grad()
    def generate(self, images: torch.Tensor, qtypes: torch.Tensor, maps: torch.Tensor | None = None,
                 greedy: bool = True, temperature: float = 1.0, max_new_tokens: int = MAX_NEW_TOKENS,
                 generator: torch.Generator | None = None) -> Generation:
        """Decode a batch token by token; stop each row at its first ``<eos>`` (the rest is ``<pad>``)."""
        if not greedy and not temperature > 0:
            raise ValueError(f"temperature must be > 0 when sampling; got {temperature}")
        ctx = self.encode(images, qtypes, maps)
        b = len(ctx)
        h = torch.tanh(self.init_state(ctx))[None]
        prev = torch.full((b, 1), VOCAB.bos_id, dtype=torch.long, device=ctx.device)
        done = torch.zeros(b, dtype=torch.bool, device=ctx.device)
        toks, lps, masks = [], [], []
        for _ in range(max_new_tokens):
            out, h = self.gru(self._step_inputs(prev, ctx), h)
            logits = self.head(out[:, 0]).float()
            if greedy:
                logp = torch.log_softmax(logits, -1)
                nxt = logp.argmax(-1)
            else:
                logp = torch.log_softmax(logits / temperature, -1)
                nxt = torch.multinomial(logp.exp(), 1, generator=generator)[:, 0]
            lp = logp.gather(1, nxt[:, None])[:, 0]
            alive = ~done
            nxt = torch.where(alive, nxt, torch.full_like(nxt, VOCAB.pad_id))
            toks.append(nxt)
            lps.append(torch.where(alive, lp, torch.zeros_like(lp)))
            masks.append(alive.float())
            done = done | (nxt == VOCAB.eos_id)
            prev = nxt[:, None]
            if bool(done.all()):
                break
        return Generation(torch.stack(toks, 1), torch.stack(lps, 1), torch.stack(masks, 1))


def sequence_mask(tokens: torch.Tensor, eos_id: int = VOCAB.eos_id) -> torch.Tensor:
    """[B, T] float mask: 1 up to and including the first ``<eos>`` of each row (all ones if none)."""
    is_eos = (tokens == eos_id).long()
    before = torch.cumsum(is_eos, 1) - is_eos  # number of <eos> strictly before t
    return (before == 0).float()


def policy_from_config(config: dict) -> ReasoningPolicy:
    return ReasoningPolicy(**config)
