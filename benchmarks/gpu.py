"""GPU benchmark: EfficientNet-B0 at 224 px, AMP (bf16/fp16) and channels_last, on 1024x768 JPEGs.

Runs the train section of benchmark.py on CUDA: the classic loop, the train stage's data path and
loop, and synthetic tensors (the compute limit), and prints throughput and loader efficiency.
    python benchmarks/gpu.py              # about 3 minutes on one H100 with 16 cores
    python benchmarks/gpu.py --photos 256 --device cpu --epochs 1   # a quick check of the script on a CPU
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchmark  # noqa: E402

if __name__ == "__main__":
    defaults = ["--sections", "train", "--datasets", "photos", "--device", "cuda", "--arch", "efficientnet_b0",
                "--image-size", "224", "--batch-size", "128", "--photos", "2000", "--precision", "auto"]
    sys.argv[1:1] = defaults  # later (user) arguments override these
    benchmark.main()
