#!/usr/bin/env python3
"""Quality of the minimal spec: kiln's defaults against scikit-learn's and Keras' 64-32 MLP.

    python3 benches/quality.py --data DIR                          # every data set, seeds 1 2 3
    python3 benches/quality.py --data DIR --datasets iris wine --seeds 1
    python3 benches/quality.py --data DIR --datasets mnist784 fashion_mnist784 \\
        --tools kiln --baseline-bin OLD_KILN                       # wall time before vs after

DIR (default: $KILN_DATASETS, else tests/data in this repository, which holds the five small
sets) holds `<name>_train.csv` for iris, wine, breast_cancer, digits, diabetes, mnist1d,
mnist784 and fashion_mnist784: target `label` (classification) or `target` (diabetes,
regression), every other column a numeric feature. By default every set found there runs.

Protocol (issue 15):

1. Held-out rows are split off each file with a fixed seed (0) and never trained on: a
   stratified 5-fold split for the small sets (fewer than 1,000 rows: iris, wine,
   breast_cancer, diabetes; diabetes plain k-fold), else one stratified 80/20 split. The rows
   are written back as the file's own text, so every tool reads the same numbers.
2. For each held-out part and each model seed (default 1, 2, 3):
   - kiln, the MINIMAL spec: `{"model": …, "target": …, "training": {"seed": seed}}` —
     everything else is kiln's default (it makes its own validation split out of the training
     rows for early stopping). `kiln train --data train.csv --spec spec.json --json`; the
     published version is then served by `kiln serve` and the held-out rows are POSTed to
     `:predict` (the served model is scored, not a number the trainer printed);
   - scikit-learn: StandardScaler + MLPClassifier(hidden_layer_sizes=(64, 32), solver="adam",
     max_iter=50, batch_size=32, random_state=seed), everything else scikit-learn's default
     (the issue's reference); regression: MLPRegressor with the same arguments on a
     standardized target (TransformedTargetRegressor), R² in original units;
   - Keras (if importable; KERAS_BACKEND defaults to jax): StandardScaler + Dense 64 relu,
     Dense 32 relu, softmax (regression: 1 linear unit on a standardized target), Adam 1e-3,
     batch 32, 50 epochs, `keras.utils.set_random_seed(seed)`.
3. The verdict per set: kiln's mean over parts x seeds at most 1.5 accuracy points (R²: 0.05)
   below the BETTER of the two references.

Every run goes to --out (default benches/quality_results.json) with test accuracy / macro F1
(or R², MAE, RMSE), wall seconds and, for kiln, the epochs run and the best epoch.
`--baseline-bin` also trains the minimal spec with another kiln binary (an older build) and
reports both wall times.

The kiln binary is --kiln-bin, else $KILN_BIN, else $CARGO_TARGET_DIR/debug/kiln; the script
runs a private copy of it (a concurrent rebuild cannot change it mid-run), one compute thread.
"""

import argparse
import csv
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Every tool computes on one thread (kiln: `--threads 1`), so wall times compare like for like
# and a shared machine stays usable. Set before numpy or jax is imported.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

# name -> (task, target column)
DATASETS = {
    "iris": ("classification", "label"),
    "wine": ("classification", "label"),
    "breast_cancer": ("classification", "label"),
    "digits": ("classification", "label"),
    "diabetes": ("regression", "target"),
    "mnist1d": ("classification", "label"),
    "mnist784": ("classification", "label"),
    "fashion_mnist784": ("classification", "label"),
}
SMALL_ROWS = 1000  # fewer rows than this: k-fold
FOLDS = 5
SPLIT_SEED = 0
TEST_SIZE = 0.2
REF_EPOCHS = 50
ACC_TOLERANCE = 1.5  # accuracy points
R2_TOLERANCE = 0.05


def read_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def private_copy(path, tmp, name):
    if not path or not os.path.exists(path):
        sys.exit(f"no kiln binary at {path!r}: pass --kiln-bin or set KILN_BIN")
    copy = os.path.join(tmp, name)
    shutil.copy2(path, copy)
    return copy


