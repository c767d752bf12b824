"""The spire-tiny training recipe: SPIRE's two-part scheme at small scale, one stage at a time.

    vae      AutoencoderKL on clean crops: L1 + L1 of image gradients + a small KL     -> RUN/vae/
    decoder  (optional, any time after vae) the decoder alone, encoder frozen, so the latent space the
             prior and adaptor learned stays valid; raises the reconstruction ceiling     -> RUN/vae/
             With --landing-rate R (after the adaptor) that share of each batch is RUN/model's own restorations:
             the latents its default sampling lands on from degraded pairs, decoded against the clean crops, so
             the last network a restoration passes through learns what the one-step landing leaves undone.
             With --fidelity (and --landing-rate 1) a fidelity branch (models/fidelity.py) learns beside it:
             the degraded image itself steers the decoder                              -> RUN/fidelity/
             Once RUN/fidelity exists every stage decodes through it, as the runtime does. --fidelity-width W
             sets a fresh branch's channels, or widens RUN/fidelity's to W without changing its output
             (FidelityBranch.widened; with --fresh, not --resume, whose checkpoint holds the narrower branch).
    prior    the UNet, unconditional (semantic prompt always ""), v-prediction on latents -> RUN/unet/, RUN/text_encoder/
    adaptor  VAE and UNet frozen (unless --train-unet, --train-decoder); the modulated adaptor and the text
             encoder learn the restoration prompt on pairs from spire_rt.degrade (20% "Remove all
             degradation")                                                                -> RUN/model/ (a SPIRE folder)
             With --strength LO HI it learns the runtime's one-step SDEdit restoration instead: z_t is the
             degraded latent E(y) noised to a timestep of strength in [LO, HI] (the noise scaled by
             --start-noise; 0 makes a deterministic one-step restorer), and the loss is the log of the
             error of the clean latent the one step lands on (x0 = alpha_t z_t - sigma_t v), per pair.
             --single-rate R degrades that share of the pairs by one stage-1 operation instead of two stages,
             so a small model also learns to undo one well-stated degradation; a resume may change it.
             --single-weights B D N J draws blur, downscale, noise and JPEG in that proportion for those pairs
             (default equally), to tilt a leg toward a family it is losing.
             --blind-rate R prompts that share of the pairs "Remove all degradation" (default 0.2, BLIND_RATE).
             --loss-space pixel scores the landed latent through the VAE decoder against the clean
             crop instead (what eval measures); a resume may change it too.
             --train-decoder (with --loss-space pixel) trains RUN/vae's decoder and RUN/fidelity on that same
             loss, with the adaptor rather than in turns with it           -> RUN/vae/, RUN/fidelity/ as well
             --rank-rate R restores that share of the pairs a second time with a stated noise or blur sigma
             raised, from the same start, and penalises a raised output whose detail does not move the way the
             prompt says (training/ranking.py): what eval --sweep scores, asked for directly.

Each stage reads the folders the previous one wrote, checkpoints to RUN/<stage>.ckpt every few minutes (model,
optimiser, step, RNG states, so --resume carries on), and logs JSON lines to RUN/<stage>.jsonl. A run that finds
RUN/<stage>.ckpt is refused unless it says --resume, or --fresh, which keeps the earlier checkpoint and log under a
dated name (RUN/<stage>.<UTC time>.ckpt) and starts the stage again. A stage stops at
--steps or --minutes, whichever comes first; its folder is rewritten at every checkpoint, so a stage cut short
still leaves something the next one can read. The learning rate follows a cosine over the run's budget. With
--workers N, N processes draw the batches (crops and degradations) beside the loop, which a GPU needs to stay busy;
bench/train_tiny_gpu.sh runs every stage that way. --precision bf16 runs each step's forward passes under
bfloat16 autocast; the weights, the optimiser, the losses and the decoder stage's landings stay fp32.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch.func import functional_call
from transformers import CLIPTextConfig, CLIPTextModel

from ..backends.base import resolve_device
from ..degrade import single_operation_shares
from ..errors import SpireError
from ..models.adaptor import init_adaptor_from_unet
from ..models.fidelity import FidelityBranch
from ..models.modulated_unet import unet_forward_modulated
from ..models.networks import TextEncoderNet, VaeDecoderNet, VaeEncoderNet
from ..models.presets import Preset, get_preset
from ..models.spire_model import SpireModel, load_component, load_fidelity, load_model
from ..models.tokenizer import MAX_LENGTH, build_grammar_tokenizer
from ..sampling import SAMPLERS, NoiseSchedule, trailing_timesteps
from ..staging import staged_folder
from .data import BLIND_RATE, HELD_OUT, BatchPlan, TrainingImages, load_skimage_image, worker_batches
from .ranking import high_frequency_energy, raised_prompt, rank_hinge
from .ship import check_same_encoder, differing_tensors

STAGES = ("vae", "decoder", "prior", "adaptor")


@dataclass
class StageConfig:
    stage: str
    out: Path
    steps: int | None = None
    minutes: float | None = None
    batch: int | None = None  # None: the stage's default (STAGE_DEFAULTS)
    crop: int | None = None
    lr: float | None = None
    device: str = "cpu"
    resume: bool = False
    fresh: bool = False  # start again although RUN/<stage>.ckpt exists (it is kept under a dated name)
    seed: int = 0
    threads: int = 2
    workers: int = 0  # processes drawing batches beside the loop (0: the loop draws them, from self.rng)
    checkpoint_minutes: float = 4.0
    eval_minutes: float = 6.0  # adaptor: how often the held-out gain is measured (0: never)
    log_every: int = 10
    leaves: int = 128  # dead-leaves images in the pool
    warmup: int = 50  # steps of linear learning-rate warm-up
    quiet: bool = False
    strength: tuple[float, float] | None = None  # adaptor: train one-step restoration from these SDEdit strengths
    start_noise: float = 1.0  # adaptor, with strength: the scale of the noise at the start (0: deterministic)
    single_rate: float = 0.0  # adaptor: share of pairs degraded by one stage-1 operation instead of two stages
    single_weights: tuple[float, ...] | None = None  # how often each single operation is drawn (None: equally)
    blind_rate: float = BLIND_RATE  # share of pairs prompted "Remove all degradation" instead of their prompt
    loss_space: str = "latent"  # adaptor, one-step: where the landed x0 is scored ("latent" or "pixel")
    landing_rate: float = 0.0  # decoder: share of each batch decoded from RUN/model's restorations
    rank_rate: float = 0.0  # adaptor, one-step: share of pairs also restored with a raised sigma (ranking.py)
    precision: str = "fp32"  # "bf16": the forward passes under bfloat16 autocast (weights, optimiser, loss in fp32)
    rgb_permute: float = 0.0  # share of training crops drawn in another RGB order (data.RGB_ORDERS)
    train_unet: bool = False  # adaptor: train the UNet's weights too (a restoration-tuned prior; RUN/unet stays)
    train_decoder: bool = False  # adaptor, pixel loss: train RUN/vae's decoder and RUN/fidelity on the same loss
    fidelity: bool = False  # decoder: train a fidelity branch (RUN/fidelity) with the decoder
    fidelity_width: int | None = None  # with fidelity: a fresh branch's channels, or RUN/fidelity's widened to
    extra: dict = field(default_factory=dict)


# Sized for 2 busy CPU cores (about 1 s per step); on a GPU raise --batch and --crop.
STAGE_DEFAULTS = {
    "vae": {"batch": 8, "crop": 64, "lr": 1e-3},
    "decoder": {"batch": 8, "crop": 64, "lr": 5e-4},
    "prior": {"batch": 8, "crop": 64, "lr": 8e-4},
    "adaptor": {"batch": 8, "crop": 64, "lr": 5e-4},
}
KL_WEIGHT = 1e-5  # per latent element; keeps the posterior near N(0, 1) without blurring the reconstruction
# Adaptor: the share of timesteps drawn from the top HIGH_T_SPAN of the schedule, where few-step sampling starts
# (one step evaluates t = T-1 only); the rest are uniform, so more steps still work.
HIGH_T_RATE = 0.7
HIGH_T_SPAN = 0.1
LOG_MSE_FLOOR = 1e-4  # one-step adaptor loss: keeps log(mse) finite on a pair that is already perfect
# On CUDA, --rank-rate's sub-batch is padded to a multiple of this (AdaptorStage.rank_penalty says why).
RANK_BUCKET_CUDA = 8
LOSS_SPACES = ("latent", "pixel")
# Training precisions. bf16 autocast runs the convolutions and attention of the forward passes (and so of their
# backward) in bfloat16 on a GPU's tensor cores, while the weights, their gradients, the optimiser and every loss
# reduction stay fp32. bfloat16 keeps fp32's exponent range, so no loss scaling is needed (fp16 would need it).
PRECISIONS = ("fp32", "bf16")


def run_stage(config: StageConfig, preset: Preset | None = None) -> dict:
    """Train one stage; returns its last log record."""
    if config.stage not in STAGES:
        raise SpireError(f"unknown stage {config.stage!r}; use one of {', '.join(STAGES)}")
    defaults = STAGE_DEFAULTS[config.stage]
    config = replace(config, out=Path(config.out),
                     **{k: getattr(config, k) if getattr(config, k) is not None else v for k, v in defaults.items()})
    if config.steps is None and config.minutes is None:
        raise SpireError("give --steps or --minutes (or both: the stage stops at whichever comes first)")
    preset = preset or get_preset("tiny")
    check_stage_options(config, int(preset.scheduler.get("num_train_timesteps", 1000)))
    torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # every step has the same shapes (rank_penalty pads to keep them)
    check_earlier_run(config)
    config.out.mkdir(parents=True, exist_ok=True)
    stages = {"vae": VaeStage, "decoder": DecoderStage, "prior": PriorStage, "adaptor": AdaptorStage}
    trainer = stages[config.stage](config, preset, device)
    return trainer.train()


def check_earlier_run(config: StageConfig) -> None:
    """A stage writes RUN/<stage>.ckpt from its first checkpoint on, so a run that did not say what to do with an
    earlier one is refused before anything is written."""
    if config.resume and config.fresh:
        raise SpireError("--resume carries on from the earlier checkpoint and --fresh starts again: give one")
    checkpoint = config.out / f"{config.stage}.ckpt"
    if checkpoint.exists() and not (config.resume or config.fresh):
        raise SpireError(f"{checkpoint} holds an earlier run of the {config.stage} stage: give --resume to carry "
                         "it on, or --fresh to start again (the earlier checkpoint and log are kept, renamed)")


def set_earlier_run_aside(out: Path, stage: str, quiet: bool = False) -> None:
    """--fresh: RUN/<stage>.ckpt and .jsonl renamed to RUN/<stage>.<UTC time>.ckpt and .jsonl, never deleted."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    earlier = [path for path in (out / f"{stage}.ckpt", out / f"{stage}.jsonl") if path.exists()]
    asides = [path.with_name(f"{stage}.{stamp}{path.suffix}") for path in earlier]
    taken = [aside.name for aside in asides if aside.exists()]
    if taken:
        raise SpireError(f"--fresh: {', '.join(taken)} exists already in {out}; run again in a second")
    for path, aside in zip(earlier, asides):
        path.rename(aside)
        if not quiet:
            print(f"--fresh: the earlier {path.name} is kept as {aside.name}")


