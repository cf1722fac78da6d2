"""Time to quality: how soon each training recipe's samples follow the prompt, side by side.

Every candidate trains the demo's data and UNet (`experiment=demo`: toy faces, unet_demo, MiniLM, the toy VQ,
two one-thread DDP processes) for the same fixed step budget, saving a checkpoint every `--every` steps.
Each checkpoint is scored by evaluate.py at its own recommended sampling (mean attribute accuracy over
`--n-prompts` held-out prompts in the training captions' templates). The table gives the first step, and the
training minutes at the run's mean step rate, at which the mean reaches 0.90 and 0.95, and the last checkpoint's
scores, also with the same prompts reworded (`evaluate.py phrasing=free`).

    python bench/time_to_fidelity.py [--candidates seed epsilon flow] [--seeds 0 1] [--steps 1250] [--every 250]
                                     [--eval-from 750] [--n-prompts 100]

`--eval-from` skips scoring the checkpoints before that step (on 2 CPU cores one score of 100 prompts takes
minutes); a threshold already met at the first scored step then reads "<=step".

Candidates (overrides on top of experiment=demo):
  seed: the seed exercise's recipe: epsilon, uniform timesteps, constant lr 1e-3, no balancing, no EMA, token states
  epsilon: the demo's extras (logit-normal timesteps, warmup + cosine, balancing, EMA, clause vectors) with epsilon
  flow: the shipped `make demo` recipe: those extras with flow matching
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CANDIDATES = {
    "seed": ["model.timestep_sampling.kind=uniform", "model/lr_scheduler=constant", "model.lr_scheduler.num_warmup_steps=0",
             "model.optimizer.lr=1e-3", "model.objective=epsilon",
             "data.balance_attributes=[]", "data.caption_length_power=0", "callbacks.ema=null",
             "text_encoder.granularity=tokens"],
    "epsilon": ["model.objective=epsilon"],
    "flow": [],
}
THRESHOLDS = (0.90, 0.95)


def train(name: str, seed: int, steps: int, every: int, out: Path) -> tuple[float, list[tuple[int, Path]]]:
    """Train one candidate; returns (training seconds, [(step, checkpoint)])."""
    run_dir = out / f"{name}_seed{seed}"
    ckpt_dir = run_dir / "step_checkpoints"
    overrides = ["experiment=demo", f"seed={seed}", f"trainer.max_steps={steps}", "callbacks.time_budget.minutes=null",
                 "callbacks.time_budget.warn_below_steps=null", "callbacks.image_logger.every_n_epochs=0",
                 f"hydra.run.dir={run_dir}",
                 "+callbacks.step_checkpoints._target_=lightning.pytorch.callbacks.ModelCheckpoint",
                 f"+callbacks.step_checkpoints.dirpath={ckpt_dir}", f"+callbacks.step_checkpoints.every_n_train_steps={every}",
                 "+callbacks.step_checkpoints.save_top_k=-1", "+callbacks.step_checkpoints.auto_insert_metric_name=false",
                 "+callbacks.step_checkpoints.filename='step{step:05d}'", *CANDIDATES[name]]
    if not (run_dir / "checkpoints" / "last.ckpt").is_file():
        started = time.time()
        subprocess.run([sys.executable, "train.py", *overrides], cwd=ROOT, check=True)
        (run_dir / "train_seconds.txt").write_text(f"{time.time() - started:.1f}\n")
    seconds = float((run_dir / "train_seconds.txt").read_text())
    ckpts = sorted(ckpt_dir.glob("step*.ckpt"))
    return seconds, [(int(p.stem[4:]), p) for p in ckpts]


def evaluation(ckpt: Path, n_prompts: int, phrasing: str) -> dict:
    """evaluate.py's metrics.json for one checkpoint (cached beside it)."""
    out = ckpt.with_suffix(f".eval-{phrasing}-{n_prompts}")
    metrics = out / "metrics.json"
    if not metrics.is_file():
        subprocess.run([sys.executable, "evaluate.py", f"ckpt={ckpt}", f"n_prompts={n_prompts}",
                        "empty_prompt_floor=false", f"phrasing={phrasing}", f"out_dir={out}", f"hydra.run.dir={out}"],
                       cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return json.loads(metrics.read_text())


def score(ckpt: Path, n_prompts: int, phrasing: str) -> dict[str, float]:
    """The samples' attribute accuracy (attribute -> fraction, plus "mean")."""
    return evaluation(ckpt, n_prompts, phrasing)["attribute_accuracy"]["samples"]


def first_reaching(curve: list[tuple[int, float]], threshold: float) -> int | None:
    return next((step for step, mean in curve if mean >= threshold), None)


def steps_cell(step: int | None, first_scored: int, unscored_before: bool) -> str:
    return "—" if step is None else (f"<={step}" if step == first_scored and unscored_before else str(step))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--steps", type=int, default=1250)
    parser.add_argument("--every", type=int, default=250)
    parser.add_argument("--n-prompts", type=int, default=200)
    parser.add_argument("--eval-from", type=int, default=0, help="score only the checkpoints from this step on")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "time_to_fidelity")
    args = parser.parse_args()
    os.environ.setdefault("PROJECT_ROOT", str(ROOT))

    rows = []
    for name in args.candidates:
        for seed in args.seeds:
            seconds, ckpts = train(name, seed, args.steps, args.every, args.out)
            scored = [(step, path) for step, path in ckpts if step >= args.eval_from]
            scores = [(step, score(path, args.n_prompts, "templates")) for step, path in scored]
            curve = [(step, s["mean"]) for step, s in scores]
            minutes_per_step = seconds / 60 / max(step for step, _ in ckpts)
            cells = []
            for threshold in THRESHOLDS:
                step = first_reaching(curve, threshold)
                cells += [steps_cell(step, scored[0][0], len(scored) < len(ckpts)),
                          "—" if step is None else f"{step * minutes_per_step:.1f}"]
            final, free = scores[-1][1], score(scored[-1][1], args.n_prompts, "free")
            worst = min((v, k) for k, v in final.items() if k != "mean" and v is not None)
            rows.append([name, str(seed), *cells, f"{100 * final['mean']:.1f}", f"{worst[1]} {100 * worst[0]:.0f}",
                         f"{100 * free['mean']:.1f}",
                         " ".join(f"{100 * m:.0f}" for _, m in curve)])
    header = ["recipe", "seed", "steps to 0.90", "min to 0.90", "steps to 0.95", "min to 0.95",
              f"mean at {args.steps}", "weakest attribute", "free phrasing", f"mean at {', '.join(str(step) for step, _ in scored)} steps"]
    print(f"\n{args.n_prompts} held-out prompts in the captions' templates (free phrasing: the same rows reworded, "
          f"last checkpoint), {args.steps} steps")
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
