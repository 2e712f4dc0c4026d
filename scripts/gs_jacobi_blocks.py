"""Do the blocks that dominate CRM need the most Jacobi iterations? (Liu & Qin 2025)

Reads the records of a results folder whose autoregressive-flow runs carry both the
model's per-block diagnostics (``measurements.diagnostics.gs_jacobi``: CRM share per block,
in sampling order) and the block passes each block took (``measurements.sampler_stats``).
For every record of the chosen sampler (Jacobi by default: one group, so its passes are
its iterations) it lists both per block, the rank correlation between them (Spearman), and
whether the block with the largest CRM share also took the most passes.

    python scripts/gs_jacobi_blocks.py results/tarflow-digits [--sampler ar-jacobi] [--out blocks.md]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def rows(results: Path, sampler: str) -> list[dict]:
    out = []
    for path in sorted((results / "records").glob("*.json")):
        record = json.loads(path.read_text())
        m = record.get("measurements") or {}
        blocks = ((m.get("diagnostics") or {}).get("gs_jacobi") or {}).get("blocks")
        stats = m.get("sampler_stats")
        if record.get("sampler") != sampler or not blocks or not stats or record.get("status") != "ok":
            continue
        shares = [b["crm_share"] for b in blocks]
        passes = stats["passes_per_block"]
        out.append({"dataset": record["dataset"], "method": record["method"], "seed": record["seed"],
                    "crm_share": shares, "passes": passes})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--sampler", default="ar-jacobi")
    parser.add_argument("--out", type=Path, help="also write the markdown here")
    args = parser.parse_args()

    from scipy.stats import spearmanr
    from tabulate import tabulate

    found = rows(args.results, args.sampler)
    if not found:
        print(f"no {args.sampler} record in {args.results} carries CRM diagnostics and pass counts", file=sys.stderr)
        return 1
    table, agree = [], 0
    for r in found:
        shares, passes = r["crm_share"], r["passes"]
        top_crm = max(range(len(shares)), key=shares.__getitem__)
        top_passes = max(range(len(passes)), key=passes.__getitem__)
        rho = spearmanr(shares, passes).statistic if len(set(passes)) > 1 else float("nan")
        agree += top_crm == top_passes
        table.append([r["dataset"], r["method"], r["seed"], " / ".join(f"{100 * s:.0f}%" for s in shares),
                      " / ".join(f"{p:g}" for p in passes), top_crm, top_passes, f"{rho:.2f}"])
    headers = ["dataset", "method", "seed", "CRM share per block", f"{args.sampler} passes per block",
               "top CRM block", "most passes", "Spearman ρ"]
    text = (f"Blocks in sampling order (0: nearest the noise). {agree} of {len(found)} records: the block with "
            f"the largest CRM share took the most passes.\n\n" + tabulate(table, headers, tablefmt="github") + "\n")
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