def check_stage_options(config: StageConfig, num_train_timesteps: int) -> None:
    if config.workers < 0:
        raise SpireError(f"--workers must be 0 or more, got {config.workers}")
    if config.single_rate and config.stage != "adaptor" and not config.landing_rate:
        raise SpireError("--single-rate applies to the adaptor stage (and the decoder stage with --landing-rate)")
    if not 0 <= config.single_rate <= 1:
        raise SpireError(f"--single-rate must be in [0, 1], got {config.single_rate}")
    if config.blind_rate != BLIND_RATE and config.stage != "adaptor" and not config.landing_rate:
        raise SpireError("--blind-rate applies to the adaptor stage (and the decoder stage with --landing-rate)")
    if not 0 <= config.blind_rate <= 1:
        raise SpireError(f"--blind-rate must be in [0, 1], got {config.blind_rate}")
    if config.single_weights is not None:
        if not config.single_rate:
            raise SpireError("--single-weights needs --single-rate above 0 (it weights the single-operation pairs)")
        try:
            single_operation_shares(config.single_weights)
        except ValueError as error:
            raise SpireError(f"--single-weights: {error}") from None
    if config.train_unet and config.stage != "adaptor":
        raise SpireError("--train-unet applies to the adaptor stage only")
    if config.train_decoder and (config.stage != "adaptor" or config.loss_space != "pixel"):
        raise SpireError("--train-decoder applies to the adaptor stage with --loss-space pixel (only the pixel "
                         "loss reaches the decoder)")
    if config.fidelity and config.stage != "decoder":
        raise SpireError("--fidelity applies to the decoder stage only")
    if config.fidelity and config.landing_rate != 1:
        raise SpireError(fidelity_needs_landings(config.out / "fidelity"))
    if config.fidelity_width is not None:
        if not config.fidelity:
            raise SpireError("--fidelity-width needs --fidelity (it sizes the branch the decoder stage trains)")
        if config.fidelity_width < 1:
            raise SpireError(f"--fidelity-width must be 1 or more, got {config.fidelity_width}")
    if config.landing_rate and config.stage != "decoder":
        raise SpireError("--landing-rate applies to the decoder stage only")
    if not 0 <= config.landing_rate <= 1:
        raise SpireError(f"--landing-rate must be in [0, 1], got {config.landing_rate}")
    if not 0 <= config.rank_rate <= 1:
        raise SpireError(f"--rank-rate must be in [0, 1], got {config.rank_rate}")
    if not 0 <= config.rgb_permute <= 1:
        raise SpireError(f"--rgb-permute must be in [0, 1], got {config.rgb_permute}")
    if config.rank_rate and (config.stage != "adaptor" or config.strength is None):
        raise SpireError("--rank-rate applies to the adaptor stage with --strength LO HI (it ranks one-step "
                         "restorations)")
    if config.precision not in PRECISIONS:
        raise SpireError(f"--precision must be one of {', '.join(PRECISIONS)}, got {config.precision!r}")
    if config.loss_space not in LOSS_SPACES:
        raise SpireError(f"--loss-space must be one of {', '.join(LOSS_SPACES)}, got {config.loss_space!r}")
    if config.loss_space != "latent" and config.strength is None:
        raise SpireError("--loss-space pixel needs --strength LO HI (it scores the one-step restoration)")
    if config.strength is None:
        if config.start_noise != 1.0:
            raise SpireError("--start-noise needs --strength LO HI (it scales the noise of the one-step start)")
        return
    if config.stage != "adaptor":
        raise SpireError("--strength applies to the adaptor stage only")
    low, high = config.strength
    # Strength 1 starts from pure noise in the runtime (y unused), so a one-step start stays below it; and
    # LO * T must name at least one training timestep.
    if not 0 < low <= high < 1:
        raise SpireError(f"--strength LO HI must satisfy 0 < LO <= HI < 1, got {low} {high}")
    if round(low * num_train_timesteps) < 1:
        raise SpireError(f"--strength LO: {low} is below the first timestep (LO * T must be at least 1)")
    if not 0 <= config.start_noise <= 1:
        raise SpireError(f"--start-noise must be in [0, 1], got {config.start_noise}")


