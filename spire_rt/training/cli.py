"""`spire-rt train`: one stage of the spire-tiny recipe (see recipe.py), and `--stage ship` to package it."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import SpireError
from ..models.spire_model import SHIPPED_WEIGHTS

SHIP_STAGE = "ship"
UNPACK_STAGE = "unpack"


def register(commands) -> None:
    from .data import BLIND_RATE
    from .recipe import LOSS_SPACES, PRECISIONS, STAGES

    parser = commands.add_parser("train", help="train a stage of the spire-tiny recipe (vae, prior, adaptor)")
    parser.add_argument("--preset", default="tiny", help="architecture preset (default tiny)")
    parser.add_argument("--stage", required=True, choices=(UNPACK_STAGE, *STAGES, SHIP_STAGE),
                        help="vae, then prior, then adaptor (each reads the folders the previous one wrote "
                             "in --out); decoder refines the VAE decoder alone; ship writes OUT/model, with "
                             "OUT/vae's decoder and OUT/fidelity, as fp16 into --ship-to; unpack makes a shipped "
                             "model (--from) into a new run folder that the adaptor (--resume) and decoder "
                             "stages carry on")
    parser.add_argument("--out", required=True, help="run folder shared by the stages")
    parser.add_argument("--from", dest="source", metavar="MODEL",
                        help="unpack: the model to carry on (a folder, or a preset name for its shipped weights)")
    parser.add_argument("--deepen-level", type=int, action="append", default=[], metavar="L",
                        help="unpack: give the UNet (and the adaptor's copy of its encoder) one more resnet in level "
                             "L (0: full latent resolution; a level of plain resnets), the output unchanged, for "
                             "--train-unet to put to use; repeat to add more")
    parser.add_argument("--steps", type=int, help="stop after this many steps")
    parser.add_argument("--minutes", type=float, help="stop after this many minutes of training")
    parser.add_argument("--batch", type=int, help="batch size (default per stage)")
    parser.add_argument("--crop", type=int, help="training crop side in pixels (default per stage)")
    parser.add_argument("--lr", type=float, help="peak learning rate (default per stage)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    parser.add_argument("--workers", type=int, default=0,
                        help="processes that draw the training batches (crops, degradations) beside the training "
                             "loop, and make the dead-leaves pool; a GPU needs several to stay busy (default 0: "
                             "the loop draws them itself, and --resume carries the same random stream on)")
    parser.add_argument("--resume", action="store_true", help="carry on from OUT/<stage>.ckpt")
    parser.add_argument("--fresh", action="store_true",
                        help="start the stage again although OUT/<stage>.ckpt exists (without --resume or --fresh "
                             "such a run is refused); the earlier checkpoint and log are kept as "
                             "OUT/<stage>.<UTC time>.ckpt and .jsonl")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--leaves", type=int, default=128, help="procedural dead-leaves images in the data pool")
    parser.add_argument("--blind-rate", type=float, default=BLIND_RATE,
                        help="adaptor (and decoder with --landing-rate): share of the pairs whose prompt is replaced "
                             f"by \"Remove all degradation\" (default {BLIND_RATE}; a resume may change it)")
    parser.add_argument("--rgb-permute", type=float, default=0.0,
                        help="share of training crops drawn with their RGB channels in another order, for hue "
                             "variety (most of the bundled photographs are grey; default 0)")
    parser.add_argument("--checkpoint-minutes", type=float, default=4.0)
    parser.add_argument("--eval-minutes", type=float, default=6.0,
                        help="adaptor and decoder: measure held-out gain / reconstruction this often (0: never)")
    parser.add_argument("--strength", type=float, nargs=2, metavar=("LO", "HI"),
                        help="adaptor: train the one-step SDEdit restoration the runtime runs at these strengths "
                             "(start from the degraded latent noised to t(s), loss on the clean latent)")
    parser.add_argument("--start-noise", type=float, default=1.0,
                        help="adaptor, with --strength: scale of the noise at the start (0: deterministic)")
    parser.add_argument("--single-rate", type=float, default=0.0,
                        help="adaptor (and decoder with --landing-rate): share of training pairs degraded by one "
                             "operation (blur, downscale, noise or JPEG from stage 1's range) instead of SPIRE's "
                             "two-stage draw (default 0)")
    parser.add_argument("--single-weights", type=float, nargs=4, metavar=("BLUR", "DOWNSCALE", "NOISE", "JPEG"),
                        help="with --single-rate: how often each operation is drawn for the single-operation pairs, "
                             "in proportion (default: equally; e.g. 1 1 1 3 makes half of them JPEG)")
    parser.add_argument("--loss-space", default="latent", choices=LOSS_SPACES,
                        help="adaptor, with --strength: score the one-step result on the latent (default) or on "
                             "the image the VAE decoder makes of it (slower; what eval measures)")
    parser.add_argument("--rank-rate", type=float, default=0.0,
                        help="adaptor, with --strength: share of training pairs also restored with a stated noise "
                             "or blur sigma raised, penalised unless the output gets smoother (noise) or sharper "
                             "(blur) than under the true prompt; holds the prompt response eval --sweep scores "
                             "(default 0; a resume may change it)")
    parser.add_argument("--train-unet", action="store_true",
                        help="adaptor: train the UNet's weights along with the adaptor and text encoder, instead of "
                             "keeping the prior frozen (OUT/model gets the tuned UNet; OUT/unet, the prior, stays). "
                             "A resume without it keeps the UNet an earlier run tuned, frozen")
    parser.add_argument("--train-decoder", action="store_true",
                        help="adaptor, with --loss-space pixel: train the VAE's decoder (and OUT/fidelity, if there "
                             "is one) on the same one-step loss, with the adaptor instead of in decoder-stage turns "
                             "(OUT/vae and OUT/fidelity get them; the encoder stays)")
    parser.add_argument("--landing-rate", type=float, default=0.0,
                        help="decoder: share of each batch decoded from OUT/model's own restorations of degraded "
                             "pairs (its default sampling) instead of clean latents (default 0; see the recipe)")
    parser.add_argument("--fidelity", action="store_true",
                        help="decoder, with --landing-rate 1: train a fidelity branch (OUT/fidelity) with the "
                             "decoder, so the degraded image itself steers decoding (StableSR-style; once OUT/fidelity "
                             "exists, every stage decodes through it)")
    parser.add_argument("--fidelity-width", type=int, metavar="W",
                        help="decoder, with --fidelity: a fresh branch's channels (default 32), or OUT/fidelity's "
                             "widened to W without changing its output, for the decoder stage to put to use (with "
                             "--fresh, not --resume, whose checkpoint holds the narrower branch)")
    parser.add_argument("--default-strength", type=float,
                        help="ship: the SDEdit strength to record as the model's default (chosen on validation "
                             "images; otherwise the adaptor stage's middle of --strength)")
    parser.add_argument("--default-ensemble", type=int,
                        help="ship: the self-ensemble (1-4 flipped copies averaged) to record as the model's default "
                             "(chosen on validation images within a time budget; otherwise none is recorded)")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS,
                        help="training precision: fp32 (default), or bf16 to run the forward passes under bfloat16 "
                             "autocast, for a GPU's tensor cores or a CPU with bf16 instructions (weights, optimiser "
                             "and losses stay fp32)")
    parser.add_argument("--ship-to", default=str(SHIPPED_WEIGHTS / "tiny"), help="ship: target folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run_train)


def run_train(args) -> int:
    import json

    from ..models.presets import get_preset
    from .recipe import StageConfig, run_stage

    if args.stage != UNPACK_STAGE and (args.source is not None or args.deepen_level):
        raise SpireError("--from and --deepen-level apply to --stage unpack only")
    if args.stage == UNPACK_STAGE:
        from .unpack import unpack_model

        if args.source is None:
            raise SpireError("--stage unpack needs --from MODEL (a model folder or a preset name)")
        preset = unpack_model(args.source, Path(args.out), deepen_levels=args.deepen_level, seed=args.seed)
        print(f"unpacked {args.source} -> {args.out}; carry it on with --preset {preset} --stage adaptor --resume "
              "(and the --strength it was trained with) or --stage decoder")
        return 0
    if args.stage == SHIP_STAGE:
        from .ship import ship_fp16

        defaults = {}
        if args.default_strength is not None:
            if not 0 < args.default_strength < 1:  # strength 1 starts from pure noise: not a one-step start
                raise SpireError(f"--default-strength must be in (0, 1), got {args.default_strength}")
            defaults["strength"] = args.default_strength
        if args.default_ensemble is not None:
            from ..pipeline import ENSEMBLE_FLIPS

            if not 1 <= args.default_ensemble <= len(ENSEMBLE_FLIPS):
                raise SpireError(f"--default-ensemble must be 1 .. {len(ENSEMBLE_FLIPS)}, "
                                 f"got {args.default_ensemble}")
            defaults["ensemble"] = args.default_ensemble
        # RUN/vae holds the decoder stage's refinement when it ran after (or beside) the adaptor.
        vae, fidelity = Path(args.out) / "vae", Path(args.out) / "fidelity"
        target = ship_fp16(Path(args.out) / "model", Path(args.ship_to), vae=vae if vae.is_dir() else None,
                           restore_defaults=defaults or None, fidelity=fidelity if fidelity.is_dir() else None)
        print(f"shipped {Path(args.out) / 'model'} -> {target}")
        return 0
    config = StageConfig(stage=args.stage, out=Path(args.out), steps=args.steps, minutes=args.minutes,
                         batch=args.batch, crop=args.crop, lr=args.lr, device=args.device, resume=args.resume,
                         fresh=args.fresh,
                         seed=args.seed, threads=args.threads, workers=args.workers,
                         checkpoint_minutes=args.checkpoint_minutes, eval_minutes=args.eval_minutes,
                         leaves=args.leaves, quiet=args.quiet,
                         strength=tuple(args.strength) if args.strength else None, start_noise=args.start_noise,
                         single_rate=args.single_rate, loss_space=args.loss_space,
                         single_weights=tuple(args.single_weights) if args.single_weights else None,
                         landing_rate=args.landing_rate, rank_rate=args.rank_rate,
                         precision=args.precision, rgb_permute=args.rgb_permute,
                         train_unet=args.train_unet, train_decoder=args.train_decoder,
                         fidelity=args.fidelity,
                         fidelity_width=args.fidelity_width, blind_rate=args.blind_rate)
    if args.precision == "bf16" and torch_device_type(args.device) == "cpu" and not cpu_has_bfloat16():
        # Measured on an AVX2-only EPYC: the adaptor leg's step took 37 s under bf16 against 2 s in fp32.
        print("spire-rt: warning: --precision bf16 on a CPU without bfloat16 instructions (AVX-512 BF16 or AMX): "
              "torch emulates them, and a training step can take 20x as long as in fp32; use --precision fp32 "
              "here", file=sys.stderr)
    record = run_stage(config, get_preset(args.preset))
    print(json.dumps(record))
    return 0


def torch_device_type(device: str) -> str:
    return device.split(":", 1)[0]


def cpu_has_bfloat16() -> bool:
    """Whether oneDNN runs bfloat16 natively on this CPU (what makes bf16 autocast fast there)."""
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
