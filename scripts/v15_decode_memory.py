"""Peak memory of the 1.5 streaming VAE decode against song length (a benchmark, prints figures).

    python scripts/v15_decode_memory.py [--full]    # --full: the released VAE size (slow on CPU)

Each length runs in its own process; the figure is the peak RSS growth during the decode minus the
output buffer (``[1, 2, T * 1920]`` float32), i.e. the working memory, which stays flat with length.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys

import torch


def one(seconds: float, full: bool) -> dict:
    from songflow.models.acestep_v15.vae import OobleckConfig, OobleckVAE

    torch.set_num_threads(2)
    config = OobleckConfig() if full else OobleckConfig.tiny()
    vae = OobleckVAE(config).eval()
    n_frames = int(seconds * 25)
    latents = torch.randn(1, n_frames, vae.latent_channels)
    out = torch.empty(1, 2, n_frames * 1920)
    out.zero_()  # touch the pages: the buffer is in the baseline
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with torch.inference_mode():
        vae.decode_streaming(latents, out=out)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak_mb = round(after - before, 1)
    return {"seconds": seconds, "output_mb": out.numel() * 4 / 2**20, "working_peak_mb": peak_mb}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        print(json.dumps(one(float(sys.argv[2]), sys.argv[3] == "full")))
        return
    full = "--full" in sys.argv
    for seconds in (30, 120, 300, 600):
        line = subprocess.run(
            [sys.executable, __file__, "--one", str(seconds), "full" if full else "tiny"],
            capture_output=True, text=True, check=True,
        ).stdout.strip().splitlines()[-1]
        print(line, flush=True)


if __name__ == "__main__":
    main()
