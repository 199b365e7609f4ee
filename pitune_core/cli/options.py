"""Options shared by several commands, each defined once: the study, the run registry, the expert
type, the embedding, and the flags that were renamed (they fail with a message naming the new one)."""

from __future__ import annotations

import argparse

from pitune_core.spec.vocab import DEFAULT_EMBEDDING, DEFAULT_EXPERT_TYPE, EMBEDDINGS, EXPERT_TYPES
from pitune_core.paths import default_runs_db, default_study


class _Renamed(argparse.Action):
    def __init__(self, option_strings, dest, new: str = "", **kw):
        self.new = new
        super().__init__(option_strings, dest=argparse.SUPPRESS, nargs="?", help=argparse.SUPPRESS, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} was renamed: use {self.new}")


def renamed(sp: argparse.ArgumentParser, old: str, new: str) -> None:
    """``old`` is refused with "OLD was renamed: use NEW" (exit 2), not an unknown-option traceback."""
    sp.add_argument(old, action=_Renamed, new=new)


def action_adder(sp: argparse.ArgumentParser, dest: str, func_attr: str):
    """The sub-actions of a command group (``pitune task add``, ``pitune library import``): returns
    ``action(name, fn, help)``, which adds one sub-parser whose ``args.<func_attr>`` is ``fn``."""
    sub = sp.add_subparsers(dest=dest, required=True, metavar="ACTION")

    def action(name, fn, help_):
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(**{func_attr: fn})
        return p
    return action


def add_study(sp: argparse.ArgumentParser, positional: bool = False) -> None:
    help_ = "study directory written by `pitune precompute` (default: $PITUNE_STUDY, else the shipped precomputed/)"
    if positional:
        sp.add_argument("study", nargs="?", default=None, help=help_)
    else:
        sp.add_argument("--study", default=None, help=help_)


def add_workers(sp: argparse.ArgumentParser) -> None:
    """``--workers N|auto`` (:mod:`pitune_core.cli.workers`)."""
    sp.add_argument("--workers", default=None, metavar="N|auto",
                    help="run the jobs in N processes (PITUNE_SHARD=i/N each, the cores shared out as threads), "
                         "then finish here; auto (the default, or $PITUNE_WORKERS): one single-thread worker per "
                         "core on CPU, 1 on CUDA or when PITUNE_SHARD is set")


def study_of(args) -> "object":
    """The study path an invocation means (``--study`` or the default)."""
    return default_study() if getattr(args, "study", None) is None else args.study


def add_db(sp: argparse.ArgumentParser, what: str = "run registry database") -> None:
    sp.add_argument("--db", default=None, help=f"{what} (default: $PITUNE_RUNS_DB, else ./runs/registry.sqlite)")


def db_of(args):
    return default_runs_db() if getattr(args, "db", None) is None else args.db


def add_expert_type(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--expert-type", default=DEFAULT_EXPERT_TYPE, choices=EXPERT_TYPES,
                    help=f"the experts' peft method (default: {DEFAULT_EXPERT_TYPE})")
    renamed(sp, "--method", "--expert-type")


def add_embedding(sp: argparse.ArgumentParser, help_: str = "task embedding") -> None:
    """``--embedding`` (one of the study's embeddings; the spec's default)."""
    sp.add_argument("--embedding", default=DEFAULT_EMBEDDING, choices=list(EMBEDDINGS),
                    help=f"{help_} (default: {DEFAULT_EMBEDDING})")
