"""The self-ensemble scored from outside the pipeline: restore flipped copies, flip back, average finished outputs.

    python pixel_mean_after_colour_fix.py MODEL id,h,v,hv

It averages the pipeline's outputs after the colour fix, where `--ensemble` averages the decoded images before it;
at two members the two orders scored 2.547 and 2.545 dB. It gave the ensemble-4 row of this folder's README.
"""

import sys
import time

import numpy as np

from spire_rt.evaluation.benchmark import run_benchmark, summarise
from spire_rt.evaluation.cli import load_images
from spire_rt.evaluation.metrics import as_float
from spire_rt.pipeline import Restorer

FLIPS = {  # name: the flip, which is its own inverse
    "id": lambda a: a,
    "h": lambda a: a[:, ::-1],
    "v": lambda a: a[::-1],
    "hv": lambda a: a[::-1, ::-1],
}


class FlipAverage:
    """A restorer for run_benchmark: the mean of the wrapped restorer's outputs over the named flips."""

    def __init__(self, restorer: Restorer, names: list[str]):
        self.restorer, self.names, self.last_run = restorer, names, None

    def __call__(self, image: np.ndarray, **options) -> np.ndarray:
        outputs = [FLIPS[name](as_float(self.restorer(np.ascontiguousarray(FLIPS[name](image)), **options)))
                   for name in self.names]
        self.last_run = self.restorer.last_run
        return np.mean(outputs, axis=0)


def main() -> None:
    model, names = sys.argv[1], sys.argv[2].split(",")
    started = time.perf_counter()
    records, _ = run_benchmark(FlipAverage(Restorer.from_pretrained(model), names),
                               load_images("skimage-validation"), {"strength": 0.06, "ensemble": 1})
    gains = {family: round(row["model_gain_db"], 3) for family, row in summarise(records).items()}
    print(model, names, "mean", round(float(np.mean(list(gains.values()))), 3), gains,
          f"{time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
