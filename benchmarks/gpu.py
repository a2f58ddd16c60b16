"""GPU benchmark: EfficientNet-B0 at 224 px, AMP (bf16/fp16) and channels_last, on 1024x768 JPEGs.

Runs benchmarks.train on CUDA: the classic loop (with min(8, cores) DataLoader workers and pinned
memory, as a user would set them), the train stage's data path and loop, and synthetic tensors (the
compute limit), all with the train stage's cuDNN autotuning; prints throughput and loader efficiency.
    python -m benchmarks.gpu              # about 3 minutes on one H100 with 16 cores
    python -m benchmarks.gpu --photos 64 --device cpu --epochs 1 --image-size 32   # a check on a CPU
"""

from __future__ import annotations

import sys

from benchmarks import train

DEFAULTS = ["--datasets", "photos", "--device", "cuda", "--arch", "efficientnet_b0", "--image-size", "224",
            "--batch-size", "128", "--photos", "2000", "--precision", "auto"]


def main(argv: list[str] | None = None) -> train.Table:
    """The train benchmark with GPU defaults; later (user) arguments override them."""
    return train.main(DEFAULTS + list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
