"""Reports from the JSONL records alone: report.json, report.md, PNG plots and report.html with every video.

Everything is recomputed from the records each time, so a resumed or extended run reports on all its episodes.
"""

from __future__ import annotations

import html
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from .metrics import bootstrap_mean, wilson

MEANS = (  # record field -> report column
    ("subgoals_completed", "subgoals completed"),
    ("progress", "canonical progress"),
    ("replans", "re-plans"),
    ("first_plan_reaches_goal", "first plan's texts reach goal"),
    ("time_to_first_subgoal_s", "first subgoal s"),
    ("plan_latency_s", "plan latency s"),
    ("tokens_generated", "tokens"),
    ("psnr_mean", "PSNR dB"),
    ("ssim_mean", "SSIM"),
    ("placement_agreement", "placement agree"),
    ("placement_agreement_resting", "placement agree, resting"),
    ("placement_moved_agreement", "placed block agrees"),
    ("keyframe_follows_text", "key-frame follows text"),
)


def _summary(records: list[dict]) -> dict[str, Any]:
    n = len(records)
    k = sum(bool(r.get("success")) for r in records)
    lo, hi = wilson(k, n)
    out: dict[str, Any] = {"episodes": n, "successes": k, "success_rate": k / n if n else None, "success_ci": [lo, hi]}
    for field, _ in MEANS:
        vals = [r.get(field) for r in records]
        vals = [float(v) for v in vals if v is not None and math.isfinite(float(v))]
        m, a, b = bootstrap_mean(vals)
        nan_none = lambda x: None if math.isnan(x) else x
        out[field] = {"mean": nan_none(m), "ci": [nan_none(a), nan_none(b)], "n": len(vals)}
    out["errors"] = sum(1 for r in records if r.get("error"))
    return out


def aggregate(records: list[dict]) -> dict[str, Any]:
    """Rows per (task, engine, planner), plus one row per planner over everything."""
    groups: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    by_planner: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["task"], r["engine"], r["planner"])].append(r)
        by_planner[r["planner"]].append(r)
    rows = [{"task": t, "engine": e, "planner": p, **_summary(rs)} for (t, e, p), rs in sorted(groups.items())]
    overall = [{"planner": p, **_summary(rs)} for p, rs in sorted(by_planner.items())]
    executors = sorted({r.get("executor", "?") for r in records})
    return {"episodes": len(records), "executors": executors, "rows": rows, "overall": overall}


def _fmt(x: float | None, nd: int = 2) -> str:
    return "–" if x is None else f"{x:.{nd}f}"


def _cell(stat: dict, nd: int = 2) -> str:
    if stat["mean"] is None:
        return "–"
    lo, hi = stat["ci"]
    return f"{_fmt(stat['mean'], nd)} [{_fmt(lo, nd)}, {_fmt(hi, nd)}]"