class Stage:
    """The loop every stage shares: budget, cosine LR, checkpoints, resume, logs, progress bar."""

    name = ""

    def __init__(self, config: StageConfig, preset: Preset, device: torch.device):
        self.config = config
        self.preset = preset
        self.device = device
        self.out = config.out
        seed_everything(config.seed)
        self.rng = np.random.default_rng(config.seed)
        self.images = TrainingImages.load(leaves=config.leaves, seed=config.seed, cache=self.out / "cache",
                                          processes=max(1, config.workers), rgb_permute=config.rgb_permute)
        self.stream = None  # worker_batches, from train() on, when config.workers > 0
        self.step = 0
        self.elapsed_before = 0.0  # training seconds spent by earlier runs of this stage (resume)
        self.build()
        self.optimizer = torch.optim.AdamW(self.param_groups(), lr=config.lr, weight_decay=0.0)
        self.checkpoint_path = self.out / f"{self.name}.ckpt"
        self.log_path = self.out / f"{self.name}.jsonl"
        if config.resume:
            self.load_checkpoint()
        elif config.fresh:  # only now that the stage has built: a refused run leaves the earlier one in place
            set_earlier_run_aside(self.out, self.name, config.quiet)

    # --- what each stage provides -----------------------------------------------------------------------------
    def build(self) -> None:
        raise NotImplementedError

    def parameters(self) -> list[torch.nn.Parameter]:
        raise NotImplementedError

    def param_groups(self) -> list[dict]:
        """The optimiser's groups, each named: a stage whose trained parts vary between runs (the adaptor's
        --train-unet and --train-decoder) gives each optional part a group of its own, so a resume can carry the
        optimiser state of the groups both runs have (carried_optimizer_state matches them by name)."""
        return [{"name": self.name, "params": self.parameters()}]

    def loss(self) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def trainable(self) -> dict[str, torch.nn.Module]:
        raise NotImplementedError

    def export(self) -> None:
        """Write this stage's output folder(s) from the current weights."""
        raise NotImplementedError

    def evaluate(self) -> dict:
        return {}

    def batch_plan(self) -> BatchPlan:
        """What each step draws: clean crops only, unless the stage degrades some of them."""
        return self.plan_with_pairs(degraded=0)

    def plan_with_pairs(self, degraded: int) -> BatchPlan:
        """A batch whose first `degraded` crops get a degraded pair, drawn as --single-rate, --single-weights and
        --blind-rate say."""
        config = self.config
        return BatchPlan(config.batch, config.crop, degraded=degraded, single_rate=config.single_rate,
                         single_weights=config.single_weights, blind_rate=config.blind_rate)

    # --- the loop ---------------------------------------------------------------------------------------------
    def train(self) -> dict:
        from tqdm import tqdm

        config = self.config
        budget_s = config.minutes * 60 if config.minutes is not None else math.inf
        start_step = self.step
        started = last_checkpoint = last_eval = time.perf_counter()
        total = config.steps if config.steps is not None else None
        bar = tqdm(total=total, initial=0, desc=self.name, unit="step", disable=config.quiet, mininterval=5)
        record: dict = {}
        running: list[float] = []
        for module in self.training_modules():
            module.train()
        if config.workers:
            # Seeded by the step too, so a resumed run draws new data instead of replaying the first run's.
            self.stream = worker_batches(self.images, self.batch_plan(), (config.seed, self.step), config.workers)
        while True:
            run_s = time.perf_counter() - started
            done = self.step - start_step
            if (config.steps is not None and done >= config.steps) or run_s >= budget_s:
                break
            fraction = max(done / config.steps if config.steps else 0.0, run_s / budget_s)
            lr = cosine_lr(config.lr, fraction, done, config.warmup)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            with self.autocast():
                loss, metrics = self.loss()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(self.parameters(), 1.0)
            self.optimizer.step()
            self.step += 1
            running.append(loss.item())
            bar.update(1)
            if self.step % config.log_every == 0:
                record = {"stage": self.name, "step": self.step, "loss": float(np.mean(running)), "lr": lr,
                          "grad_norm": float(grad_norm), "elapsed_s": round(self.elapsed(started), 1),
                          **{k: float(v) for k, v in metrics.items()}}
                running = []
                self.log(record)
                bar.set_postfix(loss=f"{record['loss']:.4f}")
            now = time.perf_counter()
            if config.eval_minutes and now - last_eval >= config.eval_minutes * 60:
                self.log({"stage": self.name, "step": self.step, "elapsed_s": round(self.elapsed(started), 1),
                          "eval": self.evaluate()})
                for module in self.training_modules():
                    module.train()
                last_eval = time.perf_counter()
            if now - last_checkpoint >= config.checkpoint_minutes * 60:
                self.save_checkpoint(started)
                last_checkpoint = time.perf_counter()
        bar.close()
        self.save_checkpoint(started)
        final = {"stage": self.name, "step": self.step, "elapsed_s": round(self.elapsed(started), 1),
                 "final": True}
        if config.eval_minutes:
            final["eval"] = self.evaluate()
        self.log(final)
        return {**record, **final}

    def autocast(self):
        """The forward passes' precision (config.precision); backward follows the dtypes they recorded."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.precision == "bf16")

    def elapsed(self, started: float) -> float:
        return self.elapsed_before + time.perf_counter() - started

    def log(self, record: dict) -> None:
        with self.log_path.open("a", encoding="utf-8") as file:
            file.write(json.dumps(record) + "\n")

    def save_checkpoint(self, started: float) -> None:
        state = {
            "step": self.step,
            "elapsed_s": self.elapsed(started),
            "modules": {name: module.state_dict() for name, module in self.saved_modules().items()},
            "optimizer": self.optimizer.state_dict(),
            "numpy_rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self.config).items()},
            **self.checkpoint_extras(),
        }
        # The folders first: a run cut short between the two leaves them newer than the checkpoint, never older,
        # so RUN/vae (which the adaptor's --train-decoder keeps only there) never goes back.
        self.export()
        partial = self.checkpoint_path.with_suffix(".ckpt.partial")
        torch.save(state, partial)
        partial.replace(self.checkpoint_path)

    def load_checkpoint(self) -> None:
        if not self.checkpoint_path.exists():
            raise SpireError(f"--resume: no checkpoint at {self.checkpoint_path}")
        # Loaded to the CPU: the RNG state must stay a CPU tensor, and load_state_dict moves the rest (optimiser
        # state included) to where the parameters live.
        state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=False)
        saved_strength = state.get("config", {}).get("strength")
        if saved_strength is not None and self.config.strength is None:
            raise SpireError(f"--resume: {self.checkpoint_path} was trained with --strength "
                             f"{' '.join(map(str, saved_strength))} (one-step); give --strength again (and "
                             "--start-noise), or the run would fall back to the diffusion loss")
        self.load_modules(state["modules"])
        self.optimizer.load_state_dict(carried_optimizer_state(self.saved_optimizer(state),
                                                               self.optimizer.state_dict()))
        self.rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        self.step = state["step"]
        self.elapsed_before = state["elapsed_s"]

    def saved_modules(self) -> dict[str, torch.nn.Module]:
        """What a checkpoint holds: the trained parts."""
        return self.trainable()

    def checkpoint_extras(self) -> dict:
        """Anything else a stage's checkpoint records beside its modules and optimiser."""
        return {}

    def training_modules(self) -> list[torch.nn.Module]:
        """What the loop puts in training mode: the trained parts."""
        return list(self.trainable().values())

    def saved_optimizer(self, state: dict) -> dict:
        """The checkpoint's optimiser state that a resume may carry on (carried_optimizer_state)."""
        return state["optimizer"]

    def load_modules(self, saved: dict[str, dict]) -> None:
        for name, module in self.trainable().items():
            module.load_state_dict(saved[name])

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """(clean, y, prompts) of batch_plan() on the stage's device: from the workers when there are any, else
        drawn here from self.rng (so a resume, which restores it, carries the same stream on)."""
        if self.stream is not None:
            clean, y, prompts = next(self.stream)
        else:
            clean, y, prompts = self.batch_plan().draw(self.images, self.rng)
        return clean.to(self.device), y.to(self.device), prompts

    def clean_batch(self) -> torch.Tensor:
        return self.next_batch()[0]


