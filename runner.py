"""Train with the default config, like ``interp train``; extra arguments pass through.

    python runner.py
    python runner.py -c configs/mnist_allconv.yaml --set train.epochs=2
"""

import sys

from interp.cli import main

if __name__ == "__main__":
    main(["train", *sys.argv[1:]])
