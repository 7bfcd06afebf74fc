"""The tables of ``bench.chat_delivery``: one row per target, ratios, the search log."""

from __future__ import annotations

import math
from typing import Any

from bench.api_requests import NOISE_LIMIT
from bench.chat_delivery_steps import Step
from bench.loadgen import GENERATOR_CPU_LIMIT, percentile
from bench.report import Result

ms = 1e3
REFERENCES = ("aiohttp-ws", "node-socketio")


def _bounding(steps: list[Step]) -> Step | None:
    """The lowest failing rate: what ended the search upwards."""
    failed = [s for s in steps if not s.passed]
    return min(failed, key=lambda s: s.rate) if failed else None


def result_row(found: dict[str, Any], budget: float) -> Result:
    steps: list[Step] = found["steps"]
    confirm: Step | None = found["confirm"]
    row = confirm or Step(found["target"], 0.0)
    lat = row.latencies
    result = Result(
        target=found["target"],
        mode="open",
        round=1,
        requests=row.scheduled,
        rps=row.delivered / row.wall if row.wall else 0.0,
        p50_ms=percentile(lat, 50) * ms,
        p90_ms=percentile(lat, 90) * ms,
        p99_ms=percentile(lat, 99) * ms,
        p999_ms=percentile(lat, 99.9) * ms,
        max_ms=(lat[-1] if lat else math.nan) * ms,
        errors=sum(row.errors.values()),
        error_kinds=dict(row.errors),
        generator_cpu=row.generator_cpu,
        server_cpu=row.server_cpu,
        database_cpu=row.database_cpu,
        core_busy=row.cores,
        other_cpu=row.other_cpu,
        target_rate=row.rate,
        notes=list(found["notes"]),
    )
    bound = _bounding(steps)
    if confirm is None:
        result.invalid.append(f"no rate kept p99 within {budget * ms:g} ms (lowest tried failed)")
    elif not confirm.passed:
        p99 = confirm.p(99) * ms
        result.invalid.append(f"the confirming run went over budget (p99 {p99:.1f} ms)")
    if confirm is not None and confirm.generator_cpu >= GENERATOR_CPU_LIMIT:
        result.invalid.append(
            f"generator used {confirm.generator_cpu:.0%} of its core at this rate: "
            "it measured itself"
        )
    if bound is not None:
        result.notes.append(
            f"bounded by {bound.rate:.0f}/s: p99 {bound.p(99) * ms:.1f} ms, "
            f"delivered {bound.delivered}/{bound.scheduled}, generator {bound.generator_cpu:.0%}, "
            f"server {bound.server_cpu:.0%}"
        )
        if bound.generator_cpu >= GENERATOR_CPU_LIMIT:
            result.invalid.append(
                f"the generator saturated its core ({bound.generator_cpu:.0%}) at "
                f"{bound.rate:.0f}/s: the rate is the generator's limit, "
                "a lower bound for the server"
            )
    else:
        result.notes.append(
            "never went over budget before the search ended: the rate is a lower bound "
            "(raise --max-rate or --max-steps)"
        )
    if row.max_send_lag > 0.005:
        lag = row.max_send_lag * ms
        result.notes.append(f"the generator sent up to {lag:.1f} ms late (counted)")
    if result.other_cpu > NOISE_LIMIT:
        result.noisy = True
        result.notes.append(f"{result.other_cpu:.0%} of a core went to other processes: noisy")
    return result


def lower_bound(found: dict[str, Any]) -> bool:
    """The rate found is the generator's limit (or the search's), not the server's."""
    confirm: Step | None = found["confirm"]
    bound = _bounding(found["steps"])
    return (
        bound is None
        or bound.generator_cpu >= GENERATOR_CPU_LIMIT
        or (confirm is not None and confirm.generator_cpu >= GENERATOR_CPU_LIMIT)
    )


def _per_message_us(step: Step) -> float:
    rate = step.delivered / step.wall if step.wall else 0.0
    return step.server_cpu / rate * 1e6 if rate else math.nan