class VaeStage(Stage):
    name = "vae"

    def build(self) -> None:
        torch.manual_seed(self.config.seed)
        self.vae = AutoencoderKL(**self.preset.vae).to(self.device)

    def trainable(self):
        return {"vae": self.vae}

    def parameters(self):
        return list(self.vae.parameters())

    def loss(self):
        x = self.clean_batch() * 2 - 1
        posterior = self.vae.encode(x).latent_dist
        # Decoding the mean (the posterior's spread is left to the KL term) converges several times faster in a
        # CPU-sized budget, and the mean is all the runtime ever encodes (networks.VaeEncoderNet).
        reconstruction = self.vae.decode(posterior.mean).sample
        loss, metrics = reconstruction_loss(reconstruction, x)
        kl = posterior.kl().float().mean() / posterior.mean[0].numel()
        return loss + KL_WEIGHT * kl, {**metrics, "kl": kl.item()}

    def export(self) -> None:
        """The VAE with its scaling factor set so the training latents have unit standard deviation."""
        self.vae.eval()
        generator = np.random.default_rng(12345)
        with torch.no_grad():
            crops = self.images.crops(generator, 32, 64).to(self.device) * 2 - 1
            std = float(self.vae.encode(crops).latent_dist.mean.std())
        self.vae.register_to_config(scaling_factor=round(1.0 / max(std, 1e-3), 5))
        save_folder(self.vae, self.out / "vae")
        self.vae.train()


