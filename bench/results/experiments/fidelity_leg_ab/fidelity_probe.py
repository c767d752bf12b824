"""Probe: a StableSR-style fidelity branch (y -> features added into the VAE decoder) on the shipped model.

    python fidelity_probe.py train RUN MINUTES [--decoder]   # branch (and decoder) on landings
    python fidelity_probe.py score RUN OUT [eval args...]    # eval with the branch patched into the torch backend
"""
import sys
from collections import deque
from pathlib import Path

import torch
from torch import nn


class Fidelity(nn.Module):
    def __init__(self, width=32, mid=64, last=32):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.SiLU(),
                                  nn.Conv2d(width, width, 3, padding=1), nn.SiLU())
        self.to_mid = nn.Conv2d(width, mid, 3, padding=1)
        self.to_last = nn.Conv2d(width, last, 3, padding=1)
        for head in (self.to_mid, self.to_last):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        self.features = None

    def attach(self, decoder):
        def before_last_block(module, args, kwargs):
            return (args[0] + self.to_mid(self.features),) + args[1:], kwargs

        def before_norm(module, args):
            return (args[0] + self.to_last(self.features),)
        decoder.up_blocks[-1].register_forward_pre_hook(before_last_block, with_kwargs=True)
        decoder.conv_norm_out.register_forward_pre_hook(before_norm)

    def set_input(self, y_pm1):
        self.features = self.stem(y_pm1)


def train(run, minutes, decoder_too):
    from spire_rt.training import recipe
    from spire_rt.training.recipe import DecoderStage, StageConfig

    class FidelityStage(DecoderStage):
        name = "fidelity"

        def build(self):
            super().build()
            self.fidelity = Fidelity().to(self.device)
            self.fidelity.attach(self.vae.decoder)
            if not decoder_too:
                for part in self.decoder_parts:
                    part.requires_grad_(False)

        def parameters(self):
            own = list(self.fidelity.parameters())
            return own + (super().parameters() if decoder_too else [])

        def trainable(self):
            return {"decoder": self.vae.decoder, "fidelity": self.fidelity}

        def saved_modules(self):
            return {"vae": self.vae, "fidelity": self.fidelity}

        def loss(self):
            clean, y, prompts = self.next_batch()
            landed = y.shape[0]
            generator = torch.Generator().manual_seed(int(self.rng.integers(2**62)))
            with torch.no_grad():
                latents = torch.cat([self.landings(y, prompts, generator), self.encoder(clean[landed:] * 2 - 1)])
            self.fidelity.set_input(torch.cat([y, clean[landed:]]) * 2 - 1)
            decoded = self.decoder(latents).float()
            per_pair = (decoded - (clean * 2 - 1)).pow(2).mean(dim=(1, 2, 3))
            return torch.log(per_pair + recipe.LOG_MSE_FLOOR).mean(), {"landed_mse": per_pair[:landed].mean().item()}

        def export(self):
            torch.save(self.fidelity.state_dict(), self.out / "fidelity.pt")
            if decoder_too:
                recipe.save_folder(self.vae, self.out / "vae")

        def evaluate(self):
            return {}

    config = StageConfig(stage="decoder", out=Path(run), minutes=minutes, landing_rate=float(__import__("os").environ.get("LANDING", "0.8")), single_rate=0.5,
                         lr=float(__import__("os").environ.get("LR", "2.5e-4")), precision="bf16", eval_minutes=0, quiet=True, batch=8, crop=64)
    torch.set_num_threads(2)
    stage = FidelityStage(config, recipe.get_preset("tiny"), torch.device("cpu"))
    if minutes > 0:
        print(stage.train())
        return
    import numpy as np
    trained = torch.load(Path(run) / "fidelity.pt")
    zero = {k: torch.zeros_like(v) if "to_" in k else v for k, v in trained.items()}
    for tag, sd in (("zero", zero), ("trained", trained)):
        stage.fidelity.load_state_dict(sd)
        stage.rng = np.random.default_rng(123)
        torch.manual_seed(0)
        with torch.no_grad():
            losses = [stage.loss()[0].item() for _ in range(40)]
        print(tag, np.mean(losses))


def score(run, out, extra):
    from spire_rt.backends import torch_backend

    fidelity = Fidelity()
    fidelity.load_state_dict(torch.load(Path(run) / "fidelity.pt"))
    fidelity.eval()
    queue = deque()
    original_run = torch_backend.TorchBackend.run
    attached = set()

    def run_patched(self, network, feeds):
        if id(self) not in attached:
            decoder = self.networks["vae_decoder"].vae.decoder
            fidelity.attach(decoder)
            attached.add(id(self))
        if network == "vae_encoder":
            queue.append(feeds["image"].float())
        if network == "vae_decoder":
            with torch.inference_mode():
                fidelity.set_input(queue.popleft())
        return original_run(self, network, feeds)

    torch_backend.TorchBackend.run = run_patched
    from spire_rt.cli import main
    main(["eval", "--backend", "torch", "--out", out, "--quiet", *extra])


if __name__ == "__main__":
    if sys.argv[1] == "train":
        train(sys.argv[2], float(sys.argv[3]), "--decoder" in sys.argv)
    else:
        score(sys.argv[2], sys.argv[3], sys.argv[4:])
