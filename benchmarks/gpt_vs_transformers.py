"""Training throughput of mlcanon's GPT beside Hugging Face transformers' GPT2LMHeadModel, same shapes.

Both models get the same width, depth, heads, context, vocabulary, batch, optimizer (AdamW, lr 1e-3, weight decay
0.1 on every parameter), gradient clipping (1.0), precision and the same loop: forward, mean cross-entropy on
next-token targets, backward, clip, step. Dropout is 0 on both (nanoGPT's CPU configuration). Each side runs
``--warmup`` untimed steps, then ``--rounds`` timed rounds of ``--steps`` steps; the figure is the median
round's training tokens/s (B * T * steps / seconds). On CUDA the peak allocated memory of each side is reported
(torch.cuda.max_memory_allocated, reset between the sides). transformers is a bench-only extra.

    python benchmarks/gpt_vs_transformers.py --device cpu --threads 2          # nanoGPT CPU config
    python benchmarks/gpt_vs_transformers.py --device cuda --precision bf16 --layers 6 --heads 6 --width 384 \
        --context 256 --batch 64
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from mlcanon.generative.autoregressive.gpt import GPT


def ours(args) -> torch.nn.Module:
    return GPT(args.vocab, args.context, args.layers, args.heads, args.width, dropout=0.0)


class HFWrapper(torch.nn.Module):
    """GPT2LMHeadModel with SDPA attention, returning logits like ours."""

    def __init__(self, args):
        super().__init__()
        from transformers import GPT2Config, GPT2LMHeadModel
        cfg = GPT2Config(vocab_size=args.vocab, n_positions=args.context, n_embd=args.width, n_layer=args.layers,
                         n_head=args.heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        try:
            self.model = GPT2LMHeadModel._from_config(cfg, attn_implementation="sdpa")
        except (TypeError, ValueError):
            self.model = GPT2LMHeadModel(cfg)
        self.model.config.use_cache = False

    def forward(self, idx):
        return self.model(input_ids=idx, use_cache=False).logits, None


def measure(model: torch.nn.Module, args, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = model.to(device).train()
    step_model = torch.compile(model) if args.compile else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(args.vocab, (args.batch, args.context + 1), generator=g).to(device) for _ in range(8)]
    dtype = torch.bfloat16 if args.precision == "bf16" else None

    def step(i):
        w = batches[i % len(batches)]
        x, y = w[:, :-1], w[:, 1:]
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits, _ = step_model(x)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for i in range(args.warmup):
        step(i)
    sync()
    rates = []
    for _ in range(args.rounds):
        t = time.perf_counter()
        for i in range(args.steps):
            step(i)
        sync()
        rates.append(args.batch * args.context * args.steps / (time.perf_counter() - t))
    out = {"tokens_per_s": statistics.median(rates), "rounds": [round(r) for r in rates],
           "params": sum(p.numel() for p in model.parameters())}
    if device.type == "cuda":
        out["peak_mem_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads on CPU (0: torch's default)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--compile", action="store_true")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--vocab", type=int, default=65, help="tiny-shakespeare's character vocabulary")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    import transformers
    res = {"config": vars(args), "torch": torch.__version__, "transformers": transformers.__version__}
    # each side measured twice, in the order A B B A, so neither always runs on a warmer machine; the side's
    # figure is the better of its two measurements
    runs = {"mlcanon": [], "transformers": []}
    for side in ("mlcanon", "transformers", "transformers", "mlcanon"):
        runs[side].append(measure(ours(args) if side == "mlcanon" else HFWrapper(args), args, device))
    for side, ms in runs.items():
        res[side] = max(ms, key=lambda m: m["tokens_per_s"])
        res[side]["both_measurements"] = [round(m["tokens_per_s"]) for m in ms]
    res["ratio_tokens_per_s"] = res["mlcanon"]["tokens_per_s"] / res["transformers"]["tokens_per_s"]
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
