"""Cost of INCRT's statistics and gate per training step, and online vs exact lambda_max.

Part 1 (cost): a fixed SST-2-like classifier (2 layers of 4 heads by default) on random
tokens with padding. Rounds alternate their order (noise hits every measurement alike)
and the results are medians. Per check the gate costs the capture hooks on a training
step (a step inside ``capture_inputs`` minus a plain step), ``layer_stats``, the
policy's ``decide`` (each gate; the frozen one with either estimator) and the stats.jsonl
records the trainer writes; the demand gate's statistics instead cost a step under its
capture (the logit bias) minus a plain step, and the moments and demands of that step.
Spread over ``check_every`` steps, that is compared with the plain step (target: <= 3%).
Thresholds are set so high that ``decide`` never changes the structure.

Part 2 (agreement): the same structure trains on a slice of SST-2 (random tokens if the
data is absent); at every check the residual operator ``A_res`` of each layer goes to
both estimators, in the same order. Reports |online - exact| / |exact| of lambda_max
after 1, 5, 10, ... checks, and its mean / max once the tracker had time to converge, for
the policy's default step size and for the reference code's 1 / (10 d).

    python benchmarks/incrt_overhead.py [--data-dir ../shared/data/sst2] \
        [--out runs/incrt_overhead.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from growformer import statistics as statistics_
from growformer import theory
from growformer.arch import Architecture, LayerSpec
from growformer.data import BatchStream, load_task
from growformer.model import ElasticModel, build_model
from growformer.policies import IncrtPolicy
from growformer.statistics import (
    DEMAND,
    MOMENTS,
    InputCapture,
    LayerStats,
    capture_inputs,
    layer_stats,
)
from growformer.training.config import TrainConfig
from growformer.training.runtime import keep_freed_memory
from growformer.training.setup import make_optimizer

TARGET = 0.03
CURVE = (1, 5, 10, 20, 50, 100, 200)
FROZEN_LEVELS = (0.10, 0.05, 0.01)
# The gates timed (options of each), with thresholds out of reach (see quiet_policy).
GATES: dict[str, dict[str, Any]] = {
    "realigned": {"gate": "realigned"},
    "energy_fraction": {"gate": "energy_fraction", "energy_epsilon": 1.0},
    "frozen, exact": {"gate": "frozen", "estimator": "exact"},
    "frozen, online": {"gate": "frozen", "estimator": "online"},
    # Its own statistic (the logit gradient) costs a step of its own: see measure_cost.
    "demand": {"gate": "demand", "demand_z": 1e12},
}
ESTIMATORS = tuple(GATES)
OPERATOR_GATES = tuple(g for g in GATES if g != "demand")


def make_model(args: argparse.Namespace, vocab_size: int) -> ElasticModel:
    arch = Architecture(
        kind="classifier",
        d_model=args.d_model,
        vocab_size=vocab_size,
        max_len=args.seq,
        layers=(LayerSpec(args.heads, args.head_dim, args.ffn_dim),) * args.layers,
        num_labels=2,
        dropout=0.2,
    )
    torch.manual_seed(0)
    return build_model(arch, "reference").train()


def random_batch(args: argparse.Namespace, seed: int) -> dict[str, torch.Tensor]:
    """Random tokens; every other sequence padded from a random length on."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, args.vocab, (args.batch, args.seq), generator=g)
    lengths = torch.randint(args.seq // 4, args.seq + 1, (args.batch,), generator=g)
    lengths[::2] = args.seq
    mask = torch.arange(args.seq) < lengths[:, None]
    ids[~mask] = 0
    labels = torch.randint(0, 2, (args.batch,), generator=g)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class Stepper:
    """The trainer's step (forward, backward, clip, AdamW, loss.item()), with or without
    the capture hooks, on a fixed model and optimizer."""

    def __init__(self, model: ElasticModel, cfg: TrainConfig) -> None:
        self.model, self.cfg = model, cfg
        self.optimizer = make_optimizer(model, cfg)

    def step(self, batch: dict[str, torch.Tensor], capture: InputCapture | None = None) -> float:
        if capture is not None:
            with capture_inputs(self.model, batch["attention_mask"], capture):
                loss = self.model(**batch).loss
        else:
            loss = self.model(**batch).loss
        return self._finish(loss)

    def demand_step(self, batch: dict[str, torch.Tensor]) -> statistics_.Capture:
        """A step under the demand gate's capture (moments and the logit gradient)."""
        mask, needs = batch["attention_mask"], {MOMENTS, DEMAND}
        with statistics_.capture(self.model, mask, needs) as captured:
            loss = self.model(**batch).loss
        self._finish(loss)
        return captured

    def _finish(self, loss: torch.Tensor) -> float:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.item()


class TimedCapture(InputCapture):
    """An InputCapture that also measures the time spent in its hooks' work directly."""

    def __init__(self, n_layers: int) -> None:
        super().__init__(n_layers)
        self.elapsed = 0.0

    def add(self, layer: int, x: torch.Tensor, mask: torch.Tensor | None) -> None:
        t0 = time.perf_counter()
        super().add(layer, x, mask)
        self.elapsed += time.perf_counter() - t0


@torch.no_grad()
def eval_stats(model: ElasticModel, batch: dict[str, torch.Tensor]) -> list[LayerStats]:
    """Statistics of one batch without dropout (as the trainer calibrates)."""
    model.eval()
    capture = InputCapture(len(model.transformer.layers))
    with capture_inputs(model, batch["attention_mask"], capture):
        model(batch["input_ids"], batch["attention_mask"])
    model.train()
    return layer_stats(model, capture)


def quiet_policy(gate: str, check_every: int) -> IncrtPolicy:
    """An INCRT policy whose gate computes everything but never grows nor prunes."""
    return IncrtPolicy(
        {
            **GATES[gate],
            "threshold_mode": "calibrated",
            "check_every": check_every,
            "growth_ratio": 1e12,
            "prune_patience": 10**9,
        }
    )


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def write_log(policy: IncrtPolicy, path: Path) -> None:
    """What the trainer does with the policy's records: one appended JSON line each."""
    for record in policy.drain_log():
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


def measure_cost(args: argparse.Namespace) -> dict[str, Any]:
    model = make_model(args, args.vocab)
    stepper = Stepper(model, TrainConfig(lr=1e-4))
    batches = [random_batch(args, seed) for seed in range(8)]
    policies = {e: quiet_policy(e, args.check_every) for e in ESTIMATORS}
    calibration = [eval_stats(model, b) for b in batches]
    for policy in policies.values():
        policy.calibrate(calibration)
    n_layers = len(model.transformer.layers)
    names = ("plain", "captured", "demand_step", "hooks", "layer_stats", "demand_results", "log")
    times: dict[str, list[float]] = {k: [] for k in (*names, *ESTIMATORS)}
    with tempfile.TemporaryDirectory() as tmp:
        log_path = Path(tmp) / "stats.jsonl"
        for i in range(args.warmup + args.rounds):
            batch = batches[i % len(batches)]
            capture = TimedCapture(n_layers)
            runs = [
                ("plain", lambda b=batch: stepper.step(b)),
                ("captured", lambda b=batch, c=capture: stepper.step(b, c)),
                ("demand_step", lambda b=batch: stepper.demand_step(b)),
            ]
            results = {}
            for name, fn in runs if i % 2 == 0 else runs[::-1]:
                results[name] = timed(fn)
            t_stats, stats = timed(lambda c=capture: layer_stats(model, c))
            demand_capture = results["demand_step"][1]
            t_demand, demanded = timed(lambda c=demand_capture: c.results(model, lambda: 0.0))
            inputs = {
                e: (stats,) if e in OPERATOR_GATES else (demanded[MOMENTS], None, demanded[DEMAND])
                for e in ESTIMATORS
            }
            decided = {}
            for e in ESTIMATORS if i % 2 == 0 else ESTIMATORS[::-1]:
                decided[e] = timed(
                    lambda e=e, step=i + 1, x=inputs[e]: policies[e].decide(step, *x)
                )
                if decided[e][1]:
                    raise RuntimeError(f"the {e} gate changed the structure during timing")
            t_log, _ = timed(lambda: [write_log(p, log_path) for p in policies.values()])
            if i < args.warmup:
                continue
            for name in ("plain", "captured", "demand_step"):
                times[name].append(results[name][0])
            times["hooks"].append(capture.elapsed)
            times["layer_stats"].append(t_stats)
            times["demand_results"].append(t_demand)
            for e in ESTIMATORS:
                times[e].append(decided[e][0])
            # Both policies' records were written; one trainer writes one policy's.
            times["log"].append(t_log / len(policies))
    med = {k: statistics.median(v) for k, v in times.items()}
    capture_diff = med["captured"] - med["plain"]
    # The difference of medians is noisy (it can even be negative); the directly timed
    # hook work is a floor for it. Take the larger of the two: an upper estimate.
    capture_cost = max(capture_diff, med["hooks"])
    result: dict[str, Any] = {
        "median_ms": {k: 1e3 * v for k, v in med.items()},
        "capture_diff_ms": 1e3 * capture_diff,
        "capture_cost_ms": 1e3 * capture_cost,
        "check_every": args.check_every,
        "online_iters": policies["frozen, online"].options["online_iters"],
        "rounds": args.rounds,
        "per_step": {},
    }
    # The demand gate's statistics: its step (the logit bias forces the explicit attention
    # kernel) minus a plain one, then the moments and the demands from the gradients.
    demand_cost = max(med["demand_step"] - med["plain"], 0.0) + med["demand_results"]
    for e in ESTIMATORS:
        statistics_cost = capture_cost + med["layer_stats"] if e in OPERATOR_GATES else demand_cost
        per_check = statistics_cost + med[e] + med["log"]
        per_step = per_check / args.check_every
        result["per_step"][e] = {
            "per_check_ms": 1e3 * per_check,
            "per_step_ms": 1e3 * per_step,
            "ratio": per_step / med["plain"],
            # Checking at every step: the worst case of the interval.
            "ratio_every_step": per_check / med["plain"],
        }
    return result


def operator_sequence(args: argparse.Namespace) -> tuple[list[list[torch.Tensor]], str]:
    """A_res of every layer at every check of a short training run (as the trainer sees it)."""
    sst2 = Path(args.data_dir) if args.data_dir else None
    if sst2 is not None and (sst2 / "train.tsv").exists():
        data = load_task(
            "sst2",
            data_dir=sst2,
            max_len=args.seq,
            vocab_size=2000,
            options={"train_limit": 4000},
        )
        stream = BatchStream(data.train, args.batch, 0, data.tokenizer.pad_id)
        vocab, source = data.vocab_size, f"SST-2 ({sst2}, 4000 training sentences)"

        def batch_at(step: int) -> dict[str, torch.Tensor]:
            return stream.batch(step)
    else:
        vocab, source = args.vocab, "random tokens (no SST-2 data found)"

        def batch_at(step: int) -> dict[str, torch.Tensor]:
            return random_batch(args, 1000 + step)

    model = make_model(args, vocab)
    stepper = Stepper(model, TrainConfig(lr=1e-3))
    operators = []
    for step in range(args.checks * args.check_every):
        batch = batch_at(step)
        if (step + 1) % args.check_every:
            stepper.step(batch)
            continue
        capture = InputCapture(len(model.transformer.layers))
        stepper.step(batch, capture)
        # No growth here, so nothing is captured yet and A_res = A (P = I).
        ops = [theory.directional_operator(s.cov, s.forms) for s in layer_stats(model, capture)]
        operators.append(ops)
    return operators, source


def track(
    operators: list[list[torch.Tensor]], deflated: bool, policy: IncrtPolicy
) -> dict[str, list[list[float]]]:
    """Relative errors [check][layer] of the online extreme eigenvalues against the exact ones.

    With ``deflated``, each layer's top exact eigenvector at the first check is held as a
    captured direction (as after one growth) and both estimators see ``A_res = P A P``.
    """
    generator = torch.Generator().manual_seed(0)
    trackers = [policy.new_tracker(a.shape[0], generator) for a in operators[0]]
    qs = [theory.exact_spectrum(a).u_plus[:, None] if deflated else None for a in operators[0]]
    errors: dict[str, list[list[float]]] = {"lambda_max": [], "lambda_min": []}
    for ops in operators:
        for key in errors:
            errors[key].append([])
        for tracker, a, q in zip(trackers, ops, qs, strict=True):
            a_res = theory.deflate(a, q)
            exact, online = theory.exact_spectrum(a_res), tracker.update(a_res, q)
            for key in errors:
                e, o = getattr(exact, key), getattr(online, key)
                errors[key][-1].append(abs(o - e) / abs(e))
    return errors


def frozen_convergence(
    a: torch.Tensor, max_checks: int, policy: IncrtPolicy
) -> dict[str, int | None]:
    """Checks a fresh tracker needs on one operator held fixed to come within each level
    of the exact lambda_max (None: not within ``max_checks``): its convergence speed
    without the drift of training."""
    tracker = policy.new_tracker(a.shape[0], torch.Generator().manual_seed(0))
    exact = theory.exact_spectrum(a).lambda_max
    reached: dict[str, int | None] = {f"{level:.0%}": None for level in FROZEN_LEVELS}
    for n in range(1, max_checks + 1):
        err = abs(tracker.update(a).lambda_max - exact) / abs(exact)
        for level in FROZEN_LEVELS:
            if err <= level and reached[f"{level:.0%}"] is None:
                reached[f"{level:.0%}"] = n
        if err <= min(FROZEN_LEVELS):
            break
    return reached


def agreement(args: argparse.Namespace) -> dict[str, Any]:
    """Online vs exact, for the policy's default step size and the reference 1 / (10 d)."""
    operators, source = operator_sequence(args)
    result: dict[str, Any] = {
        "source": source,
        "checks": len(operators),
        "layers": len(operators[0]),
        "online_iters": IncrtPolicy().options["online_iters"],
        "converge_checks": args.converge_checks,
        "frozen_max_checks": args.frozen_checks,
    }
    dim = operators[0][0].shape[0]
    rates = {
        f"default step {IncrtPolicy().options['online_lr']}": IncrtPolicy(),
        f"reference step 1/(10 d) = {1 / (10 * dim):.5f}": IncrtPolicy({"online_lr": None}),
    }
    for rate, policy in rates.items():
        per_rate: dict[str, Any] = {}
        for scenario in ("undeflated", "deflated"):
            errors = track(operators, scenario == "deflated", policy)
            r: dict[str, Any] = {"per_check": errors}
            lmax = errors["lambda_max"]
            r["curve"] = {n: max(lmax[n - 1]) for n in CURVE if n <= len(lmax)}
            for key, rows in errors.items():
                settled = [e for row in rows[args.converge_checks - 1 :] for e in row]
                r[f"{key}_mean"] = statistics.fmean(settled) if settled else None
                r[f"{key}_max"] = max(settled) if settled else None
            per_rate[scenario] = r
        # The last operator of each layer, held fixed: how many checks the tracker needs.
        per_rate["frozen"] = [
            frozen_convergence(a, args.frozen_checks, policy) for a in operators[-1]
        ]
        result[rate] = per_rate
    result["rates"] = list(rates)
    return result


def report(cost: dict[str, Any], agree: dict[str, Any], args: argparse.Namespace) -> list[str]:
    m = cost["median_ms"]
    plain = m["plain"]
    k = args.check_every
    print(f"{'component':<34} {'ms/check':>9} {'ms/step':>8} {'% of step':>9}")
    rows = [
        ("plain training step", plain, None),
        ("capture: captured - plain step", cost["capture_diff_ms"], k),
        ("capture: hook work timed directly", m["hooks"], k),
        ("capture (used: max of the two)", cost["capture_cost_ms"], k),
        ("layer_stats", m["layer_stats"], k),
        ("demand: demand step - plain step", m["demand_step"] - plain, k),
        ("demand: moments and demands", m["demand_results"], k),
        *((f"decide, {gate} gate", m[gate], k) for gate in GATES),
        ("stats.jsonl records", m["log"], k),
    ]
    for name, ms, every in rows:
        if every is None:
            print(f"{name:<34} {'':>9} {ms:>8.2f} {100.0:>8.1f}%")
        else:
            print(f"{name:<34} {ms:>9.3f} {ms / every:>8.3f} {100 * ms / every / plain:>8.2f}%")
    verdicts = []
    for e in ESTIMATORS:
        r = cost["per_step"][e]
        ok = r["ratio"] <= TARGET
        verdicts.append(
            f"{'PASS' if ok else 'FAIL'}: {e} gate, statistics + gate every {k} steps: "
            f"{r['per_step_ms']:.3f} ms/step = {100 * r['ratio']:.2f}% of the {plain:.2f} ms "
            f"plain step (target <= {100 * TARGET:.0f}%; checking every step: "
            f"{100 * r['ratio_every_step']:.1f}%)"
        )
    for rate in agree["rates"]:
        for scenario, what in (("undeflated", "A_res = A"), ("deflated", "one captured direction")):
            r = agree[rate][scenario]
            curve = ", ".join(f"{n}: {100 * e:.2f}%" for n, e in r["curve"].items())
            verdicts.append(
                f"info: online ({rate}) vs exact lambda_max, {what}, {agree['checks']} checks "
                f"x {agree['layers']} layers of {agree['source']}: relative error after N "
                f"checks (max over layers) {curve}"
            )
            if r["lambda_max_mean"] is not None:
                verdicts.append(
                    f"info:   from check {agree['converge_checks']} on: lambda_max mean "
                    f"{100 * r['lambda_max_mean']:.2f}%, max {100 * r['lambda_max_max']:.2f}%; "
                    f"lambda_min mean {100 * r['lambda_min_mean']:.2f}%, "
                    f"max {100 * r['lambda_min_max']:.2f}%"
                )
        frozen = "; ".join(
            f"layer {i}: "
            + ", ".join(
                f"{level} after {'>' + str(agree['frozen_max_checks']) if n is None else n}"
                for level, n in reached.items()
            )
            for i, reached in enumerate(agree[rate]["frozen"])
        )
        verdicts.append(f"info: online ({rate}) on the final operator held fixed: {frozen} checks")
    return verdicts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--ffn-dim", type=int, default=512)
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seq", type=int, default=48)
    p.add_argument("--check-every", type=int, default=5)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=60)
    p.add_argument("--checks", type=int, default=60, help="checks of the agreement run")
    p.add_argument("--converge-checks", type=int, default=20)
    p.add_argument("--frozen-checks", type=int, default=300, help="cap of the frozen-operator test")
    p.add_argument("--data-dir", default="../shared/data/sst2")
    p.add_argument("--out", default="runs/incrt_overhead.json")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = p.parse_args()
    keep_freed_memory()  # as training does; see its docstring
    if args.threads:
        # On a shared machine, fewer threads than cores avoids oversubscription stalls.
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.layers} layers x "
        f"{args.heads} heads of {args.head_dim}, d_model {args.d_model}, ffn {args.ffn_dim}, "
        f"batch {args.batch} x seq {args.seq}; {args.rounds} alternating rounds"
    )
    t0 = time.perf_counter()
    cost = measure_cost(args)
    agree = agreement(args)
    verdicts = report(cost, agree, args)
    print("\n".join(verdicts))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "args": vars(args),
        "cost": cost,
        "agreement": agree,
        "verdicts": verdicts,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out} ({result['wall_s']} s)")


if __name__ == "__main__":
    main()
