"""Command-line entry point: ``xpdl train`` on the embedded digits dataset."""

from __future__ import annotations

import argparse
import sys

import numpy as np

from xpdl.datasets import load_dataset
from xpdl.fc_net import FullyConnectedNet
from xpdl.trainer import Trainer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="xpdl")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a fully-connected net on the digits dataset")
    train.add_argument("--epochs", type=int, default=20)
    train.add_argument("--backend", default=None)
    args = parser.parse_args(argv)
    data = load_dataset("digits")
    net = FullyConnectedNet(input_dim=data["X_train"].shape[1], hidden_dims=[256, 256], num_classes=10,
                            dropout=0.8, use_batchnorm=True, weight_scale=0.05, seed=0, backend=args.backend)
    trainer = Trainer(net, data, update_rule="adam", updater_config={"learning_rate": 3e-3}, lr_decay=0.95,
                      batch_size=64, num_epochs=args.epochs, print_every=100, seed=0)
    trainer.train()
    test_acc = float(np.mean(net.predict(data["X_test"]) == data["y_test"]))
    print(f"best validation accuracy {trainer.best_val_acc:.4f}; test accuracy {test_acc:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
