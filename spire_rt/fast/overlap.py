"""Run the adaptor on a second CUDA stream while the UNet's encoder runs on the first.

    patches.method(denoiser_net, "forward", overlapped_forward(side_stream), "overlap")

Within one denoiser call, the adaptor (batch 1) and the UNet's down and mid blocks (batch 2 when guided) do not
depend on each other: the adaptor's modulations are first needed at the decoder entry. Run one after the other,
each leaves much of a Hopper GPU idle at the 16x16 and 8x8 levels, where a convolution has only a few hundred output
rows. Here the adaptor is forked onto `side` and joined before the decoder; inside a CUDA graph the fork and the
join become graph edges, so every replay runs the two branches side by side (on an H200: 9.5 ms a guided step on
one stream, 7.9 ms on two; bench/results/gpu_check_h200.md).

The guided step also hands the adaptor's batch-1 modulations straight to the decoder, where the kernels (and the
PyTorch reference) broadcast them over both guidance branches instead of repeating them.

Off the GPU (`side=None`) the same forward runs the two branches in turn: the CPU tests check the split itself.
"""

from __future__ import annotations

import torch

from ..models.modulated_unet import check_modulation_count, unet_decode_modulated, unet_encode
from ..models.networks import apply_guidance


def overlapped_forward(side: torch.cuda.Stream | None):
    """A `DenoiserNet.forward` that forks the adaptor onto `side` (None: no fork)."""

    def forward(self, sample, timestep, y_latent, restore_embeddings, semantic_embeddings, adaptor_strength,
                guidance_scale):
        main = torch.cuda.current_stream(sample.device) if side is not None else None
        if side is not None:
            side.wait_stream(main)  # the adaptor reads this step's inputs, written on the main stream
            with torch.cuda.stream(side):
                modulations = self.adaptor(sample, timestep, y_latent, restore_embeddings)
        else:
            modulations = self.adaptor(sample, timestep, y_latent, restore_embeddings)
        check_modulation_count(self.unet, modulations)

        unet_sample = torch.cat([sample, sample]) if self.guided else sample
        encoded = unet_encode(self.unet, unet_sample, timestep, semantic_embeddings)

        if side is not None:
            main.wait_stream(side)
            for modulation in modulations:  # made on `side`, read on `main`: keep the allocator from reusing it
                modulation.record_stream(main)
        out = unet_decode_modulated(self.unet, encoded, semantic_embeddings, modulations, adaptor_strength,
                                    self.modulate_fn)
        return apply_guidance(out, guidance_scale) if self.guided else out

    return forward