def markdown_table(rows: list[dict], keys: tuple[str, ...]) -> str:
    head = [*keys, "n", "success [95% CI]", *(c for _, c in MEANS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lo, hi = r["success_ci"]
        succ = f"{r['successes']}/{r['episodes']} = {_fmt(r['success_rate'])} [{_fmt(lo)}, {_fmt(hi)}]"
        cells = [str(r[k]) for k in keys] + [str(r["episodes"]), succ]
        cells += [_cell(r[f], 3 if f.endswith("_s") else 2) for f, _ in MEANS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_success(agg: dict, path: Path) -> None:
    """Success rate per task x engine, one bar per planner, Wilson intervals as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = agg["rows"]
    cells = sorted({(r["task"], r["engine"]) for r in rows})
    planners = sorted({r["planner"] for r in rows})
    by = {(r["task"], r["engine"], r["planner"]): r for r in rows}
    width = 0.8 / max(1, len(planners))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(cells) + 2), 3.6), dpi=110)
    for j, p in enumerate(planners):
        xs, ys, err = [], [], [[], []]
        for i, c in enumerate(cells):
            r = by.get((*c, p))
            if r is None:
                continue
            xs.append(i + (j - (len(planners) - 1) / 2) * width)
            ys.append(r["success_rate"])
            err[0].append(r["success_rate"] - r["success_ci"][0])
            err[1].append(r["success_ci"][1] - r["success_rate"])
        ax.bar(xs, ys, width, yerr=err, capsize=3, label=f"{p}")
    ax.set_xticks(range(len(cells)), [f"{t}\n{e}" for t, e in cells], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success rate (95% Wilson CI)")
    ax.legend(fontsize=8, title="planner", title_fontsize=8)
    ex = "/".join(agg["executors"])
    ax.set_title(f"Task success per task and engine ({agg['episodes']} episodes, {ex} executor)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_latency(records: list[dict], path: Path) -> None:
    """Histogram of whole-plan latency (every plan, re-plans included) per planner, log-spaced bins."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lat: dict[str, list[float]] = defaultdict(list)
    for r in records:
        for p in r.get("plans", []):
            lat[r["planner"]].append(max(p["latency_s"], 1e-6))
    fig, ax = plt.subplots(figsize=(5.5, 3.4), dpi=110)
    allv = [v for vs in lat.values() for v in vs]
    if allv:
        bins = np.logspace(np.log10(min(allv)) - 0.1, np.log10(max(allv)) + 0.1, 30)
        for p, vs in sorted(lat.items()):
            ax.hist(vs, bins=bins, alpha=0.6, label=f"{p} (n={len(vs)})")
        ax.set_xscale("log")
        ax.legend(fontsize=8)
    ax.set_xlabel("whole-plan latency, s (log)")
    ax.set_ylabel("plans")
    ax.set_title("Planner latency", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _html(agg: dict, records: list[dict], md_rows: str, md_overall: str) -> str:
    def table(md: str) -> str:
        lines = [ln.strip("|").split(" | ") for ln in md.splitlines() if not ln.startswith("|---")]
        head, body = lines[0], lines[1:]
        h = "".join(f"<th>{html.escape(c.strip())}</th>" for c in head)
        b = "".join("<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in row) + "</tr>" for row in body)
        return f"<table><tr>{h}</tr>{b}</table>"

    cards = []
    for r in sorted(records, key=lambda r: r["key"]):
        v = r.get("video")
        if v is None:
            media = "<p>(no video)</p>"
        elif v.endswith(".mp4"):
            media = f'<video src="{html.escape(v)}" controls loop muted width="100%"></video>'
        else:
            media = f'<img src="{html.escape(v)}" width="100%" alt="episode video">'
        plans = ""
        for p in r.get("plans", []):
            err = f", {html.escape(p['error'])}" if p["error"] else ""
            texts = html.escape("; ".join(p["texts"]) or "(empty)")
            plans += f"<li>plan {p['attempt'] + 1} ({p['latency_s']:.3f} s{err}): {texts}</li>"
        status = "success" if r.get("success") else ("error: " + r["error"] if r.get("error") else "failure")
        cards.append(
            f'<div class="ep"><h3>{html.escape(r["key"])} — {html.escape(status)}</h3>'
            f"<p>{html.escape(r.get('instruction', ''))}</p>{media}<ol>{plans}</ol></div>"
        )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>emu35-robot evaluation</title>
<style>body{{font-family:sans-serif;margin:1.5em}}table{{border-collapse:collapse;font-size:12px}}
td,th{{border:1px solid #ccc;padding:3px 6px}}.ep{{display:inline-block;vertical-align:top;width:520px;margin:8px;
border:1px solid #ddd;padding:6px;font-size:12px}}.ep h3{{font-size:13px;margin:2px}}</style></head><body>
<h1>Evaluation report</h1><p>{agg["episodes"]} episodes. Success intervals: Wilson 95%; means: percentile bootstrap
95%.</p><h2>Per planner</h2>{table(md_overall)}<h2>Per task × engine × planner</h2>{table(md_rows)}
<p><img src="success_per_task.png"> <img src="latency_hist.png"></p><h2>Episodes</h2>{"".join(cards)}</body></html>
"""


def write_report(out_dir: str | Path, records: list[dict]) -> dict[str, Any]:
    """Write report.json, report.md, success_per_task.png, latency_hist.png and report.html; return the data."""
    out = Path(out_dir)
    agg = aggregate(records)
    (out / "report.json").write_text(json.dumps(agg, indent=2))
    md_rows = markdown_table(agg["rows"], ("task", "engine", "planner"))
    md_overall = markdown_table(agg["overall"], ("planner",))
    video_formats = sorted({r["video_format"] for r in records if r.get("video_format")})
    note = ""
    if "gif" in video_formats:
        note = "\nVideos are animated GIFs: no mp4 writer plugin (imageio-ffmpeg or pyav) is installed.\n"
    (out / "report.md").write_text(
        f"# Evaluation report\n\n{agg['episodes']} episodes. Success: successes/episodes = rate [Wilson 95% CI]; "
        "other columns: mean [percentile bootstrap 95% CI].\n\n## Per planner\n\n"
        f"{md_overall}\n\n## Per task × engine × planner\n\n{md_rows}\n\n"
        "![success](success_per_task.png)\n![latency](latency_hist.png)\n"
        f"{note}\nEpisodes and videos: report.html\n"
    )
    plot_success(agg, out / "success_per_task.png")
    plot_latency(records, out / "latency_hist.png")
    (out / "report.html").write_text(_html(agg, records, md_rows, md_overall))
    return agg
