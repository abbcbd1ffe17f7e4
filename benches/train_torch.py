#!/usr/bin/env python3
"""kiln's training speed beside PyTorch's: same models, data, batch sizes and thread count.

    python3 benches/train_torch.py                 # 3 interleaved rounds of every case
    python3 benches/train_torch.py --rounds 5 --cases seed_b32 seed_b256
    python3 benches/train_torch.py --json out.json # also write every figure

What it does:
- installs PyTorch from PyPI (`python3 -m pip install torch`) if `import torch` fails;
- builds kiln's training benchmark (`cargo bench --bench train --no-run`; honours
  CARGO_TARGET_DIR) and runs its binary once per case and round;
- trains the same model in PyTorch in this process, on one thread (`torch.set_num_threads(1)`,
  OMP/MKL_NUM_THREADS=1), right after kiln's run of the same case: kiln, torch, kiln, torch ...
  PyTorch runs twice per round by default: with its default Adam (what `Adam(params, lr)`
  gives: the per-tensor loop on the CPU) and with `Adam(..., fused=True)`, its fastest CPU
  Adam — kiln's own Adam is a fused in-place pass, so the second is the like-for-like one;
- prints a table of medians and kiln/PyTorch ratios.

Cases (see benches/train.rs): the seed model 100→64 relu→32 relu→10 at batch 32 and 256,
10 epochs of 60,000 rows × 100 features; the MLP 784→1024 relu→1024 relu→10 at batch 256,
5 epochs of 7,680 rows (30 steps). Adam lr 1e-3, cross-entropy on logits, a fresh shuffle
every epoch. The rows are generated here with numpy exactly as benches/train.rs generates
them (a splitmix64 hash per cell; label = argmax of 10 group sums).

The PyTorch loop is the idiomatic fast one: the data as one tensor, `x[perm[i:i+b]]` per
batch (no DataLoader), `zero_grad(set_to_none=True)`, `loss.item()` every step (kiln also
reads its loss every step) and the train accuracy accumulated on the tensor side and read
once per epoch (kiln reports train accuracy every epoch too).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

# One thread, before torch (and its OpenMP runtime) load.
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[var] = "1"

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ensure_torch():
    try:
        import torch  # noqa: F401
    except ImportError:
        print("PyTorch is missing: python3 -m pip install torch (large download)", file=sys.stderr)
        subprocess.check_call([sys.executable, "-m", "pip", "install", "torch"])
    import torch

    return torch


torch = ensure_torch()
import numpy as np  # noqa: E402  (a dependency of torch's wheels)
import torch.nn.functional as F  # noqa: E402

torch.set_num_threads(1)
try:
    torch.set_num_interop_threads(1)
except RuntimeError:
    pass

CASES = {
    # name: (width, hidden, batch, rows env, default rows, epochs env, default epochs)
    "seed_b32": (100, (64, 32), 32, "KILN_BENCH_ROWS", 60000, "KILN_BENCH_EPOCHS", 10),
    "seed_b256": (100, (64, 32), 256, "KILN_BENCH_ROWS", 60000, "KILN_BENCH_EPOCHS", 10),
    "mlp_b256": (784, (1024, 1024), 256, "KILN_BENCH_MLP_ROWS", 7680, "KILN_BENCH_MLP_EPOCHS", 5),
}

M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def synthetic(rows, width, salt=7):
    """The rows of benches/train.rs: splitmix64 of k·golden + salt, top 24 bits → [-1, 1)."""
    with np.errstate(over="ignore"):
        k = np.arange(rows * width, dtype=np.uint64)
        z = k * np.uint64(0x9E3779B97F4A7C15) + np.uint64(salt)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    x = (z >> np.uint64(40)).astype(np.float32) / np.float32(16777216.0) * np.float32(2.0) - np.float32(1.0)
    x = x.reshape(rows, width)
    g = width // 10
    sums = x[:, : g * 10].astype(np.float64).reshape(rows, 10, g).sum(axis=2)
    y = sums.argmax(axis=1).astype(np.int64)
    return x, y


def median(v):
    return statistics.median(v) if v else float("nan")


def case_shape(name):
    width, hidden, batch, rows_env, rows, epochs_env, epochs = CASES[name]
    rows = int(os.environ.get(rows_env, rows))
    epochs = int(os.environ.get(epochs_env, epochs))
    return width, hidden, batch, rows, epochs


_data = {}


def torch_case(name, seed, adam="default"):
    width, hidden, batch, rows, epochs = case_shape(name)
    key = (rows, width)
    if key not in _data:
        x, y = synthetic(rows, width)
        _data[key] = (torch.from_numpy(x), torch.from_numpy(y))
    x, y = _data[key]
    torch.manual_seed(seed)
    layers = []
    prev = width
    for h in hidden:
        layers += [torch.nn.Linear(prev, h), torch.nn.ReLU()]
        prev = h
    layers.append(torch.nn.Linear(prev, 10))
    model = torch.nn.Sequential(*layers)
    extra = {} if adam == "default" else {adam: True}
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, **extra)
    gen = torch.Generator().manual_seed(seed)
    n = rows
    steps = (n + batch - 1) // batch
    secs, losses, accs = [], [], []
    model.train()
    for _ in range(epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=gen)
        loss_sum = 0.0
        correct = torch.zeros((), dtype=torch.int64)
        for i in range(0, n, batch):
            idx = perm[i : i + batch]
            xb, yb = x[idx], y[idx]
            out = model(xb)
            loss = F.cross_entropy(out, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(idx)
            correct += (out.detach().argmax(1) == yb).sum()
        acc = correct.item() / n
        secs.append(time.perf_counter() - t0)
        losses.append(loss_sum / n)
        accs.append(acc)
    sps = [rows / s for s in secs]
    return {
        "bench": "torch",
        "adam": adam,
        "case": name,
        "rows": rows,
        "width": width,
        "batch": batch,
        "epochs": epochs,
        "steps_per_epoch": steps,
        "epoch_seconds": secs,
        "samples_per_sec": sps,
        "median_samples_per_sec": median(sps),
        "median_ms_per_step": median([s * 1e3 / steps for s in secs]),
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "last_accuracy": accs[-1],
    }


def build_kiln():
    cmd = ["cargo", "bench", "--bench", "train", "--no-run", "--message-format=json"]
    out = subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.PIPE).stdout.decode()
    exe = None
    for line in out.splitlines():
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        if msg.get("reason") == "compiler-artifact" and msg.get("target", {}).get("name") == "train":
            if "bench" in msg["target"].get("kind", []) and msg.get("executable"):
                exe = msg["executable"]
    if not exe:
        sys.exit("could not find the built benches/train.rs binary")
    return exe


def kiln_case(exe, name):
    p = subprocess.run([exe, name], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if p.returncode != 0:
        sys.stderr.write(p.stderr.decode())
        sys.exit(f"kiln's bench failed on {name}")
    for line in p.stdout.decode().splitlines():
        if line.startswith("{"):
            v = json.loads(line)
            if v.get("bench") == "kiln" and v.get("case") == name:
                return v
    sys.exit(f"kiln's bench printed no result for {name}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--kiln-bin", help="a built benches/train.rs binary (default: build it)")
    ap.add_argument("--json", help="write every run's figures to this file")
    ap.add_argument("--torch-adam", nargs="+", default=["default", "fused"],
                    choices=["default", "fused", "foreach"],
                    help="PyTorch Adam implementations to run (default: the default one and fused=True)")
    args = ap.parse_args()

    exe = args.kiln_bin or build_kiln()
    print(
        f"torch {torch.__version__} (threads {torch.get_num_threads()}, "
        f"cpu capability {torch.backends.cpu.get_cpu_capability()}); kiln bench {exe}",
        file=sys.stderr,
    )
    sides = ["kiln"] + [f"torch-{a}" for a in args.torch_adam]
    runs = {c: {side: [] for side in sides} for c in args.cases}
    for r in range(args.rounds):
        for c in args.cases:
            k = kiln_case(exe, c)
            runs[c]["kiln"].append(k)
            line = (f"round {r + 1}/{args.rounds} {c:<9}: kiln {k['median_samples_per_sec']:>8.0f}/s "
                    f"{k['median_ms_per_step']:7.3f} ms/step (loss {k['last_loss']:.4f})")
            for a in args.torch_adam:
                t = torch_case(c, seed=42 + r, adam=a)
                runs[c][f"torch-{a}"].append(t)
                line += (f" | torch {a} {t['median_samples_per_sec']:>8.0f}/s {t['median_ms_per_step']:7.3f} ms/step "
                         f"(loss {t['last_loss']:.4f})")
            print(line, file=sys.stderr, flush=True)

    targets = {"seed_b32": ("samples/s", 4.0), "seed_b256": ("samples/s", 1.5), "mlp_b256": ("step", 1.25)}
    print()
    head = f"{'case':<10} {'batch':>5} | {'kiln samples/s':>14} {'ms/step':>8}"
    for a in args.torch_adam:
        head += f" | {'torch(' + a + ') samples/s':>24} {'ms/step':>8} {'kiln speed':>10}"
    print(head + " | target")
    summary = {}
    for c in args.cases:
        ks = runs[c]["kiln"]
        k_sps = median([s for v in ks for s in v["samples_per_sec"]])
        k_ms = median([s * 1e3 / v["steps_per_epoch"] for v in ks for s in v["epoch_seconds"]])
        row = f"{c:<10} {ks[0]['batch']:>5} | {k_sps:>14.0f} {k_ms:>8.3f}"
        summary[c] = {"kiln_samples_per_sec": k_sps, "kiln_ms_per_step": k_ms, "torch": {}}
        kind, goal = targets[c]
        verdicts = []
        for a in args.torch_adam:
            ts = runs[c][f"torch-{a}"]
            t_sps = median([s for v in ts for s in v["samples_per_sec"]])
            t_ms = median([s * 1e3 / v["steps_per_epoch"] for v in ts for s in v["epoch_seconds"]])
            # Paired: each round's kiln median over that of the torch run right after it.
            paired = median([k["median_samples_per_sec"] / t["median_samples_per_sec"] for k, t in zip(ks, ts)])
            row += f" | {t_sps:>24.0f} {t_ms:>8.3f} {paired:>9.2f}×"
            if kind == "step":
                met = (1.0 / paired) <= goal
                verdicts.append(f"vs {a}: step {1 / paired:.2f}× torch's (≤ {goal}×) {'met' if met else 'MISSED'}")
            else:
                met = paired >= goal
                verdicts.append(f"vs {a}: ≥ {goal}× {'met' if met else 'MISSED'}")
            summary[c]["torch"][a] = {
                "samples_per_sec": t_sps,
                "ms_per_step": t_ms,
                "paired_speed_ratio": paired,
                "target_met": met,
            }
        print(row + " | " + "; ".join(verdicts))
    print("\n(samples/s and ms/step: medians over every epoch of every round; kiln speed: median over "
          "rounds of kiln's samples/s over PyTorch's in the run right after it)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"summary": summary, "runs": runs, "torch": torch.__version__}, f, indent=1)


if __name__ == "__main__":
    main()