def make_parts(name, task, target, data_dir, tmp):
    """The held-out parts of one file: [(part, train_csv, test_csv, arrays)]."""
    import numpy as np
    from sklearn.model_selection import KFold, StratifiedKFold, train_test_split

    header, rows = read_csv(os.path.join(data_dir, f"{name}_train.csv"))
    t = header.index(target)
    feats = [i for i in range(len(header)) if i != t]
    values = np.array([[float(c) for c in r] for r in rows], dtype=np.float64)
    x, y = values[:, feats], values[:, t]
    if task == "classification":
        y = y.astype(np.int64)
    idx = np.arange(len(rows))
    if len(rows) < SMALL_ROWS:
        if task == "classification":
            kf = StratifiedKFold(n_splits=FOLDS, shuffle=True, random_state=SPLIT_SEED)
            splits = list(kf.split(idx, y))
        else:
            kf = KFold(n_splits=FOLDS, shuffle=True, random_state=SPLIT_SEED)
            splits = list(kf.split(idx))
        scheme = f"stratified {FOLDS}-fold" if task == "classification" else f"{FOLDS}-fold"
    else:
        tr, te = train_test_split(idx, test_size=TEST_SIZE, random_state=SPLIT_SEED,
                                  stratify=y if task == "classification" else None)
        splits = [(tr, te)]
        scheme = "stratified 80/20"
    parts = []
    for k, (tr, te) in enumerate(splits):
        tr, te = np.sort(tr), np.sort(te)
        train_csv = os.path.join(tmp, f"{name}_p{k}_train.csv")
        test_csv = os.path.join(tmp, f"{name}_p{k}_test.csv")
        write_csv(train_csv, header, [rows[i] for i in tr])
        write_csv(test_csv, header, [rows[i] for i in te])
        parts.append({"part": k, "train_csv": train_csv, "test_csv": test_csv,
                      "x_train": x[tr], "y_train": y[tr], "x_test": x[te], "y_test": y[te]})
    info = {"rows": len(rows), "features": len(feats), "scheme": scheme,
            "classes": int(len(set(y.tolist()))) if task == "classification" else None}
    return parts, info


def scores(task, y, pred):
    import numpy as np
    from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error, mean_squared_error, r2_score

    if task == "classification":
        return {"accuracy": 100.0 * float(accuracy_score(y, pred)),
                "f1_macro": float(f1_score(y, pred, average="macro"))}
    return {"r2": float(r2_score(y, pred)), "mae": float(mean_absolute_error(y, pred)),
            "rmse": float(np.sqrt(mean_squared_error(y, pred)))}


# --- kiln -----------------------------------------------------------------------------------

def train_kiln(kiln, models, model, part, target, seed, tmp, extra):
    spec = {"model": model, "target": target, "training": {"seed": seed}}
    for k, v in (extra or {}).items():
        if isinstance(v, dict) and isinstance(spec.get(k), dict):
            spec[k] = {**spec[k], **v}
        else:
            spec[k] = v
    spec_path = os.path.join(tmp, f"{model}.spec.json")
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    cmd = [kiln, "train", "--data", part["train_csv"], "--spec", spec_path, "--models", models,
           "--json", "--threads", "1"]
    started = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.monotonic() - started
    if p.returncode != 0:
        raise RuntimeError(f"kiln failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-3000:]}")
    summary = json.loads([l for l in p.stdout.splitlines() if l.strip()][-1])
    with open(os.path.join(summary["path"], "model.json")) as f:
        info = json.load(f).get("training") or {}
    return {"model": model, "version": summary["version"], "seconds": round(seconds, 2),
            "epochs_run": info.get("epochs_run"), "best_epoch": info.get("best_epoch"),
            "val_metrics": summary.get("metrics")}


