"""All cores on many short articles (issue 29): intra-op threads in one process, or one process per core?

    python benchmarks/cores.py --model MODEL --data ARTICLES.jsonl
    python benchmarks/cores.py --model models/run/best --data ../shared/data/cnn_dailymail/cnn_dailymail-test-sample.jsonl --limit 32

Runs ``srsum summarize`` on the same articles (batch ``--batch-size``, greedy, exactly ``--tokens`` new tokens)
two ways on this machine's ``--cores`` cores, each in fresh processes, ``--rounds`` times alternately:

* ``threads``: one process, ``--threads <cores>``;
* ``processes``: ``torchrun --nproc_per_node <cores>``, ``--threads 1`` each (srsum shares the articles out).

Reports the wall time of the whole command (model loading and, for torchrun, its start-up included), what
counts, and the articles per minute of srsum's own note (the summarizing alone; under torchrun the main
process's note covers its own share only), and checks that both wrote the same summaries.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table  # noqa: E402

NOTE = re.compile(r"\(([\d,.]+) articles/min\)")


def run(way: str, args, output: Path) -> dict:
    common = ["summarize", str(args.data), "--model", args.model, "--batch-size", str(args.batch_size),
              "--num-beams", "1", "--max-length", str(args.tokens), "--min-length", str(args.tokens),
              "--dtype", args.dtype, "--output", str(output), "--device", "cpu"]
    if way == "threads":
        command = [sys.executable, "-m", "srsum.cli", *common, "--threads", str(args.cores)]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.cores),
                   "--master_addr", "127.0.0.1", "--master_port", "29533", "-m", "srsum.cli", *common,
                   "--threads", "1"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{way} failed: {done.stderr.strip().splitlines()[-1:]}")
    rates = [float(m.replace(",", "")) for m in NOTE.findall(done.stderr + done.stdout)]
    return {"way": way, "wall_s": round(wall, 2), "articles_per_min": rates[0] if rates else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", type=Path, required=True, help="a .jsonl of articles")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per summary (exactly)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    command = "python benchmarks/cores.py " + " ".join(sys.argv[1:])
    print(f"machine: {machine()}\ncommand: {command}\n", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for round_index in range(args.rounds):
            outputs = {}
            for way in ("threads", "processes"):
                outputs[way] = Path(folder) / f"{way}-{round_index}.jsonl"
                rows.append({**run(way, args, outputs[way]), "round": round_index})
                print("  " + json.dumps(rows[-1]), flush=True)
            same = outputs["threads"].read_text() == outputs["processes"].read_text()
            rows[-1]["same_summaries"] = rows[-2]["same_summaries"] = same
    table = [[r["round"], r["way"], r["wall_s"], r["articles_per_min"], r["same_summaries"]] for r in rows]
    print("\n" + markdown_table(["round", "way", "wall s (whole command)", "articles/min (srsum's note; torchrun: the main process's share)",
                                 "same summaries"], table))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "command": command, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
