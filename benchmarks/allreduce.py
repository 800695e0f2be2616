"""All-reduce bandwidth between the GPUs of one host, the cost DDP adds to every training step (issue 10).

    torchrun --standalone --nproc_per_node 2 benchmarks/allreduce.py [--sizes-mb 64,1024,2712] [--out allreduce.json]

For each size: median time of 10 all-reduces of a float32 buffer (after 3 warm-up calls) and the bus bandwidth
busbw = 2 (n − 1)/n · bytes / time (the figure nccl-tests reports). 2712 MB is DiT-XL/2's gradient in float32
(678M parameters), what DDP all-reduces each step. NCCL on CUDA, gloo on the CPU (smoke test only).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
import torch.distributed as dist


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes-mb", default="64,1024,2712", type=lambda s: [float(x) for x in s.split(",")])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo")
    n, rank = dist.get_world_size(), dist.get_rank()
    rows = []
    for mb in args.sizes_mb:
        buf = torch.ones(int(mb * 2 ** 20 / 4), device=device)
        times = []
        for i in range(3 + args.repeats):
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            dist.all_reduce(buf)
            if cuda:
                torch.cuda.synchronize()
            if i >= 3:
                times.append(time.perf_counter() - start)
        sec = statistics.median(times)
        rows.append({"mb": mb, "ms": 1e3 * sec, "busbw_gb_s": 2 * (n - 1) / n * buf.numel() * 4 / sec / 1e9})
    if rank == 0:
        name = torch.cuda.get_device_name() if cuda else "cpu"
        print(f"all-reduce on {n} × {name} ({dist.get_backend()})")
        for r in rows:
            print(f"  {r['mb']:8.0f} MB  {r['ms']:9.2f} ms  busbw {r['busbw_gb_s']:7.1f} GB/s")
        if args.out:
            with open(args.out, "w") as f:
                json.dump({"world_size": n, "device": name, "rows": rows}, f, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
