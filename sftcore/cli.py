"""The `sft` command line. Importing this module must not import torch, torchvision or timm."""

from __future__ import annotations

import json
import sys

import click

from .errors import SftError

KIND_ALIASES = {
    "datasets": "datasets", "dataset": "datasets",
    "backbones": "backbones", "backbone": "backbones",
    "regularizers": "regularizers", "regularizer": "regularizers",
    "heads": "heads", "head": "heads",
}


class SftGroup(click.Group):
    """Turns user errors into one line and exit code 2; `--debug` shows tracebacks."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SftError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"sft: error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("sft: interrupted", err=True)
            ctx.exit(130)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"sft: internal error: {type(exc).__name__}: {exc} "
                       "(this is a bug; rerun with `sft --debug ...` for the traceback)", err=True)
            ctx.exit(1)


@click.group(cls=SftGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.version_option(package_name="sftcore", prog_name="sft")
@click.pass_context
def cli(ctx, debug):
    """sftcore: pretrain on a source task, finetune on a few-label target, evaluate.

    Components (datasets, backbones, regularizers, head strategies) come from plugins;
    see `sft list` and `sft plugins`.
    """
    ctx.obj = {"debug": debug}


@cli.command("list")
@click.argument("kind", required=False)
@click.argument("pattern", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON keyed by kind.")
def list_cmd(kind, pattern, as_json):
    """List components. KIND: datasets, backbones, regularizers or heads; PATTERN: a shell wildcard."""
    from .plugins import get_registry
    from .registry import suggest

    if kind is not None and kind.lower() not in KIND_ALIASES:
        if pattern is None:  # `sft list 'l2*'`: a pattern over every kind
            kind, pattern = None, kind
        else:
            raise SftError(f"unknown kind '{kind}'{suggest(kind, KIND_ALIASES)}; "
                           "use datasets, backbones, regularizers or heads")
    kind = KIND_ALIASES[kind.lower()] if kind else None
    listing = get_registry().list(kind, pattern)
    if as_json:
        click.echo(json.dumps({k: [c.as_dict() for c in v] for k, v in listing.items()}, indent=2))
        return
    for k, items in listing.items():
        click.echo(f"{k}:")
        if not items:
            click.echo("  (none)")
        width = max((len(c.name) for c in items), default=0)
        for c in items:
            click.echo(f"  {c.name:<{width}}  {c.description}  [{c.plugin}]")


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def plugins_cmd(as_json):
    """List loaded plugins: distribution, version, hooks, components and load errors."""
    from .plugins import plugin_infos

    infos = plugin_infos()
    if as_json:
        click.echo(json.dumps(infos, indent=2))
        return
    for info in infos:
        dist = f"{info['distribution']} {info['version']}" if info["distribution"] else "(not installed)"
        click.echo(f"{info['name']}  [{dist}]{'  builtin' if info['builtin'] else ''}")
        if info["hooks"]:
            click.echo(f"  hooks: {', '.join(info['hooks'])}")
        for k, names in info["components"].items():
            if names:
                click.echo(f"  {k}: {', '.join(names)}")
        if info["error"]:
            click.echo(f"  error: {info['error']}")


@cli.command("run")
@click.argument("config", required=False, type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
              help="Override a config value (YAML syntax), e.g. --set finetune.epochs=5. Repeatable.")
@click.option("--out", type=click.Path(file_okay=False), help="Run directory (default runs/<name>-<timestamp>).")
@click.option("--resume", type=click.Path(file_okay=False), metavar="RUN_DIR",
              help="Continue an interrupted run from its checkpoints (uses the run's own config).")
@click.option("--progress/--no-progress", default=None, help="Progress bars (default: when stderr is a terminal).")
def run_cmd(config, overrides, out, resume, progress):
    """Run pretrain -> finetune -> evaluate. With no CONFIG, runs the embedded shapes demo."""
    from .runner import run

    run(config, out=out, overrides=overrides, progress=progress, echo=click.echo, resume=resume)


@cli.group("config")
def config_group():
    """Show or create run configs."""


@config_group.command("show")
@click.argument("config", required=False, type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE", help="Override a config value.")
def config_show(config, overrides):
    """Print the resolved config (defaults filled in, components checked)."""
    from . import config as cfgmod
    from .plugins import get_registry

    click.echo(cfgmod.dump(cfgmod.resolve(cfgmod.load(config, overrides), get_registry())), nl=False)


@config_group.command("init")
@click.argument("path", default="sft.yaml", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def config_init(path, force):
    """Write a commented starter config (the embedded default) to PATH."""
    from pathlib import Path

    from .config import DEFAULT_CONFIG

    target = Path(path)
    if target.exists() and not force:
        raise SftError(f"'{target}' already exists; pass --force to overwrite it or choose another path")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(DEFAULT_CONFIG.read_text())
    except OSError as exc:
        raise SftError(f"cannot write '{target}': {exc.strerror or exc}") from None
    click.echo(f"wrote {target}; run it with: sft run {target}")


def main(argv=None, prog_name="sft"):
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        cli.main(args=args, prog_name=prog_name, standalone_mode=True)
    except SftError as exc:  # raised outside a command's invoke, or re-raised for --debug
        if "--debug" in args:
            raise
        click.echo(f"sft: error: {exc}", err=True)
        sys.exit(exc.exit_code)
