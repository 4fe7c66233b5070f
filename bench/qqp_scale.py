"""QQP at full size on this machine: a format-true QQP folder, and the time and peak memory of each stage of the
pipeline that grows with the training rows, at several sizes.

    python bench/qqp_scale.py build --glue-dir ../shared/glue_data --out /tmp/qqp-scale     # folders per size
    python bench/qqp_scale.py measure --root /tmp/qqp-scale --out bench/results/qqp-scale/scale.json
    python bench/qqp_scale.py table bench/results/qqp-scale/scale.json
    python bench/qqp_scale.py rows --root /tmp/qqp-scale       # reading a row: datasets' lazy column vs Batches

`build` writes `<out>/rows-<N>/QQP/{train,dev}.tsv` for each --sizes N (default 10000, 50000, 363846): QQP's
header and columns (id, qid1, qid2, question1, question2, is_duplicate), N training rows (the first N of the
full-size file) and QQP's 40,430 dev rows in every folder. There are no real QQP rows here, so the questions are
made from the real GLUE sentences of this machine (SST-2, CoLA, MRPC, STS-B, RTE, WNLI, QNLI's dev), each turned
into a question ("...?"); a pair is a duplicate (36.9% of rows, as in QQP) when its second question is its first
with one word dropped and two neighbouring words swapped, else two different questions. Lengths, not meaning,
are what the costs depend on: `build` prints the pairs' mean token count (real QQP: about 30).

`measure` runs each stage in its own process (its time, its peak anonymous memory sampled every 0.2 s, and the
kernel's high-water mark of its resident memory from wait4) in one storage folder per size, each stage
reading what the one before wrote, as a search's driver does:
  tokenise   the tokenised splits written to storage, and the training batches built (fsd.loop.make_batches);
  cache      the teacher-output cache of the FSD family (penultimate features; fsd.train.prepare_outputs);
  memory     FSDG's teacher memory (K = 300 for QQP) fitted on the cached features (prepare_outputs);
  dry-run    `tune_main.py --dry-run` (the paper's FSD schedule on the folder);
  estimate   `tune_main.py --estimate`.
Teacher: the packaged MiniLM (6 layers, hidden 384; its classifier head is random, which changes no cost).

`bert-base` is the cache decision at the paper's size: a BERT-base-sized teacher (12 layers, hidden 768, random
weights from `BertConfig()`, saved with the MiniLM's bert-base vocabulary to `<out>/bert-base-random`) writes
the FSD cache of the first --rows training rows of the full-size folder (time, size on disk, bytes per token),
and `--dry-run` at full size says the cache's size and the decision:

    python bench/qqp_scale.py bert-base --root /tmp/qqp-scale --rows 2000 --out bench/results/qqp-scale/bert-base.json

Its step time, cache against the live teacher, is bench/speed.py's (docs/speed.md).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIZES = (10_000, 50_000, 363_846)
DEV_ROWS = 40_430
DUPLICATE_SHARE = 0.369  # QQP's training rows labelled duplicate
HEAD = ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]
STAGES = ("tokenise", "cache", "memory", "dry-run", "estimate")
# (folder, file, columns (index or header name), has header): every sentence field of the local GLUE files.
SOURCES = [("SST-2", "train", ["sentence"], True), ("SST-2", "dev", ["sentence"], True),
           ("CoLA", "train", [3], False), ("CoLA", "dev", [3], False),
           ("MRPC", "train", ["#1 String", "#2 String"], True), ("MRPC", "dev", ["#1 String", "#2 String"], True),
           ("STS-B", "train", ["sentence1", "sentence2"], True), ("STS-B", "dev", ["sentence1", "sentence2"], True),
           ("RTE", "train", ["sentence1", "sentence2"], True), ("RTE", "dev", ["sentence1", "sentence2"], True),
           ("WNLI", "train", ["sentence1", "sentence2"], True), ("QNLI", "dev", ["question", "sentence"], True)]


# ---------------------------------------------------------------------------------------------- build
def questions(glue_dir: str) -> list[str]:
    """Every distinct GLUE sentence of 4 to 30 words on this machine, as a question, in a fixed order."""
    seen: dict[str, None] = {}
    for folder, name, columns, header in SOURCES:
        with open(Path(glue_dir) / folder / f"{name}.tsv", encoding="utf-8-sig", newline="") as f:
            rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
        index = [rows[0].index(c) for c in columns] if header else columns
        for row in rows[1:] if header else rows:
            for i in index:
                if i < len(row):
                    words = re.sub(r"\s+", " ", row[i]).strip().rstrip(".!?;: ").split(" ")
                    if 4 <= len(words) <= 30:
                        seen.setdefault(" ".join([words[0][:1].upper() + words[0][1:], *words[1:]]) + "?")
    return list(seen)


def reworded(question: str, rng: random.Random) -> str:
    """The same question with one word dropped and two neighbouring words swapped."""
    words = question[:-1].split(" ")
    del words[rng.randrange(len(words))]
    i = rng.randrange(len(words) - 1)
    words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words) + "?"


def qqp_rows(pool: list[str], n: int, seed: int = 0) -> list[list[str]]:
    rng = random.Random(seed)
    ids: dict[str, int] = {}
    out = []
    for row in range(n):
        q1 = pool[rng.randrange(len(pool))]
        duplicate = rng.random() < DUPLICATE_SHARE
        q2 = reworded(q1, rng) if duplicate else pool[rng.randrange(len(pool))]
        qid1, qid2 = (ids.setdefault(q, len(ids) + 1) for q in (q1, q2))
        out.append([str(row), str(qid1), str(qid2), q1, q2, str(int(duplicate))])
    return out


def write_tsv(path: Path, rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("\n".join("\t".join(r) for r in [HEAD, *rows]) + "\n")


def build(args: argparse.Namespace) -> None:
    from transformers import AutoTokenizer

    from fsd.models import resolve_model_path

    pool = questions(args.glue_dir)
    rows = qqp_rows(pool, max(args.sizes) + DEV_ROWS)
    train, dev = rows[:max(args.sizes)], rows[max(args.sizes):]
    for n in args.sizes:
        folder = Path(args.out) / f"rows-{n}"
        write_tsv(folder / "QQP" / "train.tsv", train[:n])
        write_tsv(folder / "QQP" / "dev.tsv", dev)
    tok = AutoTokenizer.from_pretrained(resolve_model_path("packaged-minilm"))
    sample = train[:: max(1, len(train) // 20_000)]
    lengths = [len(ids) for ids in tok([r[3] for r in sample], [r[4] for r in sample])["input_ids"]]
    print(json.dumps({"questions": len(pool), "train": len(train), "dev": len(dev),
                      "duplicate_share": round(sum(r[5] == "1" for r in train) / len(train), 4),
                      "mean_tokens_per_pair": round(sum(lengths) / len(lengths), 1),
                      "max_tokens_per_pair": max(lengths)}))


# ---------------------------------------------------------------------------------------------- measure
def config(data_dir: str, storage: str, method: str):
    from fsd.config import DistillConfig

    return DistillConfig.from_dict({"task": "qqp", "teacher": "packaged-minilm", "student_init": "packaged-minilm",
                                    "student_layers": 3, "method": method, "data_dir": data_dir,
                                    "storage": storage, "device": "cpu"})


def stage(name: str, data_dir: str, storage: str) -> dict:
    """Run one stage in this process; what it wrote or counted."""
    from fsd.logs import quiet_libraries, show_console

    quiet_libraries()
    show_console()
    if name == "tokenise":
        from fsd.loop import make_batches
        from fsd.models import load_tokenizer

        c = config(data_dir, storage, "vkd")
        train, dev, _ = make_batches(c.data, load_tokenizer(c.teacher), storage)
        return {"train_rows": train.num_examples, "dev_rows": sum(b.num_examples for b in dev.values()),
                "tokens": int(train.lengths.sum())}
    from fsd.train import prepare_outputs

    method = {"cache": "fsdil", "memory": "fsd"}[name]
    prepared = prepare_outputs(config(data_dir, storage, method))
    return {"rows": prepared.rows, "memory_shape": prepared.memory_shape}


def anon_kb(pid: int) -> int:
    """The process's anonymous resident memory (heap, tensors), in kB; 0 once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    found = re.search(r"RssAnon:\s+(\d+)", text)  # an ended process not yet reaped has none
    return int(found.group(1)) if found else 0


