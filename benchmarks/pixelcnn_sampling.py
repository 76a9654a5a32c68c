"""Time to draw 28x28 images from a PixelCNN decoder: the cropped sampler of
:meth:`ppl_vae.pixelcnn.PixelCNN.sample` against the reference that runs the whole image for every
pixel, in the same run (their draws are equal on the same generator: tests/test_pixelcnn.py).

    python benchmarks/pixelcnn_sampling.py --channels 32 --layers 5 --n 1 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from ppl_vae.pixelcnn import PixelCNN


def whole_image(net, n, cond, generator):
    x = torch.zeros(n, 1, 28, 28)
    for r in range(28):
        for c in range(28):
            x[:, 0, r, c] = net._draw(net(x, cond)[:, :, r, c], generator)
    return x


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--layers", type=int, default=5)
    p.add_argument("--n", type=int, default=1, help="images drawn at once")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None, help="also write the figures to this file")
    args = p.parse_args()
    torch.manual_seed(0)
    net = PixelCNN(2, args.channels, args.layers, cond_channels=4).eval()
    cond = torch.randn(args.n, 4, 28, 28)
    times = {"cropped": [], "whole_image": []}
    with torch.no_grad():
        for _ in range(args.repeats):
            for name, fn in (
                ("cropped", lambda g: net.sample((28, 28), args.n, cond, g)),
                ("whole_image", lambda g: whole_image(net, args.n, cond, g)),
            ):
                start = time.perf_counter()
                fn(torch.Generator().manual_seed(0))
                times[name].append(time.perf_counter() - start)
    best = {k: min(v) for k, v in times.items()}
    out = {
        **{k: v for k, v in vars(args).items() if k != "json"},
        "seconds_cropped": best["cropped"],
        "seconds_whole_image": best["whole_image"],
        "speedup": best["whole_image"] / best["cropped"],
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
