"""A run folder for CPU legs on a shipped candidate, made from its fp16 weights.

    python make_cpu_run.py CANDIDATE RUN

RUN gets fp32 vae/, unet/ and text_encoder/ folders and an adaptor.ckpt whose modules are the candidate's (with a
fresh optimiser), so `spire-rt train --stage adaptor --out RUN --resume --strength 0.04 0.08 ...` carries it on.
The legs of 2026-11-27 used this script; it is now `spire-rt train --stage unpack --from CANDIDATE --out RUN`,
which it calls.
"""

import sys

from spire_rt.cli import main

sys.exit(main(["train", "--stage", "unpack", "--from", sys.argv[1], "--out", sys.argv[2]]))
