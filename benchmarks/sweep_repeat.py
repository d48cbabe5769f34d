"""Do identical sweeps agree? `python -m benchmarks.sweep_repeat --runs 2`.

Starts the real app server, runs the Sweep tab `--runs` times with the same settings through gradio_client, reads
each run's sweep.json, and prints per interval the measured speedup of every run, the largest relative difference
between runs, and the ideal speedup. Then the same with `analysis.sweep.run_sweep` in this process (the CLI's path).
Targets: runs agree within 5% per row; N=1 reads 1.00x +- 0.03; no speedup above the ideal (N > 1; N=1 is held to
the +- 0.03). `--cli-pairs` sets the CLI path's pairs per interval (the app uses `FORA_SWEEP_PAIRS`, default 3).
"""

import argparse
import json
import socket

from fora.generate import Request


def _report(name: str, runs: list[list[dict]]) -> None:
    print(f"{name}: speedup per run (median of pairs), spread between runs, ideal")
    for i, row in enumerate(runs[0]):
        speeds = [run[i]["speedup"] for run in runs]
        spread = (max(speeds) - min(speeds)) / min(speeds)
        flags = []
        if spread > 0.05:
            flags.append("runs differ > 5%")
        if row["interval"] == 1 and any(abs(s - 1) > 0.03 for s in speeds):
            flags.append("N=1 off 1.00 by > 0.03")
        if row["interval"] > 1 and any(s > row["ideal_speedup"] for s in speeds):  # N=1: the +-0.03 rule
            flags.append("above ideal")
        print(
            f"  N={row['interval']:>2}: "
            + ", ".join(f"{s:.3f}x" for s in speeds)
            + f"  spread {spread:.1%}  ideal {row['ideal_speedup']:.2f}x  {'; '.join(flags) or 'ok'}"
        )


def app_runs(args) -> list[list[dict]]:
    from gradio_client import Client

    import app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app.demo.queue(max_size=16, default_concurrency_limit=1).launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True
    )
    client = Client(f"http://127.0.0.1:{port}/", verbose=False)
    runs = []
    for _ in range(args.runs):
        out = client.predict(
            "emoji-dit",
            args.label,
            "",
            args.steps,
            0,
            3.0,
            [str(n) for n in args.intervals],
            args.seeds,
            True,
            True,
            True,
            0,
            0,
            "",
            api_name="/sweep",
        )
        paths = [f["path"] if isinstance(f, dict) else f for f in out[3]]
        runs.append(json.load(open(next(p for p in paths if p.endswith(".json"))))["rows"])
    app.demo.close()
    return runs


def cli_runs(args) -> list[list[dict]]:
    import torch

    from analysis.sweep.experiment import run_sweep
    from fora.loading import load_pipeline

    torch.set_num_threads(args.threads)
    pipe = load_pipeline("emoji-dit", device="cpu")
    pipe.set_progress_bar_config(disable=True)
    request = Request(label=args.label, steps=args.steps, guidance=3.0)
    return [
        [
            r.as_dict()
            for r in run_sweep(pipe, request, args.intervals, list(range(args.seeds)), pairs=args.cli_pairs).rows
        ]
        for _ in range(args.runs)
    ]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--label", default="cat")
    p.add_argument("--intervals", type=int, nargs="+", default=[1, 2, 3, 5, 7, 10])
    p.add_argument("--only", choices=["app", "cli"], default=None)
    p.add_argument("--cli-pairs", type=int, default=5, help="pairs per interval of the CLI-path runs (the app uses 3)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the CLI-path runs (the app uses 1)")
    args = p.parse_args(argv)
    if args.only != "cli":
        from ui.form import SWEEP_PAIRS

        _report(f"app Sweep tab ({SWEEP_PAIRS} pairs per interval)", app_runs(args))
    if args.only != "app":
        _report(f"run_sweep, the CLI's path ({args.cli_pairs} pairs per interval)", cli_runs(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