def rate_ratios(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """teleconsult against each reference: the rate at the budget (``<=`` when the
    reference's figure is only a lower bound), and server CPU per message at the same
    offered rate (teleconsult's)."""
    by_name = {item["target"]: item for item in found}
    tc = by_name.get("teleconsult")
    ratios: list[dict[str, Any]] = []
    if tc is None or tc["confirm"] is None:
        return ratios
    for ref in REFERENCES:
        item = by_name.get(ref)
        if item is None or item["confirm"] is None:
            continue
        entry: dict[str, Any] = {
            "ratio": f"teleconsult / {ref}",
            "rate_ratio": tc["confirm"].rate / item["confirm"].rate,
            "rate_qualifier": "<=" if lower_bound(item) and not lower_bound(tc) else "",
        }
        same: Step | None = item.get("same")
        if same is not None:
            entry["same_rate"] = same.rate
            ours, theirs = _per_message_us(tc["confirm"]), _per_message_us(same)
            entry["cpu_per_message_ratio"] = ours / theirs if theirs > 0 else math.nan
        ratios.append(entry)
    return ratios


def step_json(step: Step, kind: str) -> dict[str, Any]:
    return {
        "target": step.target,
        "kind": kind,
        "rate": step.rate,
        "p50_ms": step.p(50) * ms,
        "p99_ms": step.p(99) * ms,
        "delivered": step.delivered,
        "scheduled": step.scheduled,
        "errors": dict(step.errors),
        "generator_cpu": step.generator_cpu,
        "server_cpu": step.server_cpu,
        "server_us_per_message": _per_message_us(step),
        "database_cpu": step.database_cpu,
        "other_cpu": step.other_cpu,
        "passed": step.passed,
        "retries": step.retries,
    }


def steps_table(found: list[dict[str, Any]]) -> str:
    head = (
        f"{'step':<26} {'msg/s':>8} {'p50 ms':>8} {'p99 ms':>9} {'delivered':>13} "
        f"{'gen':>5} {'server':>6} {'db':>5}  verdict"
    )
    lines = [head, "-" * len(head)]
    for item in found:
        rows = [("", s) for s in item["steps"]]
        rows += [
            (label, item[key]) for key, label in (("confirm", "confirm"), ("same", "same-rate"))
        ]
        for label, s in rows:
            if s is None:
                continue
            name = f"{s.target} {label}".strip()
            verdict = "ok" if s.passed else "over budget"
            if s.errors:
                verdict += f" {dict(s.errors)}"
            if s.noisy:
                verdict += f" (noisy: others {s.other_cpu:.0%})"
            if s.retries:
                verdict += f" [attempt {s.retries + 1}]"
            lines.append(
                f"{name:<26} {s.rate:>8.0f} {s.p(50) * ms:>8.2f} {s.p(99) * ms:>9.2f} "
                f"{f'{s.delivered}/{s.scheduled}':>13} {s.generator_cpu:>5.0%} "
                f"{s.server_cpu:>6.0%} {s.database_cpu:>5.0%}  {verdict}"
            )
    return "\n".join(lines)


def _row(name: str, rate: str, step: Step, valid: str) -> str:
    return (
        f"{name:<15} {rate:>20} {step.p(50) * ms:>7.2f} {step.p(99) * ms:>7.2f} "
        f"{step.server_cpu:>10.0%} {_per_message_us(step):>13.0f} {step.generator_cpu:>7.0%}  "
        f"{valid}"
    )


def summary(
    found: list[dict[str, Any]], results: list[Result], ratios: list[dict[str, Any]], budget: float
) -> str:
    head = (
        f"{'target':<15} {f'msg/s at p99<={budget * ms:g}ms':>20} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'server CPU':>10} {'server us/msg':>13} {'gen CPU':>7}  valid"
    )
    lines = [head, "-" * len(head)]
    for item, r in zip(found, results, strict=True):
        confirm: Step | None = item["confirm"]
        valid = "INVALID" if r.invalid else "noisy" if r.noisy else "yes"
        if confirm is None:
            lines.append(f"{r.target:<15} {'none':>20}  {valid}")
            continue
        rate = f"{'>=' if lower_bound(item) else ''}{confirm.rate:.0f}"
        lines.append(_row(r.target, rate, confirm, valid))
    same = [item for item in found if item.get("same") is not None]
    if same:
        rate = same[0]["same"].rate
        lines.append("")
        lines.append(f"the references at teleconsult's rate ({rate:.0f} msg/s, the same load):")
        for item in same:
            step = item["same"]
            valid = "noisy" if step.noisy else "yes" if step.passed else "over budget"
            lines.append(_row(item["target"], f"{step.rate:.0f}", step, valid))
    if ratios:
        lines.append("")
        lines.append("ratios:")
        for ratio in ratios:
            text = (
                f"  {ratio['ratio']:<30} rate at the budget "
                f"{ratio['rate_qualifier']}x{ratio['rate_ratio']:.3f}"
            )
            if "cpu_per_message_ratio" in ratio:
                text += (
                    f"; server CPU per message at {ratio['same_rate']:.0f} msg/s "
                    f"x{ratio['cpu_per_message_ratio']:.0f}"
                )
            lines.append(text)
    return "\n".join(lines)
