"""The paper's multitask experiment:

python -m experiments.multitask --config=experiments/configs/demo.py --workdir=DIR
"""

from mtcolor.train import cli

if __name__ == "__main__":
    cli.run("multitask")
