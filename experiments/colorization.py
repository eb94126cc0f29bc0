"""The paper's colorization experiment:

python -m experiments.colorization --config=experiments/configs/demo.py --workdir=DIR
"""

from mtcolor.train import cli

if __name__ == "__main__":
    cli.run("colorization")
