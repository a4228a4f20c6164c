"""Shared by the command-line tests: a tiny network preset and a main() that returns
(exit status, stdout, stderr) whether the command returns or exits."""
from undiffuse.cli import main

TINY = ["--set", "model.channels=16", "--set", "model.channel_mult=[1,2]", "--set", "model.attention_levels=[1]",
        "--set", "model.num_res_blocks=1", "--set", "model.head_channels=16", "--set", "optim.batch_size=16",
        "--set", "train.sample_count=4", "--set", "sample.steps=3", "--set", "train.tensorboard=false",
        "--no-progress"]


def run_main(args, capsys):
    try:
        code = main(args)
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def main_code(args) -> int:
    """The exit status of ``undiffuse ARGS`` (for fixtures, which have no capsys)."""
    try:
        return main(args)
    except SystemExit as e:
        return e.code
