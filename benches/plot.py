#!/usr/bin/env python3
"""Start-up plot: the boot and run benchmarks' JSON results as one PNG.

Reads the files `boot.py --json` and `run.py --json` write (make bench-boot
and make bench-run write them to benches/results/) and draws one panel per
measurement: boot-to-init and boot-to-exit `/bin/true` (husk vs QEMU
microvm), and the `run` of `/bin/true` (husk, restoring its template VM's
snapshot, and husk-cold, booting the guest kernel, in two blues, vs runc,
crun, runsc). Each bar is the median over the runs, its error bar the
min-max range. A runtime the
run benchmark could not measure gets an empty, labelled slot and its reason
under the plot. Panels have their own scales: compare bars within a panel
only. The title says where and when the numbers were taken.

Needs matplotlib (Debian's python3-matplotlib, for /usr/bin/python3).
"""

import argparse
import json
import os
import statistics
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benches", "results")
# Figure size in inches and resolution: ~1500x600 pixels.
FIG_W_IN, FIG_H_IN, DPI = 15, 6, 100
BAR_COLOR = {"husk": "tab:blue", "husk-cold": "lightskyblue"}
OTHER_COLOR = "tab:gray"
# Characters per line of a not-measured reason under the plot.
REASON_WIDTH = 160
TESTHOST_NAME = "husk-testhost"


def load(path):
    if not os.path.exists(path):
        print(f"plot: {path} not found, its panels are left out", file=sys.stderr)
        return None
    with open(path) as f:
        return json.load(f)


def panels(boot, run):
    """[(title, {name: [seconds] or None (not measured)})] to draw."""
    out = []
    if boot:
        for key, title in (("to_init", "boot to init"), ("to_exit", "boot to exit, /bin/true")):
            out.append((title, {name: [r[key] for r in runs if r[key] is not None]
                                for name, runs in boot["results"].items()}))
    if run:
        series = {name: r["times_s"] for name, r in run["results"].items()}
        series.update({name: None for name in run.get("unavailable", {})})
        out.append(("`run` of /bin/true (create + start + exit)", series))
    return out


def where(doc):
    m = doc.get("machine", {})
    place = "KVM test host (nested, TCG)" if m.get("hostname") == TESTHOST_NAME else m.get("hostname", "?")
    return f"{place}, {m.get('cpus', '?')} CPUs, {doc.get('date', '?')[:10]}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--boot", default=os.path.join(RESULTS, "boot.json"))
    ap.add_argument("--run", default=os.path.join(RESULTS, "run.json"))
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "img", "startup.png"))
    args = ap.parse_args()
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("plot: matplotlib not found: install python3-matplotlib (scripts/install-deps.sh) "
                 "and run this with Debian's /usr/bin/python3")
    boot, run = load(args.boot), load(args.run)
    todo = panels(boot, run)
    if not todo:
        sys.exit("plot: no results to plot (run make bench-boot and make bench-run first)")

    fig, axes = plt.subplots(1, len(todo), figsize=(FIG_W_IN, FIG_H_IN), dpi=DPI, squeeze=False)
    for ax, (title, series) in zip(axes[0], todo):
        names = list(series)
        for i, name in enumerate(names):
            values = series[name]
            if not values:
                ax.text(i, 0, "not\nmeasured", ha="center", va="bottom", fontsize=9, color="tab:red")
                continue
            med = statistics.median(values) * 1000
            lo, hi = min(values) * 1000, max(values) * 1000
            ax.bar(i, med, color=BAR_COLOR.get(name, OTHER_COLOR), width=0.6)
            ax.errorbar(i, med, yerr=[[med - lo], [hi - med]], fmt="none", ecolor="black", capsize=6)
            ax.annotate(f"{med:.0f}", (i, hi), textcoords="offset points", xytext=(0, 4),
                        ha="center", fontsize=9)
        ax.set_xticks(range(len(names)), names)
        ax.set_xlim(-0.5, len(names) - 0.5)
        ax.set_title(title, fontsize=11)
        ax.set_ylabel("ms (median, min-max)")
        ax.set_ylim(bottom=0)
        ax.margins(y=0.12)
    runs = [f"{name} {doc.get('runs', '?')} runs" for name, doc in (("boot", boot), ("run", run)) if doc]
    places = sorted({where(doc) for doc in (boot, run) if doc})
    parts = [", ".join(runs)] + places
    fig.suptitle("husk start-up, side by side (" + "; ".join(parts) + ")", fontsize=11)
    notes = [f"{name} not measured: {reason}" for name, reason in (run or {}).get("unavailable", {}).items()]
    if notes:
        text = "\n".join(textwrap.shorten(n, REASON_WIDTH) for n in notes)
        fig.text(0.01, 0.01, text, fontsize=8, color="tab:red", va="bottom")
        fig.tight_layout(rect=(0, 0.04 * len(notes), 1, 0.95))
    else:
        fig.tight_layout(rect=(0, 0, 1, 0.95))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out)
    print(f"plot: wrote {args.out}")


if __name__ == "__main__":
    main()