class Server:
    """`kiln serve` over a models directory, for scoring the published versions."""

    def __init__(self, kiln, models, tmp):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        # A data directory of its own: the previous server may still hold its job database
        # while it drains.
        data = tempfile.mkdtemp(prefix="serve-data-", dir=tmp)
        env = dict(os.environ, KILN_LOG_FORMAT="json", KILN_GRPC_LISTEN="")
        self.proc = subprocess.Popen(
            [kiln, "serve", "--models", models, "--data", data, "--listen", f"127.0.0.1:{self.port}",
             "--threads", "1", "--workers", "1", "--max-rows-per-request", "100000",
             "--body-limit-bytes", str(512 << 20)],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(data, "serve.log"), "wb"), env=env,
            # Not the repository: its config/kiln.toml may name keys an older binary refuses.
            cwd=data)
        self.log = os.path.join(data, "serve.log")
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(self.url("/health/ready"), timeout=2) as r:
                    if r.status == 200:
                        return
            except Exception:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                with open(self.log, errors="replace") as f:
                    tail = f.read()[-3000:]
                raise RuntimeError(f"kiln serve did not become ready; its log ends:\n{tail}")
            time.sleep(0.2)

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def predict(self, model, version, rows):
        body = json.dumps({"instances": rows}).encode()
        req = urllib.request.Request(self.url(f"/v1/models/{model}/versions/{version}:predict"),
                                     data=body, headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=300) as r:
            return json.load(r)["predictions"]

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def score_kiln(server, run, task, part):
    import numpy as np

    rows = part["x_test"].tolist()
    out = np.array(server.predict(run["model"], run["version"], rows), dtype=np.float64)
    if task == "classification":
        # Labels are the sorted class ids 0..k-1, so the output index is the class.
        pred = out.argmax(axis=1)
    else:
        pred = out.reshape(len(rows))
    return scores(task, part["y_test"], pred)


# --- references -----------------------------------------------------------------------------

def run_sklearn(task, part, seed):
    from sklearn.compose import TransformedTargetRegressor
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    args = dict(hidden_layer_sizes=(64, 32), solver="adam", max_iter=REF_EPOCHS, batch_size=32,
                random_state=seed)
    if task == "classification":
        model = make_pipeline(StandardScaler(), MLPClassifier(**args))
    else:
        model = make_pipeline(StandardScaler(), TransformedTargetRegressor(
            regressor=MLPRegressor(**args), transformer=StandardScaler()))
    started = time.monotonic()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(part["x_train"], part["y_train"])
    res = {"seconds": round(time.monotonic() - started, 2)}
    res.update(scores(task, part["y_test"], model.predict(part["x_test"])))
    return res


def keras_available():
    os.environ.setdefault("KERAS_BACKEND", "jax")
    try:
        import keras  # noqa: F401
        return True
    except Exception as e:  # noqa: BLE001 - any import failure means "not available"
        print(f"keras not available ({e}); pip install keras 'jax[cpu]' to add it", file=sys.stderr)
        return False


def run_keras(task, part, seed, classes):
    import keras
    import numpy as np
    from sklearn.preprocessing import StandardScaler

    keras.utils.set_random_seed(seed)
    sx = StandardScaler().fit(part["x_train"])
    xtr, xte = sx.transform(part["x_train"]), sx.transform(part["x_test"])
    layers = [keras.Input((xtr.shape[1],)), keras.layers.Dense(64, activation="relu"),
              keras.layers.Dense(32, activation="relu")]
    if task == "classification":
        layers.append(keras.layers.Dense(classes, activation="softmax"))
        loss, ytr = "sparse_categorical_crossentropy", part["y_train"]
    else:
        layers.append(keras.layers.Dense(1))
        loss = "mse"
        mu, sd = part["y_train"].mean(), part["y_train"].std()
        ytr = (part["y_train"] - mu) / sd
    model = keras.Sequential(layers)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)
    started = time.monotonic()
    model.fit(xtr, ytr, epochs=REF_EPOCHS, batch_size=32, shuffle=True, verbose=0)
    res = {"seconds": round(time.monotonic() - started, 2)}
    out = np.asarray(model.predict(xte, verbose=0))
    pred = out.argmax(axis=1) if task == "classification" else out.reshape(-1) * sd + mu
    res.update(scores(task, part["y_test"], pred))
    return res


# --- the run --------------------------------------------------------------------------------