class DecoderStage(VaeStage):
    """The VAE's decoder alone, from RUN/vae: the encoder (and so every latent) stays exactly as it was.

    With --landing-rate R, R of each batch is decoded from RUN/model's restorations of degraded pairs (Landings)
    instead of from the clean crops' latents, and every pair is scored by the log of its error (the mean PSNR,
    as the one-step adaptor is). The adaptor and UNet are not touched: only how their result becomes pixels.
    With a fidelity branch (--fidelity trains one, RUN/fidelity holds it) the decoder reads each pair's degraded
    image too, and every pair must be a landing: a clean crop handed in as its own degraded image teaches the
    branch to copy its input, which the log loss rewards without bound (tried: the restorations got worse).
    """

    name = "decoder"

    def build(self) -> None:
        self.vae = load_component(self.out / "vae", "vae").to(self.device)
        self.vae.requires_grad_(False)
        self.decoder_parts = vae_decoder_parts(self.vae)
        for part in self.decoder_parts:
            part.requires_grad_(True)
        self.fidelity = run_fidelity(self.out, self.vae, create=self.config.fidelity,
                                     width=self.config.fidelity_width)
        if self.fidelity is not None:
            self.fidelity.to(self.device).requires_grad_(self.config.fidelity)
            if self.config.landing_rate != 1:
                raise SpireError(fidelity_needs_landings(self.out / "fidelity"))
        self.encoder, self.decoder = VaeEncoderNet(self.vae), VaeDecoderNet(self.vae, self.fidelity)
        self.landings = None
        if self.config.landing_rate:
            model_folder = self.out / "model"
            if not model_folder.is_dir():
                raise SpireError(f"--landing-rate: no adaptor model at {model_folder} (run the adaptor stage first)")
            # The adaptor learned from its own VAE's latents: landings made through another encoder would not be
            # what the runtime decodes.
            check_same_encoder(self.out / "vae", model_folder / "vae")
            self.landings = Landings(load_model(model_folder), self.device)

    def trainable(self):
        return {"vae": self.vae, "fidelity": self.fidelity} if self.config.fidelity else {"vae": self.vae}

    def parameters(self):
        return [p for group in self.param_groups() for p in group["params"]]

    def param_groups(self):
        groups = [{"name": "decoder", "params": [p for part in self.decoder_parts for p in part.parameters()]}]
        if self.config.fidelity:
            groups.append({"name": "fidelity", "params": list(self.fidelity.parameters())})
        return groups

    def saved_modules(self):
        return {"vae": self.vae, "fidelity": self.fidelity} if self.fidelity is not None else {"vae": self.vae}

    def load_modules(self, saved):
        if "fidelity" in saved:
            if self.fidelity is None:
                raise SpireError(f"--resume: {self.checkpoint_path} holds a fidelity branch, but "
                                 f"{self.out / 'fidelity'} is gone")
            saved_width, width = saved["fidelity"]["stem.0.weight"].shape[0], self.fidelity.config.width
            if saved_width != width:
                asked = (f"--fidelity-width asks for {width}" if self.config.fidelity_width is not None
                         else f"{self.out / 'fidelity'} has {width}")
                raise SpireError(f"--resume: {self.checkpoint_path} holds a fidelity branch of {saved_width} "
                                 f"channels and {asked}; to widen a branch, give --fresh instead of --resume "
                                 "(the decoder carries on from RUN/vae with a fresh optimiser)")
        moved = decoder_changes(self.vae, self.fidelity, saved)
        if moved:
            # Loading the checkpoint would put back the older weights over what the other stage trained.
            raise SpireError(f"--resume: {self.out / 'vae'}'s decoder (or {self.out / 'fidelity'}) is not what "
                             f"{self.checkpoint_path} left ({len(moved)} tensors differ): a later run trained it (the "
                             "adaptor stage's --train-decoder, or a decoder run cut short after writing it); give "
                             "--fresh to carry it on as it is, with a fresh optimiser (the checkpoint is kept)")
        self.vae.load_state_dict(saved["vae"])
        if "fidelity" in saved:
            self.fidelity.load_state_dict(saved["fidelity"])

    def batch_plan(self) -> BatchPlan:
        landed = round(self.config.landing_rate * self.config.batch) if self.landings is not None else 0
        return self.plan_with_pairs(degraded=landed)

    def loss(self):
        clean, y, prompts = self.next_batch()
        if self.landings is None:
            with torch.no_grad():
                latent = self.vae.encode(clean * 2 - 1).latent_dist.mean
            return reconstruction_loss(self.vae.decode(latent).sample, clean * 2 - 1)
        landed = y.shape[0]
        latents = []
        if landed:
            generator = torch.Generator().manual_seed(int(self.rng.integers(2**62)))
            latents.append(self.landings(y, prompts, generator))
        if landed < clean.shape[0]:
            with torch.no_grad():
                latents.append(self.encoder(clean[landed:] * 2 - 1))
        y_image = y * 2 - 1 if self.fidelity is not None else None  # every pair landed (build)
        decoded = self.decoder(torch.cat(latents), y_image).float()  # the loss in fp32 under --precision bf16
        per_pair = (decoded - (clean * 2 - 1)).pow(2).mean(dim=(1, 2, 3))
        metrics = {"landed_mse": per_pair[:landed].mean().item()} if landed else {}
        return torch.log(per_pair + LOG_MSE_FLOOR).mean(), metrics

    def export(self) -> None:
        """Same config (and scaling factor) as the VAE it started from: only decoder weights change."""
        save_folder(self.vae, self.out / "vae")
        if self.config.fidelity:
            save_folder(self.fidelity, self.out / "fidelity")

    def evaluate(self) -> dict:
        """Reconstruction PSNR of the held-out 256x256 centre crops (the eval benchmark's images)."""
        from ..evaluation.benchmark import centre_crop

        self.vae.eval()
        values = {}
        with torch.no_grad():
            for name in HELD_OUT:
                crop = centre_crop(load_skimage_image(name))
                clean = torch.from_numpy(crop).permute(2, 0, 1)[None].to(self.device)
                latent = self.vae.encode(clean * 2 - 1).latent_dist.mean
                decoded = ((self.vae.decode(latent).sample + 1) / 2).clamp(0, 1)
                values[name] = round(psnr(clean[0].permute(1, 2, 0).cpu().numpy(),
                                          decoded[0].permute(1, 2, 0).cpu().numpy()), 2)
        self.vae.train()
        return {"reconstruction_psnr": values}


