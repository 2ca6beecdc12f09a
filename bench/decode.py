"""The data ceiling of the image-folder path: images per second per CPU core for decoding a JPEG and
applying the paper's ImageNet training transforms (random-sized crop to 224, colour jitter, PCA
lighting, flip, normalisation), as runtime.images' DataLoader workers do them, and whether a
16-core machine feeds 4,000 images/s (densenet121 at batch 256 in bf16 on an H100 wants more).

The JPEGs are generated at ImageNet's typical size (500x375, quality 90, smooth content with noise,
about ImageNet's bytes per image), written once to a temporary folder. Measures one process (the
per-core figure) and the DataLoader with every core as workers.

With `--decode device` (the CUDA default) the workers only read each file and draw its transform
(runtime.images.Raw); the batch is decoded (nvJPEG) and transformed on the GPU. Measured too: the
workers' share of that path per core, and on CUDA the GPU's images/s for decoding and transforming
batches of 256 (the files' bytes already in memory), the two paths' images compared.

    python bench/decode.py --out bench/results                   # this machine: about 20 s
    python bench/decode.py --device cuda --out bench/results     # and the GPU's side
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import hubconf  # noqa: E402, F401 - this checkout as `dnetc` where dnetc is not installed

sys.path.insert(0, str(ROOT / "bench"))

from common import machine  # noqa: E402

from dnetc.runtime.data import dataset  # noqa: E402
from dnetc.runtime.images import Files, Raw, _collate_raw, on_device, transforms  # noqa: E402


def make_jpegs(folder: Path, n: int) -> list[tuple[str, int]]:
    from PIL import Image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:375, 0:500].astype(np.float32)
    samples = []
    for i in range(n):
        base = np.stack([np.sin(x / rng.uniform(20, 80) + c) * np.cos(y / rng.uniform(20, 80)) for c in range(3)], -1)
        img = (127 + 100 * base + rng.normal(0, 12, base.shape)).clip(0, 255).astype(np.uint8)
        path = folder / f"{i:05d}.JPEG"
        Image.fromarray(img).save(path, quality=90)
        samples.append((str(path), 0))
    return samples


def rate(fn, n: int) -> float:
    started = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - started)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=400)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    torch.set_num_threads(1)
    info = dataset("imagenet").info
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        samples = make_jpegs(Path(tmp), args.images)
        size = sum(os.path.getsize(s) for s, _ in samples) / len(samples)
        files = Files(samples, transforms(info, (224, 224), True, False), seed=0)
        raw = Raw(samples, info, (224, 224), seed=0)
        files[(0, 0, 0)]  # warm up
        one = rate(lambda i: files[(i, 0, 0)], len(samples))
        reading = rate(lambda i: raw[(i, 0, 0)], len(samples))
        loader = torch.utils.data.DataLoader(
            files, batch_size=32, num_workers=cores, sampler=[(i, 0, 0) for i in range(len(samples))]
        )
        started = time.perf_counter()
        for _ in loader:
            pass
        every = len(samples) / (time.perf_counter() - started)
        result = {
            "machine": machine("cpu"),
            "images": args.images,
            "jpeg_kib": size / 1024,
            "per_core": one,
            "all_cores": every,
            "cores": cores,
            "sixteen_cores": 15 * one,  # one core left to the training process
            "reading_per_core": reading,
        }
        result |= device_path(raw, samples, info, torch.device(args.device))
    lines = [
        f"Decoding and the ImageNet training transforms on {result['machine']} "
        f"({args.images} JPEGs of 500x375, {size / 1024:.0f} KiB each):",
        "",
        f"- in the workers (--decode workers), one process: {one:,.0f} images/s per core",
        f"- DataLoader, {cores} workers: {every:,.0f} images/s",
        f"- 16 cores (15 workers at the per-core rate): {15 * one:,.0f} images/s, "
        f"{'enough for' if 15 * one >= 4000 else 'short of'} 4,000 images/s",
        f"- --decode device, the workers' part (read the file, draw the transform): {reading:,.0f} images/s per core",
    ]
    lines += [
        f"- --decode device, the device's part on {result['device']}: {result['device_images_per_s']:,.0f} images/s "
        f"decoded and transformed (batches of {result['device_batch']}); against the workers' images: mean "
        f"difference {result['device_vs_workers_mean_levels']:.4f} uint8 levels, "
        f"{100 * result['device_vs_workers_within_one_level']:.3f}% within one level",
    ]
    print("\n".join(lines))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"decode-{args.device}.json").write_text(json.dumps(result, indent=2))
        (args.out / f"decode-{args.device}.md").write_text("\n".join(lines) + "\n")


def device_path(raw: Raw, samples: list, info: dict, device: torch.device) -> dict:
    """The device's images/s for decode + transforms of batches whose bytes and draws are in memory
    (on a CPU, the batched path in one process), and how far its images are from the workers'."""
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    batch = min(256, len(samples))
    items = [raw[(i, 0, 0)] for i in range(len(samples))]
    batches = [_collate_raw(items[i : i + batch]) for i in range(0, len(items) - batch + 1, batch)]
    on_device(*batches[0][:2], info, (224, 224), device)  # warm up (nvJPEG's handles)
    sync()
    rounds = 3 if cuda else 1
    started = time.perf_counter()
    for _ in range(rounds):
        for data, params, _labels in batches:
            on_device(data, params, info, (224, 224), device)
    sync()
    images_per_s = rounds * batch * len(batches) / (time.perf_counter() - started)
    files = Files(samples, transforms(info, (224, 224), True, False), seed=0)
    made = on_device(*batches[0][:2], info, (224, 224), device).cpu()
    workers = torch.stack([files[(i, 0, 0)][0] for i in range(batch)])
    levels = (made - workers).abs() * min(info["std"])  # in uint8 levels (the images are normalised)
    return {
        "device": torch.cuda.get_device_name() if cuda else f"{machine('cpu')} (one process)",
        "device_batch": batch,
        "device_images_per_s": images_per_s,
        "device_vs_workers_mean_levels": float(levels.mean()),
        "device_vs_workers_within_one_level": float((levels <= 1.01).float().mean()),
    }


if __name__ == "__main__":
    main()