def mean(xs):
    return sum(xs) / len(xs) if xs else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("KILN_DATASETS") or os.path.join(REPO, "tests", "data"),
                    help="folder of <name>_train.csv files (default: $KILN_DATASETS, else tests/data)")
    ap.add_argument("--datasets", nargs="+", choices=list(DATASETS),
                    help="default: every set whose file is in --data")
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    ap.add_argument("--tools", nargs="+", default=["kiln", "sklearn", "keras"],
                    choices=["kiln", "sklearn", "keras"])
    ap.add_argument("--kiln-bin", default=os.environ.get("KILN_BIN") or os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target")), "debug", "kiln"))
    ap.add_argument("--baseline-bin", help="another kiln binary: its minimal-spec wall time is reported too")
    ap.add_argument("--spec", type=json.loads, default=None,
                    help="JSON merged into kiln's minimal spec (experiments only: the verdict is for the minimal spec)")
    ap.add_argument("--out", default=os.path.join(REPO, "benches", "quality_results.json"))
    ap.add_argument("--combine", nargs="+", metavar="FILE",
                    help="train nothing: merge the runs of earlier results files (same protocol), "
                         "recompute the summaries and verdicts, write --out and print the table")
    ap.add_argument("--references", help="a results file of an earlier run (same protocol): its "
                    "scikit-learn and Keras runs are reused instead of training them again")
    a = ap.parse_args()
    if a.combine:
        combine(a.combine, a.out)
        return
    reused = {}
    if a.references:
        with open(a.references) as f:
            old = json.load(f)
        if old["config"]["seeds"] != a.seeds or old["config"]["split_seed"] != SPLIT_SEED:
            sys.exit(f"{a.references} used other seeds or another split")
        reused = {n: {t: r for t, r in s["runs"].items() if t in ("sklearn", "keras")}
                  for n, s in old["sets"].items()}
    if not os.path.isdir(a.data):
        sys.exit(f"{a.data} is not a folder: pass --data DIR (or set KILN_DATASETS)")
    if not a.datasets:
        a.datasets = [n for n in DATASETS if os.path.exists(os.path.join(a.data, f"{n}_train.csv"))]
    if "keras" in a.tools and not keras_available():
        a.tools = [t for t in a.tools if t != "keras"]

    tmp = tempfile.mkdtemp(prefix="kiln-quality-")
    results = {"config": {"datasets": a.datasets, "seeds": a.seeds, "tools": a.tools,
                          "spec_extra": a.spec, "references_from": a.references,
                          "folds_below_rows": SMALL_ROWS, "folds": FOLDS,
                          "split_seed": SPLIT_SEED, "reference_epochs": REF_EPOCHS,
                          "machine": platform.machine(), "python": platform.python_version()},
               "sets": {}}
    kiln = private_copy(a.kiln_bin, tmp, "kiln") if "kiln" in a.tools else None
    baseline = private_copy(a.baseline_bin, tmp, "kiln-baseline") if a.baseline_bin else None
    try:
        for name in a.datasets:
            task, target = DATASETS[name]
            parts, info = make_parts(name, task, target, a.data, tmp)
            print(f"== {name}: {info['rows']} rows, {info['features']} features, {info['scheme']}",
                  file=sys.stderr, flush=True)
            runs = {t: [] for t in a.tools}
            for t, rs in reused.get(name, {}).items():
                runs[t] = rs
            if baseline:
                runs["kiln_baseline"] = []
            models = os.path.join(tmp, f"models-{name}")
            for part in parts:
                for seed in a.seeds:
                    tag = f"{name}_p{part['part']}_s{seed}"
                    if "kiln" in a.tools:
                        r = train_kiln(kiln, models, tag, part, target, seed, tmp, a.spec)
                        r.update(part=part["part"], seed=seed)
                        r["_part"] = part
                        runs["kiln"].append(r)
                    if baseline:
                        r = train_kiln(baseline, models + "-baseline", tag, part, target, seed, tmp, None)
                        r.update(part=part["part"], seed=seed)
                        r["_part"] = part
                        runs["kiln_baseline"].append(r)
                    if "sklearn" in a.tools and "sklearn" not in reused.get(name, {}):
                        r = run_sklearn(task, part, seed)
                        r.update(part=part["part"], seed=seed)
                        runs["sklearn"].append(r)
                    if "keras" in a.tools and "keras" not in reused.get(name, {}):
                        r = run_keras(task, part, seed, info["classes"])
                        r.update(part=part["part"], seed=seed)
                        runs["keras"].append(r)
            for tool, dirname in (("kiln", models), ("kiln_baseline", models + "-baseline")):
                if not runs.get(tool):
                    continue
                server = Server(kiln, dirname, tmp)
                try:
                    for r in runs[tool]:
                        r.update(score_kiln(server, r, task, r.pop("_part")))
                finally:
                    server.close()
            summary, verdict = summarize(task, runs)
            results["sets"][name] = {"task": task, **info, "runs": runs, "summary": summary,
                                     "verdict": verdict}
            key = verdict["metric"] if verdict else ("accuracy" if task == "classification" else "r2")
            line = "  ".join(f"{t} {s['mean']:.3f} ({s['seconds']:.1f} s)" for t, s in summary.items())
            print(f"   {key}: {line}" + (f"  gap {verdict['gap']:+.3f} {'PASS' if verdict['pass'] else 'FAIL'}"
                                          if verdict else ""), file=sys.stderr, flush=True)
            with open(a.out, "w") as f:
                json.dump(results, f, indent=1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print_table(results)


def summarize(task, runs):
    key = "accuracy" if task == "classification" else "r2"
    summary = {t: {"mean": mean([r[key] for r in rs]), "seconds": mean([r["seconds"] for r in rs]),
                   "runs": len(rs)} for t, rs in runs.items() if rs}
    for t, rs in runs.items():
        epochs = [r["epochs_run"] for r in rs if r.get("epochs_run") is not None]
        if epochs and t in summary:
            summary[t]["epochs_run"] = mean(epochs)
    refs = [summary[t]["mean"] for t in ("sklearn", "keras") if t in summary]
    verdict = None
    if "kiln" in summary and refs:
        best = max(refs)
        gap = summary["kiln"]["mean"] - best
        tol = ACC_TOLERANCE if task == "classification" else R2_TOLERANCE
        verdict = {"metric": key, "best_reference": best, "gap": gap, "tolerance": tol,
                   "pass": gap >= -tol}
    return summary, verdict


def combine(files, out):
    """Merges the runs of several results files: the same split and seeds are checked."""
    merged = None
    for path in files:
        with open(path) as f:
            r = json.load(f)
        if merged is None:
            merged = {"config": {**r["config"], "combined_from": files}, "sets": {}}
        elif r["config"]["seeds"] != merged["config"]["seeds"] or r["config"]["split_seed"] != SPLIT_SEED:
            sys.exit(f"{path} used other seeds or another split")
        for name, s in r["sets"].items():
            m = merged["sets"].setdefault(name, {k: v for k, v in s.items()
                                                  if k not in ("runs", "summary", "verdict")} | {"runs": {}})
            for t, rs in s["runs"].items():
                if rs:
                    m["runs"][t] = rs
    order = [n for n in DATASETS if n in merged["sets"]]
    merged["sets"] = {n: merged["sets"][n] for n in order}
    for s in merged["sets"].values():
        s["summary"], s["verdict"] = summarize(s["task"], s["runs"])
    with open(out, "w") as f:
        json.dump(merged, f, indent=1)
    print_table(merged)


def print_table(results):
    tools = [t for t in ("kiln", "sklearn", "keras", "kiln_baseline")
             if any(t in s["summary"] for s in results["sets"].values())]
    print("| set | split | metric | " + " | ".join(tools) + " | kiln − best ref | verdict |")
    print("|---|---|---|" + "---|" * len(tools) + "---|---|")
    for name, s in results["sets"].items():
        v = s["verdict"]
        cells = []
        for t in tools:
            x = s["summary"].get(t)
            cells.append("–" if x is None else (f"{x['mean']:.2f}" if v is None or v["metric"] == "accuracy"
                                                else f"{x['mean']:.3f}"))
        gap = "–" if v is None else (f"{v['gap']:+.2f}" if v["metric"] == "accuracy" else f"{v['gap']:+.3f}")
        verdict = "–" if v is None else ("PASS" if v["pass"] else "FAIL")
        metric = "accuracy %" if s["task"] == "classification" else "R²"
        print(f"| {name} | {s['scheme']} | {metric} | " + " | ".join(cells) + f" | {gap} | {verdict} |")
    print()
    print("| set | " + " | ".join(f"{t} s/run" for t in tools) + " |")
    print("|---|" + "---|" * len(tools))
    for name, s in results["sets"].items():
        print(f"| {name} | " + " | ".join(
            f"{s['summary'][t]['seconds']:.1f}" if t in s["summary"] else "–" for t in tools) + " |")


if __name__ == "__main__":
    main()
