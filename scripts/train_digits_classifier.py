"""Train the digits classifier whose features ``fd_digits`` and ``kid_digits`` use, and
write ``harness/assets/digits_classifier.pt`` with its card (SHA-256, test accuracy,
settings). Seeded and on one CPU thread: the same torch gives the same weights.

    python scripts/train_digits_classifier.py            # writes the assets
    python scripts/train_digits_classifier.py --check    # retrains, compares with the card
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SETTINGS = {"seed": 0, "epochs": 30, "batch_size": 64, "lr": 1e-3, "optimizer": "adam", "split": "digits spec "
            "defaults: held_out 0.2, split_seed 0"}


def train() -> tuple[object, float, float]:
    """(trained network, training accuracy, held-out accuracy)."""
    import torch

    import implementations  # noqa: F401
    from harness.digits_features import classifier
    from harness.registry import DATASETS

    torch.set_num_threads(1)
    torch.manual_seed(SETTINGS["seed"])
    cls = DATASETS.get("digits")
    data = cls(cls.Params())
    x, y = data.train_split(None), data.labels
    held_out, held_labels = data.held_out_images, data.held_out_labels
    net = classifier()
    opt = torch.optim.Adam(net.parameters(), lr=SETTINGS["lr"])
    gen = torch.Generator().manual_seed(SETTINGS["seed"])
    for _ in range(SETTINGS["epochs"]):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), SETTINGS["batch_size"]):
            idx = order[start:start + SETTINGS["batch_size"]]
            loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        train_acc = (net(x).argmax(1) == y).float().mean().item()
        test_acc = (net(held_out).argmax(1) == held_labels).float().mean().item()
    return net, train_acc, test_acc


def main() -> int:
    import torch

    from harness.digits_features import CARD, WEIGHTS, sha256

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="retrain and compare with the shipped card")
    args = parser.parse_args()
    net, train_acc, test_acc = train()
    print(f"digits classifier: training accuracy {train_acc:.4f}, held-out accuracy {test_acc:.4f}")
    if args.check:
        card = json.loads(CARD.read_text())
        same = abs(card["held_out_accuracy"] - test_acc) < 1e-9
        print(f"card: held-out accuracy {card['held_out_accuracy']:.4f} ({'same' if same else 'DIFFERENT'})")
        return 0 if same else 1
    WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), WEIGHTS)
    card = {"sha256": sha256(WEIGHTS), "held_out_accuracy": test_acc, "train_accuracy": train_acc,
            "features": 64, "torch": torch.__version__, **SETTINGS}
    CARD.write_text(json.dumps(card, indent=1) + "\n")
    print(f"wrote {WEIGHTS} ({card['sha256'][:12]}) and {CARD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