def run_child(cmd: list[str], log: Path) -> dict:
    """Run `cmd`, output appended to `log`; its wall time, exit status and peak memory: `peak_rss_gb` (the
    kernel's high-water mark, which counts the pages of memory-mapped files it has touched, the cache's
    among them: the kernel takes those back when it needs them) and `peak_anon_gb` (anonymous memory only,
    sampled every 0.2 s)."""
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        peak_anon = 0
        # WNOWAIT: the ended child stays to be reaped by wait4, which gives its resource usage.
        while os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            peak_anon = max(peak_anon, anon_kb(proc.pid))
            time.sleep(0.2)
        _, status, usage = os.wait4(proc.pid, 0)
        code = os.waitstatus_to_exitcode(status)
    return {"seconds": round(time.perf_counter() - start, 1), "peak_rss_gb": round(usage.ru_maxrss / 1e6, 3),
            "peak_anon_gb": round(peak_anon / 1e6, 3), "rc": code}


def folder_gb(path: Path) -> float:
    return round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e9, 3) if path.exists() else 0.0


def measure(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(out.read_text()) if out.is_file() else {}
    for n in args.sizes:
        data_dir, storage = Path(args.root) / f"rows-{n}", Path(args.root) / f"storage-{n}"
        for name in args.stages:
            if results.get(str(n), {}).get(name, {}).get("rc") == 0:
                continue  # measured before: a re-run goes on where it stopped
            if name in ("dry-run", "estimate"):
                cmd = [sys.executable, "tune_main.py", "--task", "qqp", "--data-dir", str(data_dir), "--teacher",
                       "packaged-minilm", "--student-layers", "3", "--storage", str(storage), f"--{name}"]
            else:
                cmd = [sys.executable, __file__, "stage", name, "--data-dir", str(data_dir), "--storage", str(storage),
                       "--result", str(out.with_suffix(".stage.json"))]
            out.with_suffix(".stage.json").unlink(missing_ok=True)
            row = run_child(cmd, out.with_suffix(".log"))
            if out.with_suffix(".stage.json").is_file():  # what the stage counted: rows, tokens, the memory's shape
                row.update(json.loads(out.with_suffix(".stage.json").read_text()))
            row["storage_gb"] = {k: folder_gb(storage / k) for k in ("data_cache", "cache", "memory")}
            results.setdefault(str(n), {})[name] = row
            out.write_text(json.dumps(results, indent=1))
            print(n, name, row, flush=True)
        if args.clean and n != max(args.sizes):
            shutil.rmtree(storage, ignore_errors=True)


def bert_base(args: argparse.Namespace) -> None:
    import numpy as np
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from fsd.loop import make_batches
    from fsd.models import load_tokenizer, resolve_model_path
    from fsd.train import prepare_outputs

    root, full = Path(args.root), max(SIZES)
    teacher = root / "bert-base-random"
    if not teacher.is_dir():
        torch.manual_seed(0)
        BertForSequenceClassification(BertConfig(num_labels=2)).save_pretrained(teacher)
        AutoTokenizer.from_pretrained(resolve_model_path("packaged-minilm")).save_pretrained(teacher)
    data_dir, storage = root / f"rows-{full}", root / "storage-bert-base"
    c = config(str(data_dir), str(storage), "fsdil").replace(teacher=str(teacher), max_train_samples=args.rows)
    train, _, _ = make_batches(c.replace(max_train_samples=None).data, load_tokenizer(str(teacher)), str(storage))
    tokens = int(train.lengths.sum())  # the full size's training tokens (tokenised here, before the pass is timed)
    start = time.perf_counter()
    prepare_outputs(c)  # the pass over the first --rows rows (a length-sorted window holds 1,600)
    seconds = time.perf_counter() - start
    files = {p.name: p.stat().st_size for p in (storage / "cache").rglob("*.npy")}
    feature = np.load(next((storage / "cache").rglob("penultimate-float16.npy")), mmap_mode="r")
    cmd = [sys.executable, "tune_main.py", "--task", "qqp", "--data-dir", str(data_dir), "--teacher", str(teacher),
           "--storage", str(storage), "--dry-run"]
    dry = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    said = [line for line in (dry.stdout + dry.stderr).splitlines() if "teacher-output cache" in line]
    result = {"rows": args.rows, "seconds": round(seconds, 1), "rows_per_s": round(args.rows / seconds, 1),
              "files": files, "tokens": feature.shape[0], "bytes_per_token": feature.shape[1] * feature.itemsize,
              "full_rows": full, "full_tokens": tokens,
              "dry_run_rc": dry.returncode, "dry_run_says": said}
    if tokens:
        per_row = files["logits.npy"] / args.rows  # float32 logits (+ the file's header, negligible)
        result["full_cache_gb"] = round((tokens * result["bytes_per_token"] + full * per_row) / 1e9, 2)
        result["full_pass_hours"] = round(full / (args.rows / seconds) / 3600, 2)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


def row_access(args: argparse.Namespace) -> None:
    """Microseconds to read one row's token ids from each size's tokenised training split: through `datasets`'
    lazy column (`split["input_ids"][i]`, what `Batches` did before 2026-12-06) and from `Batches`' arrays."""
    import glob

    from datasets import load_from_disk

    from fsd.data import Batches

    out = {}
    for n in args.sizes:
        split = load_from_disk(glob.glob(str(Path(args.root) / f"storage-{n}" / "data_cache" / "*"))[0])["train"]
        rows = list(range(0, n, max(1, n // 2000)))[:2000]
        column = split["input_ids"]
        start = time.perf_counter()
        for i in rows:
            column[i]
        lazy = (time.perf_counter() - start) / len(rows) * 1e6
        batches = Batches(split, 32, pad_id=0)
        start = time.perf_counter()
        for i in rows:
            batches.ids[batches.offsets[i]:batches.offsets[i + 1]]
        flat = (time.perf_counter() - start) / len(rows) * 1e6
        out[n] = {"column_us_per_row": round(lazy, 1), "batches_us_per_row": round(flat, 2)}
        print(n, out[n], flush=True)
    print(json.dumps(out))


def table(args: argparse.Namespace) -> None:
    """The scale table: each stage's time and peak memory at each size, and whether it grows linearly (an
    affine cost a + b * rows: the cost per 1,000 more rows between the two smaller sizes against the one
    between the two larger)."""
    results = json.loads(Path(args.scale).read_text())
    sizes = sorted(int(n) for n in results)
    print("| stage | " + " | ".join(f"{n:,} rows: s, GB (anon / high-water)" for n in sizes)
          + " | s per 1,000 more rows (small; large) | GB per 100,000 more rows, anon (small; large) |")
    print("|---|" + "---|" * (len(sizes) + 2))
    for name in STAGES:
        rows = [results[str(n)].get(name) for n in sizes]
        if any(r is None for r in rows):
            continue
        cells = [f"{r['seconds']:,.0f}, {r['peak_anon_gb']:.2f} / {r['peak_rss_gb']:.2f}" for r in rows]
        pairs = range(len(sizes) - 1)
        slopes = [1000 * (rows[i + 1]["seconds"] - rows[i]["seconds"]) / (sizes[i + 1] - sizes[i]) for i in pairs]
        memory = [1e5 * (rows[i + 1]["peak_anon_gb"] - rows[i]["peak_anon_gb"]) / (sizes[i + 1] - sizes[i])
                  for i in pairs]
        print(f"| {name} | {' | '.join(cells)} | {'; '.join(f'{x:.2f}' for x in slopes)} | "
              f"{'; '.join(f'{x:.2f}' for x in memory)} |")
    full = results[str(sizes[-1])]
    print(f"\nat {sizes[-1]:,} rows: {full['tokenise']['tokens']:,} training tokens; storage "
          + ", ".join(f"{k} {v:.2f} GB" for k, v in full[STAGES[-1]]["storage_gb"].items())
          + f"; the driver's peak (the largest of its stages): {max(r['peak_anon_gb'] for r in full.values()):.2f} "
          f"GB anonymous, {max(r['peak_rss_gb'] for r in full.values()):.2f} GB high-water")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build")
    b.add_argument("--glue-dir", required=True)
    b.add_argument("--out", required=True)
    b.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    m = sub.add_parser("measure")
    m.add_argument("--root", required=True, help="the folder `build` wrote")
    m.add_argument("--out", required=True, help="JSON of the figures (re-run: goes on where it stopped)")
    m.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    m.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    m.add_argument("--clean", action="store_true", help="delete a smaller size's storage once measured")
    bb = sub.add_parser("bert-base")
    bb.add_argument("--root", required=True, help="the folder `build` wrote")
    bb.add_argument("--rows", type=int, default=2000)
    bb.add_argument("--out", required=True)
    r = sub.add_parser("rows")
    r.add_argument("--root", required=True, help="the folder `measure` used (its tokenised splits)")
    r.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    t = sub.add_parser("table")
    t.add_argument("scale", help="`measure`'s JSON")
    s = sub.add_parser("stage")
    s.add_argument("name", choices=STAGES[:3])
    s.add_argument("--data-dir", required=True)
    s.add_argument("--storage", required=True)
    s.add_argument("--result", help="write what the stage counted to this JSON file")
    args = p.parse_args()
    if args.command == "build":
        build(args)
    elif args.command == "measure":
        measure(args)
    elif args.command == "bert-base":
        bert_base(args)
    elif args.command == "table":
        table(args)
    elif args.command == "rows":
        row_access(args)
    else:
        result = stage(args.name, args.data_dir, args.storage)
        print(json.dumps(result))
        if args.result:
            Path(args.result).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
