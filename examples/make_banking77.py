"""Regenerate examples/banking77: a small real text dataset for labelkit (CC BY 4.0).

BANKING77 (Casanueva et al. 2020, PolyAI) intents; this example keeps 12 intents x 40 test
utterances, labels 6 per intent, and flips 10% of those given labels on purpose. True labels
go to examples/banking77-truth.csv (the stages never read it).

    python examples/make_banking77.py [--source ../shared/data/banking77] [--seed 0]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
INTENTS = [
    "card_arrival", "lost_or_stolen_card", "exchange_rate", "top_up_failed", "cash_withdrawal_charge",
    "declined_card_payment", "change_pin", "transfer_not_received_by_recipient", "apple_pay_or_google_pay",
    "Refund_not_showing_up", "passcode_forgotten", "terminate_account",
]


def main(source: Path, seed: int = 0, per_class_labeled: int = 6, flip_frac: float = 0.10) -> None:
    rows = [r for r in csv.DictReader(open(source / "test.csv", newline="", encoding="utf-8")) if r["category"] in INTENTS]
    rng = np.random.default_rng(seed)
    given = [""] * len(rows)
    for intent in INTENTS:
        members = [i for i, r in enumerate(rows) if r["category"] == intent]
        for i in rng.choice(members, size=per_class_labeled, replace=False):
            given[i] = intent
    labeled = [i for i, g in enumerate(given) if g]
    for i in rng.choice(labeled, size=round(flip_frac * len(labeled)), replace=False):
        given[i] = str(rng.choice([c for c in INTENTS if c != rows[i]["category"]]))
    out = HERE / "banking77"
    out.mkdir(exist_ok=True)
    with open(out / "labels.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "text", "label"])
        for i, r in enumerate(rows):
            w.writerow([f"b{i:04d}", r["text"], given[i]])
    with open(HERE / "banking77-truth.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "true_label", "given_label"])
        for i, r in enumerate(rows):
            w.writerow([f"b{i:04d}", r["category"], given[i]])
    print(f"wrote {len(rows)} texts to {out}: {len(labeled)} labeled, {round(flip_frac * len(labeled))} flipped")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", type=Path, default=HERE.parent.parent / "shared" / "data" / "banking77")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    main(a.source, a.seed)
