"""The item-popularity-group view of evaluation records (RecGPT's Matthew effect): how well each agent serves users
whose target is a niche or a popular item, and where its recommendations go. Shows the `"popularity_groups"` key of
`results.json` records (`experiments.evaluate` writes it) as a markdown table and as `popularity.png`."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from experiments.common import markdown_table  # noqa: E402

GROUP_METRICS = ["recall@10", "ndcg@10"]
GROUPS_HEADING = (
    "Per item-popularity group (group 0: least popular items; exposure: its share of all recommended slots)"
)
GROUP_COLUMNS = ["agent", "group", "interactions", "items", "users", *GROUP_METRICS, "exposure"]


def group_rows(record: dict) -> list[dict]:
    """One table row per popularity group of a record (none for a record written before groups existed)."""
    rows = []
    for group in record.get("popularity_groups", []):
        interactions = group["training_interactions"]
        row = {"agent": record["agent"], "group": group["group"], "items": group["items"], "users": group["users"]}
        row["interactions"] = f"{interactions['min']}-{interactions['max']}"
        row |= {m: f"{group[m]['mean']:.4f} [{group[m]['low']:.4f}, {group[m]['high']:.4f}]" for m in GROUP_METRICS}
        rows.append(row | {"exposure": group["exposure_share"]})
    return rows


def group_table(records: list[dict], leading: tuple[str, ...] = ()) -> str:
    """The markdown table of the records' groups (group 0 = least popular items); `leading`: record fields shown
    before the agent, e.g. the dataset and split when records of several runs are shown together."""
    rows = [{f: record[f] for f in leading} | row for record in records for row in group_rows(record)]
    return markdown_table(rows, [*leading, *GROUP_COLUMNS])


def plot_groups(records: list[dict], path: Path) -> None:
    """`popularity.png`: NDCG@10 (95% CI) and exposure share per popularity group, one line per agent; the
    exposure panel also shows each group's share of the catalogue's items and of the users' targets."""
    groups = records[0]["popularity_groups"]
    x = [g["group"] for g in groups]
    labels = [
        f"{g['group']}\n({g['training_interactions']['min']}-{g['training_interactions']['max']})" for g in groups
    ]
    fig, (accuracy, exposure) = plt.subplots(1, 2, figsize=(10, 3.8))
    for index, record in enumerate(records):
        offset = 0.08 * (index - (len(records) - 1) / 2)  # keeps the error bars of the agents apart
        ndcg = [g["ndcg@10"] for g in record["popularity_groups"]]
        errors = [[m["mean"] - m["low"] for m in ndcg], [m["high"] - m["mean"] for m in ndcg]]
        shifted = [v + offset for v in x]
        accuracy.errorbar(shifted, [m["mean"] for m in ndcg], yerr=errors, marker="o", capsize=3, label=record["agent"])
        exposure.plot(x, [g["exposure_share"] for g in record["popularity_groups"]], marker="o", label=record["agent"])
    n_items, n_users = sum(g["items"] for g in groups), sum(g["users"] for g in groups)
    exposure.plot(x, [g["items"] / n_items for g in groups], "k--", label="items")
    exposure.plot(x, [g["users"] / n_users for g in groups], "k:", label="targets")
    first = records[0]
    accuracy.set_title(f"{first['dataset']} ({first['split']}, {first['n_users']} users)")
    accuracy.set_ylabel("NDCG@10 (95% CI)")
    exposure.set_ylabel("share of recommended slots")
    for ax in (accuracy, exposure):
        ax.set_xticks(x, labels)
        ax.set_xlabel("popularity group (training interactions)")
    exposure.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
