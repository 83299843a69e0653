"""`python -m experiments.report DIR [DIR ...] --out DIR`: gather `results.json` files into a markdown table and PNG.

Every directory is searched recursively for `results.json` (a list of agent records, as `experiments.evaluate` and the
trainer's evaluation write them) and the `comparisons.json` beside it (paired differences between its agents). Writes
into `--out`: `results.json` (the records gathered), `comparisons.json` (per source, its paired differences),
`report.md` (the table, the per-popularity-group table of the records that have groups, the paired NDCG@10
differences, the command and commit that made each source and this report) and `ndcg10.png` (NDCG@10 per dataset
and agent with 95% bootstrap intervals), and prints the table. This is how the files under `results/` are made.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from experiments.common import markdown_table, provenance  # noqa: E402
from experiments.popularity import GROUPS_HEADING, group_table  # noqa: E402

COLUMNS = ["recall@10", "ndcg@10", "mrr@10"]
EPISODE_COLUMNS = ["reward", "format_ok", "invalid_rate"]


def load_records(directories: list[Path]) -> list[tuple[Path, dict]]:
    records = []
    for directory in directories:
        for path in sorted(directory.rglob("results.json")):
            payload = json.loads(path.read_text())
            records += [(path, r) for r in (payload if isinstance(payload, list) else [payload])]
    if not records:
        raise SystemExit(f"no results.json under {', '.join(map(str, directories))}; run experiments.evaluate first")
    return records


def load_comparisons(loaded: list[tuple[Path, dict]]) -> dict[str, dict]:
    """Each source's paired differences (its `comparisons.json`, when one was written), keyed by the source's
    dataset and split."""
    found = {}
    for path, record in loaded:
        beside = path.with_name("comparisons.json")
        if beside.exists():
            found[f"{record['dataset']} {record['split']} ({path.parent.name})"] = json.loads(beside.read_text())
    return found


def comparison_table(found: dict[str, dict]) -> str:
    rows = [
        {"source": source, "pair": pair, "ndcg@10 difference": interval(diffs["ndcg@10"])}
        | {"excludes 0": "yes" if diffs["ndcg@10"]["excludes_zero"] else "no"}
        for source, pairs in found.items()
        for pair, diffs in pairs.items()
    ]
    return markdown_table(rows, ["source", "pair", "ndcg@10 difference", "excludes 0"])


def interval(metric: dict) -> str:
    return f"{metric['mean']:.4f} [{metric['low']:.4f}, {metric['high']:.4f}]"


def table(records: list[dict]) -> str:
    rows = []
    for r in records:
        row = {"dataset": r["dataset"], "split": r["split"], "agent": r["agent"], "users": r["n_users"]}
        row |= {c: interval(r["metrics"][c]) for c in COLUMNS}
        row |= {c: f"{r['episode'][c]['mean']:.4f}" for c in EPISODE_COLUMNS if c in r.get("episode", {})}
        rows.append(row)
    columns = ["dataset", "split", "agent", "users", *COLUMNS]
    columns += [c for c in EPISODE_COLUMNS if any(c in row for row in rows)]
    return markdown_table(rows, columns)


def panels(records: list[dict]) -> list[tuple[str, list[dict]]]:
    """The plot's panels: one per dataset and split, titled with both and the number of users."""
    keys = list(dict.fromkeys((r["dataset"], r["split"]) for r in records))
    grouped = []
    for dataset, split in keys:
        rows = [r for r in records if (r["dataset"], r["split"]) == (dataset, split)]
        counts = sorted({r["n_users"] for r in rows})
        users = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
        grouped.append((f"{dataset} ({split}, {users} users)", rows))
    return grouped


def plot(records: list[dict], path: Path) -> None:
    grouped = panels(records)
    fig, axes = plt.subplots(1, len(grouped), figsize=(4.5 * len(grouped), 3.6), squeeze=False)
    for ax, (title, rows) in zip(axes[0], grouped, strict=True):
        means = [r["metrics"]["ndcg@10"]["mean"] for r in rows]
        errors = [
            [m - r["metrics"]["ndcg@10"]["low"] for m, r in zip(means, rows, strict=True)],
            [r["metrics"]["ndcg@10"]["high"] - m for m, r in zip(means, rows, strict=True)],
        ]
        ax.bar(range(len(rows)), means, yerr=errors, capsize=4, color="#4c72b0")
        ax.set_xticks(range(len(rows)), [r["agent"] for r in rows], rotation=30, ha="right")
        ax.set_title(title)
        ax.set_ylabel("NDCG@10 (95% CI)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def sources(loaded: list[tuple[Path, dict]]) -> list[str]:
    """One line per results.json: the command and commit that made it."""
    lines = {}
    for path, record in loaded:
        made = record.get("provenance", {})
        lines[path] = f"- `{made.get('command', 'unknown command')}` (commit {made.get('commit', 'unknown')})"
    return list(lines.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directories", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args()
    loaded = load_records(args.directories)
    records = [record for _, record in loaded]
    args.out.mkdir(parents=True, exist_ok=True)
    text = table(records)
    found = load_comparisons(loaded)
    made = provenance()
    grouped = [r for r in records if "popularity_groups" in r]
    groups = [
        GROUPS_HEADING,
        "",
        group_table(grouped, ("dataset", "split")),
        "",
    ]
    paired = [
        "Paired differences (in each pair `a-vs-b`: a minus b, on the same users, 95% bootstrap):",
        "",
        comparison_table(found),
        "",
    ]
    body = [
        "# deeprec results",
        "",
        text,
        "",
        "![NDCG@10](ndcg10.png)",
        "",
        *(groups if grouped else []),
        *(paired if found else []),
        "Measured by:",
        *sources(loaded),
        "",
        f"Report: `{made['command']}` (commit {made['commit']}).",
    ]
    (args.out / "report.md").write_text("\n".join(body) + "\n")
    (args.out / "results.json").write_text(json.dumps(records, indent=1))
    if found:
        (args.out / "comparisons.json").write_text(json.dumps(found, indent=1))
    plot(records, args.out / "ndcg10.png")
    print(text)
    print(f"\nwrote {args.out / 'report.md'} and {args.out / 'ndcg10.png'}")


if __name__ == "__main__":
    main()