class Landings:
    """The latents a SPIRE model's default restoration lands on before decoding: the pipeline's phases 2 to 4 at
    the model's restore_defaults, through the same parts (a PromptEncoder over a fp32 TorchBackend, the unguided
    denoiser network, the sampler), for a batch of degraded images. One ensemble member: the pipeline decodes
    each member's own latent before it averages the images, so one member's landing is what a decoder sees."""

    def __init__(self, model: SpireModel, device: torch.device):
        from ..backends.torch_backend import TorchBackend
        from ..pipeline import RestoreOptions
        from ..prompt_encoder import PromptEncoder

        self.backend = TorchBackend(model, device=device, dtype=torch.float32)
        self.prompts = PromptEncoder(self.backend, model.tokenizer, model.max_text_length)
        self.options = RestoreOptions(**model.restore_defaults).validated()
        self.schedule = NoiseSchedule.from_config(model.scheduler_config)
        self.timesteps = trailing_timesteps(self.options.steps, self.schedule.num_train_timesteps,
                                            self.options.strength)

    @torch.no_grad()
    def __call__(self, y: torch.Tensor, prompts: list[str], generator: torch.Generator) -> torch.Tensor:
        # fp32 under a stage's bf16 autocast too: these must be the latents the runtime decodes.
        with torch.autocast(y.device.type, enabled=False):
            return self.land(y, prompts, generator)

    def land(self, y: torch.Tensor, prompts: list[str], generator: torch.Generator) -> torch.Tensor:
        batch, opts, device = y.shape[0], self.options, self.backend.device
        y_latent = self.backend.run("vae_encoder", {"image": y * 2 - 1})["latent"]
        noise = torch.randn(y_latent.shape, generator=generator).to(device)
        start = noise if opts.strength == 1 else self.schedule.add_noise(y_latent, opts.start_noise * noise,
                                                                         self.timesteps[:1])
        fixed_feeds = {
            "y_latent": y_latent,
            "restore_embeddings": self.prompts.encode(prompts),
            "semantic_embeddings": self.prompts.encode([""]).expand(batch, -1, -1),
            "adaptor_strength": torch.tensor([opts.adaptor_strength], device=device),
            "guidance_scale": torch.ones(1, device=device),  # unused: the unguided denoiser
        }

        def denoise(sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
            feeds = {**fixed_feeds, "sample": sample, "timestep": timestep.to(device).expand(batch)}
            return self.backend.run("denoiser", feeds)["model_output"]

        return SAMPLERS[opts.sampler](denoise, start, self.timesteps, self.schedule)


def run_fidelity(run: Path, vae: AutoencoderKL, create: bool = False, width: int | None = None
                 ) -> FidelityBranch | None:
    """RUN/fidelity (checked against the VAE), widened to `width` where given; a fresh branch (of `width`
    channels, else the default) when `create` and there is none; else None."""
    branch = load_fidelity(run, vae)
    if branch is None:
        return FidelityBranch.for_vae(vae, **({"width": width} if width else {})) if create else None
    if width is None or width == branch.config.width:
        return branch
    try:
        return branch.widened(width)
    except ValueError as error:
        raise SpireError(f"--fidelity-width: {run / 'fidelity'}: {error}") from None


def fidelity_needs_landings(folder: Path) -> str:
    return (f"the decoder stage with a fidelity branch (--fidelity, or {folder}) needs --landing-rate 1: every pair "
            "a restoration, none a clean crop standing in as its own degraded image")


def reconstruction_loss(reconstruction: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """L1 + 0.5 L1 of image gradients (images in [-1, 1]), with the batch PSNR for the log."""
    reconstruction, x = reconstruction.float(), x.float()  # fp32 under --precision bf16 too
    l1 = (reconstruction - x).abs().mean()
    gradient = sum((diff(reconstruction, d) - diff(x, d)).abs().mean() for d in (2, 3))
    mse = F.mse_loss(reconstruction.clamp(-1, 1), x)
    psnr = 10 * torch.log10(4 / mse)  # peak-to-peak 2
    return l1 + 0.5 * gradient, {"l1": l1.item(), "psnr": psnr.item()}


def save_folder(module, folder: Path) -> None:
    """save_pretrained into a staged folder: a stage reading `folder` meanwhile never sees half a VAE."""
    with staged_folder(folder) as staging:
        module.save_pretrained(staging, safe_serialization=True)


def diff(x: torch.Tensor, dim: int) -> torch.Tensor:
    return x.narrow(dim, 1, x.shape[dim] - 1) - x.narrow(dim, 0, x.shape[dim] - 1)


DECODER_PREFIXES = ("decoder.", "post_quant_conv.")  # the VAE's tensors the decoder stage trains


def vae_decoder_parts(vae: AutoencoderKL, fidelity: FidelityBranch | None = None) -> list[torch.nn.Module]:
    """What decodes a latent: the VAE's decoder and post-quant convolution (and a fidelity branch, if any)."""
    return [vae.decoder, vae.post_quant_conv, *([fidelity] if fidelity is not None else [])]


def decoder_changes(vae: AutoencoderKL, fidelity: FidelityBranch | None, saved: dict) -> list[str]:
    """The decoder tensors of `vae` (and of `fidelity`, where `saved` holds a branch too) that differ from the
    state dicts `saved` keeps under "vae" and "fidelity": what a checkpoint left against RUN/vae and RUN/fidelity."""
    moved = differing_tensors(saved["vae"], vae.state_dict(), DECODER_PREFIXES)
    if fidelity is not None and "fidelity" in saved:
        moved += differing_tensors(saved["fidelity"], fidelity.state_dict())
    return moved


class LatentStage(Stage):
    """Shared by the prior and adaptor stages: the VAE (frozen, unless --train-decoder), the tokenizer, the noise
    schedule."""

    def build_common(self) -> None:
        self.vae = load_component(self.out / "vae", "vae").to(self.device)
        self.vae_encoder = VaeEncoderNet(self.vae)
        # The decoder as the runtime runs it: through RUN/fidelity when the decoder stage has trained one.
        self.fidelity = run_fidelity(self.out, self.vae)
        if self.fidelity is not None:
            self.fidelity.to(self.device)
        self.vae_decoder = VaeDecoderNet(self.vae, self.fidelity)
        self.tokenizer = build_grammar_tokenizer()
        self.tokenizer.model_max_length = min(MAX_LENGTH, self.preset.tokenizer_max_length)
        self.schedule = NoiseSchedule.from_config(self.preset.scheduler)
        self.abar = self.schedule.alphas_cumprod.to(self.device, torch.float32)

    def encode_text(self, text_encoder, prompts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(self.device)
        return TextEncoderNet(text_encoder, self.preset.text_layer)(ids)

    @torch.no_grad()
    def latents(self, images: torch.Tensor) -> torch.Tensor:
        return self.vae_encoder(images * 2 - 1)

    def noised(self, z0: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x_t and the v target (Salimans & Ho 2022): v = alpha_t * eps - sigma_t * x0."""
        noise = torch.randn_like(z0)
        abar = self.abar[t].reshape(-1, 1, 1, 1)
        alpha, sigma = abar.sqrt(), (1 - abar).sqrt()
        return alpha * z0 + sigma * noise, alpha * noise - sigma * z0

    def random_timesteps(self, batch: int, high_rate: float = 0.0, high_span: float = HIGH_T_SPAN) -> torch.Tensor:
        steps = self.schedule.num_train_timesteps
        t = torch.randint(0, steps, (batch,))
        high = torch.rand(batch) < high_rate
        t[high] = torch.randint(int((1 - high_span) * steps), steps, (int(high.sum()),))
        return t.to(self.device)


class PriorStage(LatentStage):
    name = "prior"

    def build(self) -> None:
        self.build_common()
        tokenizer = self.tokenizer
        special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                   "pad_token_id": tokenizer.pad_token_id}
        torch.manual_seed(self.config.seed)
        self.unet = UNet2DConditionModel(**self.preset.unet).to(self.device)
        # The text encoder the adaptor stage starts from; here it only encodes the empty semantic prompt.
        self.text_encoder = CLIPTextModel(CLIPTextConfig(**self.preset.text_encoder, **special)).to(self.device)
        self.text_encoder.requires_grad_(False)
        with torch.no_grad():
            self.empty = self.encode_text(self.text_encoder, [""])

    def trainable(self):
        return {"unet": self.unet, "text_encoder": self.text_encoder}

    def parameters(self):
        return list(self.unet.parameters())

    def loss(self):
        z0 = self.latents(self.clean_batch())
        t = self.random_timesteps(z0.shape[0])
        z_t, v = self.noised(z0, t)
        prediction = self.unet(z_t, t, self.empty.expand(z0.shape[0], -1, -1)).sample
        return F.mse_loss(prediction.float(), v.float()), {}

    def export(self) -> None:
        self.unet.save_pretrained(self.out / "unet", safe_serialization=True)
        self.text_encoder.save_pretrained(self.out / "text_encoder", safe_serialization=True)


class AdaptorStage(LatentStage):
    name = "adaptor"

    def build(self) -> None:
        self.build_common()
        # The prior: frozen unless --train-unet. A resume loads any UNet the checkpoint holds (load_modules).
        self.unet = load_component(self.out / "unet", "unet").to(self.device)
        self.unet.requires_grad_(self.config.train_unet)
        self.unet_tuned = self.config.train_unet  # and so saved in the checkpoint
        self.text_encoder = load_component(self.out / "text_encoder", "text_encoder").to(self.device)
        self.text_encoder.requires_grad_(True)
        self.adaptor = init_adaptor_from_unet(self.unet).to(self.device)
        self.adaptor.requires_grad_(True)
        self.strength = torch.ones(1, device=self.device)
        self.rank_bucket = RANK_BUCKET_CUDA if self.device.type == "cuda" else 1
        self.tracking = tracking_images()
        # --train-decoder: the decoder and its branch learn from the same one-step loss, with the adaptor rather
        # than in turns with it. Their weights live in RUN/vae and RUN/fidelity (written at every checkpoint, and
        # what ship and the decoder stage read); the checkpoint keeps a copy (checkpoint_extras).
        self.decoder_parts = vae_decoder_parts(self.vae, self.fidelity) if self.config.train_decoder else []
        for part in self.decoder_parts:
            part.requires_grad_(True)

    def trainable(self):
        parts = {"adaptor": self.adaptor, "text_encoder": self.text_encoder}
        return {**parts, "unet": self.unet} if self.config.train_unet else parts

    def parameters(self):
        return [p for group in self.param_groups() for p in group["params"]]

    def param_groups(self):
        prompt_parts = [*self.adaptor.parameters(), *self.text_encoder.parameters()]
        groups = [{"name": "adaptor", "params": prompt_parts}]
        if self.config.train_unet:
            groups.append({"name": "unet", "params": list(self.unet.parameters())})
        if self.decoder_parts:
            decoder = [p for part in self.decoder_parts for p in part.parameters()]
            groups.append({"name": "decoder", "params": decoder})
        return groups

    def training_modules(self):
        return [*self.trainable().values(), *self.decoder_parts]

    def checkpoint_extras(self):
        """With --train-decoder: a copy of the decoder (and branch) it trained, in the decoder checkpoint's layout.
        The run itself decodes with RUN/vae's and RUN/fidelity's (written before the checkpoint, so never older
        than it); the copy tells a resume whether those are still what its optimiser moments belong to, and keeps
        what this run trained when a later --fresh sets the checkpoint aside."""
        if not self.decoder_parts:
            return {}
        weights = {"vae": self.vae.state_dict()}
        if self.fidelity is not None:
            weights["fidelity"] = self.fidelity.state_dict()
        return {"decoder_weights": weights}

    def saved_optimizer(self, state):
        """The checkpoint's optimiser state, less the decoder group's when RUN/vae's decoder (or RUN/fidelity) is
        no longer the one it was kept for: a decoder leg trained it since, so those moments are another run's."""
        saved, weights = state["optimizer"], state.get("decoder_weights")
        if weights is None or not self.decoder_parts:
            return saved
        same_branch = (self.fidelity is not None) == ("fidelity" in weights)
        if same_branch and not decoder_changes(self.vae, self.fidelity, weights):
            return saved
        if not self.config.quiet:
            print(f"--resume: {self.out / 'vae'}'s decoder changed since {self.checkpoint_path}; it carries on with "
                  "fresh optimiser moments")
        kept = [group for group in saved["param_groups"] if group.get("name") != "decoder"]
        return {**saved, "param_groups": kept}

    def saved_modules(self):
        return {**self.trainable(), "unet": self.unet} if self.unet_tuned else self.trainable()

    def load_modules(self, saved):
        """As every stage, plus the UNet: once a run has tuned it (--train-unet), every later checkpoint of the run
        holds it, and it is the UNet the model is made with, trained further or not. Until then RUN/unet's."""
        for name, module in self.trainable().items():
            if name != "unet":
                module.load_state_dict(saved[name])
        if "unet" in saved:
            self.unet.load_state_dict(saved["unet"])
            self.unet_tuned = True

    def batch_plan(self) -> BatchPlan:
        return self.plan_with_pairs(degraded=self.config.batch)

    def loss(self):
        clean, y, prompts = self.next_batch()
        batch, y_latent = clean.shape[0], self.latents(y)
        if self.config.strength is None:
            t = self.random_timesteps(batch, HIGH_T_RATE)
            z_t, v = self.noised(self.latents(clean), t)
        else:
            # What the pipeline runs at strength s and one step: start from E(y) noised to t(s), land on x0.
            t = self.one_step_timesteps(batch)
            z_t = self.schedule.add_noise(y_latent, self.config.start_noise * torch.randn_like(y_latent), t)
        prediction = self.predict(z_t, t, y_latent, prompts)
        if self.config.strength is None:
            return F.mse_loss(prediction.float(), v.float()), {}
        landed = self.schedule.predict_x0(z_t, prediction, t)  # where the one sampler step lands
        error = self.landing_error(landed, clean, y).float()
        # The log of each pair's error, averaged: the mean PSNR, which is what eval scores. A plain MSE lets the
        # heavily noised pairs (large errors) drown out blur and JPEG, whose errors are small.
        per_pair = error.pow(2).mean(dim=(1, 2, 3))
        loss, metrics = torch.log(per_pair + LOG_MSE_FLOOR).mean(), {"mse": per_pair.mean().item()}
        if self.config.rank_rate:
            penalty, ranked = self.rank_penalty(z_t, t, y, y_latent, prompts, landed)
            loss = loss + penalty
            metrics.update(rank_penalty=penalty.item(), ranked=ranked)
        return loss, metrics

    def predict(self, z_t: torch.Tensor, t: torch.Tensor, y_latent: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """The modulated UNet's v prediction under each pair's restoration prompt."""
        restore = self.encode_text(self.text_encoder, prompts)
        # The UNet's semantic prompt is "" through the same (trained) encoder, exactly as the pipeline feeds it.
        semantic = self.encode_text(self.text_encoder, [""]).expand(len(prompts), -1, -1)
        modulations = self.adaptor(z_t, t, y_latent, restore)
        return unet_forward_modulated(self.unet, z_t, t, semantic, modulations, self.strength)

    def rank_penalty(self, z_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor, y_latent: torch.Tensor,
                     prompts: list[str], landed: torch.Tensor) -> tuple[torch.Tensor, int]:
        """--rank-rate: restore that share of the pairs again, from the same start, with a noise or blur sigma
        raised (ranking.raised_prompt), and hinge on the order of the two outputs' detail (ranking.rank_hinge).
        Returns the hinge summed over the ranked pairs and divided by the batch, and how many were ranked."""
        picked, raised = [], []
        for index, prompt in enumerate(prompts):
            if self.rng.random() < self.config.rank_rate:
                candidate = raised_prompt(prompt, self.rng)
                if candidate is not None:
                    picked.append(index)
                    raised.append(candidate)
        if not picked:
            return landed.new_zeros(()), 0
        # The coins make the sub-batch a new size almost every step, and on CUDA cuDNN's benchmark mode (run_stage)
        # tunes every convolution afresh for each new shape: the likely reason the H200 adaptor legs of
        # bench/results/experiments/gpu_leg_bh ran 5-12 s a step with the GPU 0-5% busy, where the decoder leg
        # (fixed shapes) ran 77 ms. Copies of the first picks, left out of the sum, pad the sub-batch to a multiple
        # of rank_bucket, so a few shapes recur. Every network here works pair by pair (GroupNorm, not BatchNorm), so
        # the copies change no other pair's output.
        ranked = len(picked)
        padding = -ranked % self.rank_bucket
        picked += [picked[i % ranked] for i in range(padding)]
        raised += [raised[i % ranked] for i in range(padding)]
        index = torch.tensor(picked, device=self.device)
        z_picked, t_picked = z_t[index], t[index]
        prediction = self.predict(z_picked, t_picked, y_latent[index], [r.text for r in raised])
        landed_raised = self.schedule.predict_x0(z_picked, prediction, t_picked)
        with torch.no_grad():  # the truthful restoration is the fixed point of the order; only the raised one moves
            stated_image = self.decoded(landed[index], y[index])
        # The order is the prompt's to hold: a decoder trained here (--train-decoder) never sees the prompt, so
        # the hinge reaches it through the latent only.
        raised_image = self.decoded(landed_raised, y[index], frozen=True)
        with torch.autocast(self.device.type, enabled=False):  # fp32 under bf16: the 5% margin is a few bf16 steps
            stated, energy = high_frequency_energy(stated_image.float()), high_frequency_energy(raised_image.float())
        sign = torch.tensor([r.sign for r in raised], dtype=energy.dtype, device=self.device)
        return rank_hinge(stated, energy, sign)[:ranked].sum() / len(prompts), ranked

    def decoded(self, latent: torch.Tensor, y: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        """The image in [0, 1] the decoder makes of a latent restored from y, as the pipeline decodes it; with
        `frozen`, gradients reach the latent but not the decoder's weights."""
        if frozen and self.decoder_parts:
            weights = {name: p.detach() for name, p in self.vae_decoder.named_parameters()}
            return (functional_call(self.vae_decoder, weights, (latent, y * 2 - 1)) + 1) / 2
        return (self.vae_decoder(latent, y * 2 - 1) + 1) / 2

    def landing_error(self, landed: torch.Tensor, clean: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """How far the one step landed from the clean crop, in the space --loss-space names (each space encodes
        or decodes only what it needs: the pixel loss skips encoding the clean crop)."""
        if self.config.loss_space == "pixel":
            # Through the decoder, as the pipeline decodes: the latent error weights every latent channel
            # and position alike, which the decoder (and so eval's pixel PSNR) need not.
            return self.vae_decoder(landed, y * 2 - 1) - (clean * 2 - 1)
        return landed - self.latents(clean)

    def one_step_timesteps(self, batch: int) -> torch.Tensor:
        """Uniform over the one-step trailing timesteps of strengths in [LO, HI] (sampling.trailing_timesteps)."""
        steps = self.schedule.num_train_timesteps
        low, high = (round(s * steps) - 1 for s in self.config.strength)
        return torch.randint(max(low, 0), high + 1, (batch,), device=self.device)

    def sampling_options(self) -> list[dict]:
        """The settings the held-out gain is tracked at: what this run trains for."""
        if self.config.strength is None:
            return [{"steps": 1}, {"steps": 4}]
        low, high = self.config.strength
        return [{"steps": 1, "strength": s, "start_noise": self.config.start_noise}
                for s in sorted({low, (low + high) / 2, high})]

    def model(self) -> SpireModel:
        return SpireModel(unet=self.unet, controlnet=self.adaptor, vae=self.vae, text_encoder=self.text_encoder,
                          tokenizer=self.tokenizer, scheduler_config=dict(self.preset.scheduler),
                          name=self.preset.name, text_layer=self.preset.text_layer, trained=True,
                          restore_defaults=self.restore_defaults(), fidelity=self.fidelity)

    def restore_defaults(self) -> dict:
        """What the runtime should run by default: one step at the middle of the trained strengths."""
        if self.config.strength is None:
            return {}
        return {"steps": 1, "strength": round(sum(self.config.strength) / 2, 3),
                "start_noise": self.config.start_noise}

    def export(self) -> None:
        self.model().save(self.out / "model", overwrite=True)
        if self.decoder_parts:
            save_folder(self.vae, self.out / "vae")
            if self.fidelity is not None:
                save_folder(self.fidelity, self.out / "fidelity")

    def evaluate(self) -> dict:
        """PSNR gain over the degraded input on held-out crops, through the product's own pipeline."""
        from ..backends.torch_backend import TorchBackend
        from ..pipeline import Restorer

        model = self.model()
        # fp32 on a GPU too: the backend casts the modules it runs in place, and these are the ones training.
        restorer = Restorer(model, TorchBackend(model, device=self.device, dtype=torch.float32))
        results = {}
        for options in self.sampling_options():
            gains = {}
            for family, items in self.tracking.items():
                values = []
                for clean, degraded, upsampled, prompt in items:
                    restored = np.asarray(restorer(degraded, restore=prompt, seed=0, **options))
                    h, w = min(clean.shape[0], restored.shape[0]), min(clean.shape[1], restored.shape[1])
                    values.append(psnr(clean[:h, :w], restored[:h, :w]) - psnr(clean, upsampled))
                gains[family] = round(float(np.mean(values)), 3)
            results["gain_db_" + "_".join(f"{k}{v:g}" for k, v in options.items())] = gains
        for module in self.trainable().values():
            module.requires_grad_(True)
        return results


def carried_optimizer_state(saved: dict, current: dict) -> dict:
    """The optimiser state to load on a resume: for each of this run's groups, the saved group of the same name
    (Stage.param_groups names them), or of the same position in a checkpoint whose groups have no names; a group
    with no saved match starts fresh, and a saved group this run does not train is dropped."""
    saved_groups = saved["param_groups"]
    named = all("name" in group for group in saved_groups)
    by_name = {group["name"]: group for group in saved_groups} if named else {}
    state, groups = {}, []
    for position, group in enumerate(current["param_groups"]):
        if named:
            match = by_name.get(group.get("name"))
        else:
            match = saved_groups[position] if position < len(saved_groups) else None
        if match is None:
            groups.append(group)
            continue
        if len(match["params"]) != len(group["params"]):
            raise SpireError(f"--resume: the checkpoint's optimiser has {len(match['params'])} parameters "
                             f"in a group where this run has {len(group['params'])}: not the same networks")
        for old, new in zip(match["params"], group["params"]):
            if old in saved["state"]:
                state[new] = saved["state"][old]
        groups.append({**match, "params": group["params"]})
    return {"state": state, "param_groups": groups}


def tracking_images(size: int = 128) -> dict[str, list[tuple]]:
    """Held-out centre crops with fixed degradations, for the gain log: (clean, degraded, degraded at the clean
    size, prompt); the pipeline itself resizes the degraded image to the prompt's output size."""
    from ..degrade import degrade_explicit
    from ..evaluation.benchmark import FAMILIES, mixed_degradation
    from ..pipeline import resize

    crops = []
    for name in HELD_OUT[:2]:
        image = load_skimage_image(name)
        y0, x0 = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
        crops.append(image[y0:y0 + size, x0:x0 + size])
    families = {family: FAMILIES[family] for family in ("denoise_0.10", "deblur_2.0", "dejpeg_20")}
    items: dict[str, list] = {family: [] for family in (*families, "mixed")}
    for index, clean in enumerate(crops):
        for family, kwargs in families.items():
            degraded, params = degrade_explicit(clean, seed=index, **kwargs)
            items[family].append((clean, degraded, degraded, str(params.prompt())))
        degraded, params = mixed_degradation(clean, 900 + index)  # eval's "mixed": >= 2 kinds
        y = resize(torch.from_numpy(degraded).permute(2, 0, 1)[None], clean.shape[:2])
        items["mixed"].append((clean, degraded, y[0].permute(1, 2, 0).numpy(), str(params.prompt())))
    return items


def psnr(clean: np.ndarray, other: np.ndarray) -> float:
    other = other.astype(np.float32) / 255.0 if other.dtype == np.uint8 else other.astype(np.float32)
    mse = float(np.mean((clean.astype(np.float32) - other) ** 2))
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def cosine_lr(base: float, fraction: float, step: int, warmup: int = 50) -> float:
    """Linear warm-up, then a cosine from `base` down to a tenth of it over the run's budget."""
    scale = min(1.0, (step + 1) / warmup)
    return base * scale * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(fraction, 1.0))))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
