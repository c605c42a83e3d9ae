"""All-in-One's N hallucination-aware expert decoders (Sec. 3.3.2, 4.3), run as ONE batched computation.

Each expert is the decoder of Sec. 4.3: a fully connected layer lifts the 16-d image code ``v`` back to the
encoder's last feature-map shape ``64 x S/16 x S/16`` (BatchNorm + ReLU), then four transposed convolutions
(kernel 4, stride 2) with 64-32-16-2 output channels, BatchNorm + ReLU after all but the last. The two output
channels are mu^k (the reconstruction) and sigma^k (the hallucination propensity). This is exactly
``medad_edu.models.components.ConvDecoder(out_channels=2)``; the paper's Fig. 3 feeds the shared image code to
every decoder and the prompt only to the router, so the experts see ``v`` alone.

Batching: instead of looping over the N decoders, the N experts are stacked along the channel axis and every
layer becomes a *grouped* layer (``groups=N``): expert k owns channels ``[k*C, (k+1)*C)`` of every layer. One
``Linear(16, N*64*g*g)`` holds the N first layers (its rows are the N experts' weight matrices stacked), each
``ConvTranspose2d(N*Cin, N*Cout, groups=N)`` holds N independent deconvolutions, and a ``BatchNorm2d(N*C)``
normalises each channel separately, which is the same as N separate BatchNorms. So the result equals N
separate decoders applied to the same batch (``tests/test_allinone.py`` checks it against a per-expert loop via
``to_decoders``/``from_decoders``), in one kernel call per layer.

All N experts run for every image, also when TopK keeps K < N of them: with N = 5 small decoders, gathering
the selected (image, expert) pairs would cost more than it saves, and a zero routing weight gives exactly the
same mixture (Eq. 2-3) and zero gradient to the skipped expert. One difference from a sparse dispatch: in
training mode, an expert's BatchNorm statistics come from the whole batch, not only from its routed images.

Explained in notebooks/12_allinone_routing.ipynb and 13_allinone_hallucination.ipynb.

Example::

    experts = BatchedExperts(num_experts=5, image_size=64)
    out = experts(torch.randn(8, 16))      # [8, 5, 2, 64, 64]: mu = out[:, :, 0], sigma = out[:, :, 1]

Defined in: notebooks/12_allinone_routing.ipynb, notebooks/13_allinone_hallucination.ipynb
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..components import ConvDecoder


class BatchedExperts(nn.Module):
    """N decoders ``z [B, latent] -> [B, N, out_channels, S, S]`` as grouped layers."""

    def __init__(self, num_experts: int, image_size: int, latent: int = 16, out_channels: int = 2,
                 channels: Sequence[int] = (64, 32, 16), start_channels: int = 64):
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"num_experts must be >= 1; got {num_experts}")
        n_up = len(channels) + 1
        if image_size % 2 ** n_up:
            raise ValueError(f"image_size must be a multiple of {2 ** n_up}; got {image_size}")
        n = num_experts
        self.num_experts, self.out_channels, self.image_size = n, out_channels, image_size
        self.latent, self.start_channels, self.channels = latent, start_channels, tuple(channels)
        self.grid = image_size // 2 ** n_up
        self.fc = nn.Linear(latent, n * start_channels * self.grid * self.grid)
        chans = [start_channels, *channels]
        layers: list[nn.Module] = [nn.BatchNorm2d(n * start_channels), nn.ReLU(inplace=True)]
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            layers += [nn.ConvTranspose2d(n * c_in, n * c_out, 4, stride=2, padding=1, groups=n, bias=False),
                       nn.BatchNorm2d(n * c_out), nn.ReLU(inplace=True)]
        layers.append(nn.ConvTranspose2d(n * chans[-1], n * out_channels, 4, stride=2, padding=1, groups=n))
        self.deconv = nn.Sequential(*layers)
        # Channels-last weights and activations: grouped transposed convolutions then run about 1.7 times faster
        # on CPU (oneDNN; measured in notebooks/12_allinone_routing.ipynb). The numbers are the same either way.
        self.deconv.to(memory_format=torch.channels_last)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        b, n, g = len(z), self.num_experts, self.grid
        # fc rows are ordered expert-major, so the view puts expert k's 64 maps in channels [64k, 64k+64).
        h = self.fc(z).view(b, n * self.start_channels, g, g).contiguous(memory_format=torch.channels_last)
        out = self.deconv(h)
        return out.reshape(b, n, self.out_channels, self.image_size, self.image_size)

    # --- conversion to and from N separate decoders (for tests and for the book) ----------------------------
    def _pairs(self, decoder: ConvDecoder):
        """(grouped layer, the decoder's matching layer) for every layer with parameters or statistics."""
        ours = [self.fc] + [m for m in self.deconv if isinstance(m, (nn.BatchNorm2d, nn.ConvTranspose2d))]
        theirs = [decoder.fc] + [m for m in decoder.deconv.modules()
                                 if isinstance(m, (nn.BatchNorm2d, nn.ConvTranspose2d))]
        if len(ours) != len(theirs):
            raise ValueError("decoder architecture does not match the batched experts")
        return list(zip(ours, theirs))

    def _new_decoder(self) -> ConvDecoder:
        return ConvDecoder(self.image_size, out_channels=self.out_channels, channels=self.channels,
                           latent=self.latent, start_channels=self.start_channels)

    @torch.no_grad()
    def to_decoders(self) -> list[ConvDecoder]:
        """N separate ``ConvDecoder``s with this module's weights (expert k = slice k of every layer)."""
        decoders = []
        for k in range(self.num_experts):
            dec = self._new_decoder()
            for grouped, separate in self._expert_tensors(dec, k):
                separate.copy_(grouped)
            decoders.append(dec.train(self.training))
        return decoders

    @torch.no_grad()
    def load_decoders(self, decoders: Sequence[ConvDecoder]) -> "BatchedExperts":
        """Copy N separate decoders' weights into the grouped layers (the inverse of ``to_decoders``)."""
        if len(decoders) != self.num_experts:
            raise ValueError(f"expected {self.num_experts} decoders; got {len(decoders)}")
        for k, dec in enumerate(decoders):
            for grouped, separate in self._expert_tensors(dec, k):
                grouped.copy_(separate)
        return self

    def _expert_tensors(self, dec: ConvDecoder, k: int):
        """``(view of expert k in our grouped tensor, the separate decoder's tensor)`` for every parameter and
        buffer; the views share storage, so copying into either side writes through."""
        for ours, theirs in self._pairs(dec):
            for name, tensor in list(theirs.named_parameters(recurse=False)) + list(
                    theirs.named_buffers(recurse=False)):
                grouped = getattr(ours, name)
                if name == "num_batches_tracked":  # a scalar shared by all experts
                    yield grouped, tensor
                else:
                    size = tensor.shape[0]
                    yield grouped[k * size:(k + 1) * size], tensor

    @classmethod
    def from_decoders(cls, decoders: Sequence[ConvDecoder]) -> "BatchedExperts":
        d = decoders[0]
        chans = [m.out_channels for m in d.deconv.modules() if isinstance(m, nn.ConvTranspose2d)]
        experts = cls(len(decoders), d.grid * 2 ** len(chans), latent=d.fc.in_features, out_channels=chans[-1],
                      channels=chans[:-1], start_channels=d.start_channels)
        return experts.load_decoders(decoders)
