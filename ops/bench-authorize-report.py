#!/usr/bin/env python3
"""Prints the table of `ops/bench authorize` from its JSON lines (one per phase)."""
import json
import sys


# Phases with a row each: spread (random accounts, mostly first touches in a short run: cold
# keys), hot (one account), spent (one account with nothing left: every answer a refusal), steady
# (random accounts, each touched once before, not counted). The targets are judged on all
# but spent.
PHASES = {"spread": "{accounts} accounts, cold", "hot": "one hot account", "spent": "one spent account, refused",
          "steady": "{accounts} accounts, steady"}
TARGET_PHASES = ("spread", "hot", "steady")


def main(path):
    phases = [json.loads(line) for line in open(path) if line.strip()]
    ceiling = {p["clients"]: p["result"] for p in phases if p["phase"] == "ceiling"}
    baseline = {(p["phase"], p["clients"]): p["result"]["per_second"]
                for p in phases if p["phase"].startswith("reserve")}
    cores = next((p["result"]["cores"] for p in phases if "cores" in p.get("result", {})), "?")
    print(f"\nauthorize benchmark (this machine: {cores} cores; one run; each figure next to the ceiling and the")
    print("per-request UPDATE baseline of the same client count, measured in the same run; server and machine:")
    print("cores used, from /proc; CPU us: the whole machine's CPU time per answer, load generator included)")
    print(f"  {'':<30} {'clients':>7} {'per s':>9} {'p50 ms':>7} {'p99 ms':>7} {'server':>7} {'machine':>8}"
          f" {'CPU us':>7} {'x ceiling':>9} {'x UPDATE':>9}")

    def row(name, clients, result):
        return (f"  {name:<30} {clients:>7} {result['per_second']:>9.0f} {result['p50_us'] / 1000:>7.2f}"
                f" {result['p99_us'] / 1000:>7.2f} {result.get('server_cores', -1):>6.2f}c"
                f" {result.get('machine_cores', 0):>7.2f}c {cpu_per_answer(result):>7.0f}")

    for phase in phases:
        if phase["phase"] not in PHASES:
            continue
        result, clients = phase["result"], phase["clients"]
        base = update_baseline(baseline, phase)
        top = ceiling.get(clients, {}).get("per_second", 0)
        name = phase_name(phase)
        ratios = f" {result['per_second'] / top if top else 0:>9.2f}" + (
            f" {result['per_second'] / base:>9.2f}" if base else f" {'-':>9}")
        print(row(name, clients, result) + ratios)
        print(f"  {'':<30} {'':>7} granted {result['granted']}, settled {result['settled']}"
              f" ({result.get('settled_in_time', 0)} while the clients ran), answers {result['statuses']},"
              f" errors {result['errors']}"
              + (f", after {result['warm_up_authorizations']} warm-up authorizations (settled too, not counted)"
                 if result.get("warm_up_authorizations") else ""))
    for clients, result in sorted(ceiling.items()):
        print(row("ceiling: GET /healthz", clients, result))
    for (script, clients), per_second in sorted(baseline.items()):
        name = "baseline: UPDATE, random" if script == "reserve" else "baseline: UPDATE, hot"
        print(f"  {name:<30} {clients:>7} {per_second:>9.0f}")
    for phase in phases:
        if phase["phase"] == "audit":
            print(f"  {phase['mode']}: server peak RSS {phase['rss_kb'] / 1024:.1f} MB;"
                  f" tally audit after the run: {phase['audit']}")
    for phase in phases:
        top = ceiling.get(phase["clients"]) if phase["phase"] in PHASES else None
        if top and cpu_per_answer(top) and cpu_per_answer(phase["result"]):
            times = cpu_per_answer(phase["result"]) / cpu_per_answer(top)
            print(f"  {phase_name(phase)}, {phase['clients']} clients: {times:.1f}x the machine's CPU of a ceiling"
                  f" request; with every core busy in both, x ceiling is near {1 / times:.2f}")
    print("  Targets (DESIGN §10): >= 0.45x ceiling and >= 1.5x UPDATE; on 16 cores >= 50k/s, p99 <= 5 ms at 64")
    print("  clients, p99 <= 2 ms at 16, one hot account >= 20k/s.")
    for line in target_checks(phases, ceiling, baseline):
        print(line)


def target_checks(phases, ceiling, baseline):
    """Each target of DESIGN §10 (issue 15) per commit mode: the figures it is judged on, and whether
    every one of them meets it."""
    def check(name, values, passes, shown):
        verdict = "met" if values and all(passes(v) for v in values) else "NOT met"
        return f"    {name}: {', '.join(shown(v) for v in values) or '-'} ({verdict})"

    lines = []
    for mode in dict.fromkeys(p["mode"] for p in phases if p["phase"] in TARGET_PHASES):
        runs = [p for p in phases if p.get("mode") == mode and p["phase"] in TARGET_PHASES]
        most = max(p["clients"] for p in runs)
        at_most = [p for p in runs if p["clients"] == most]
        at_16 = [p for p in runs if p["clients"] == 16]
        top = ceiling.get(most, {}).get("per_second", 0)
        lines.append(f"  {mode}, the targets at {most} clients (cold, hot, steady):")
        lines.append(check(">= 0.45x the ceiling", [p["result"]["per_second"] / top for p in at_most if top],
                           lambda v: v >= 0.45, lambda v: f"{v:.2f}x"))
        lines.append(check(">= 1.5x the UPDATE baseline",
                           [p["result"]["per_second"] / update_baseline(baseline, p) for p in at_most
                            if update_baseline(baseline, p)],
                           lambda v: v >= 1.5, lambda v: f"{v:.2f}x"))
        lines.append(check(">= 50k/s (16 cores)", [p["result"]["per_second"] for p in at_most],
                           lambda v: v >= 50_000, lambda v: f"{v:,.0f}/s"))
        lines.append(check("p99 <= 5 ms", [p["result"]["p99_us"] / 1000 for p in at_most],
                           lambda v: v <= 5, lambda v: f"{v:.1f} ms"))
        lines.append(check("one hot account >= 20k/s",
                           [p["result"]["per_second"] for p in at_most if p["phase"] == "hot"],
                           lambda v: v >= 20_000, lambda v: f"{v:,.0f}/s"))
        if at_16:
            lines.append(check("16 clients, p99 <= 2 ms", [p["result"]["p99_us"] / 1000 for p in at_16],
                               lambda v: v <= 2, lambda v: f"{v:.1f} ms"))
    return lines


def update_baseline(baseline, phase):
    """The per-request UPDATE baseline a phase is compared with: on one hot account for the hot
    phase, on random accounts for the others that reserve, at the phase's client count (0 when not
    measured, or for refusals, which reserve nothing)."""
    if phase["phase"] == "spent":
        return 0
    return baseline.get(("reserve_hot" if phase["phase"] == "hot" else "reserve", phase["clients"]), 0)


def phase_name(phase):
    accounts = f"{phase['accounts']:,}" if "accounts" in phase else "random"
    return f"{phase['mode']}, {PHASES[phase['phase']].format(accounts=accounts)}"


def cpu_per_answer(result):
    """Microseconds of the whole machine's CPU per answer (0 when not measured)."""
    per_second, cores = result.get("per_second", 0), result.get("machine_cores", 0)
    return cores / per_second * 1e6 if per_second and cores > 0 else 0


if __name__ == "__main__":
    main(sys.argv[1])
