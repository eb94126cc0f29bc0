"""The paper's classification experiment:

python -m experiments.classification --config=experiments/configs/demo.py --workdir=DIR
"""

from mtcolor.train import cli

if __name__ == "__main__":
    cli.run("classification")
