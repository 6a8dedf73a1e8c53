"""The `sft` command line. Importing this module must not import torch, torchvision or timm."""

from __future__ import annotations

import json
import os
import sys

import click

from sftcore._rundir import layout as rundir

from ._plugins.kinds import ALIASES, KINDS
from .errors import SftError

WILDCARDS = "*?["  # a PATTERN holding one of these is a shell wildcard, otherwise an exact name


def _kinds_text(last: str = "or") -> str:
    return f"{', '.join(KINDS[:-1])} {last} {KINDS[-1]}"


class SftGroup(click.Group):
    """Turns user errors into one line and exit code 2; `--debug` shows tracebacks.

    Plugin commands (the ``register_commands`` hook) are added on first need: when a command name is
    not a built-in one, or when the commands are listed (``sft --help``, completion). A built-in
    command never loads them, so ``sft run`` or ``sft list`` cost no more than before.
    """

    _plugin_commands_loaded = False
    _plugin_commands_for: frozenset = frozenset()  # the plugins registered when the commands were loaded
    _builtin_commands: frozenset = frozenset()

    def _load_plugin_commands(self, ctx) -> None:
        """``_plugins.add_commands(self)``: once per process, and again only if plugins were registered or
        unregistered since (``sftcore.testing.registered`` in a test)."""
        if self._plugin_commands_loaded:
            from sftcore._plugins import manager as _plugins

            if self._plugin_commands_for == frozenset(name for name, _ in _plugins.pm.list_name_plugin()):
                return
            self.reset_plugin_commands()
        if not self._builtin_commands:
            self._builtin_commands = frozenset(self.commands)
        self._plugin_commands_loaded = True
        from sftcore._plugins import manager as _plugins

        try:
            if ctx is not None and ctx.resilient_parsing:  # shell completion: no warnings in the way of TAB
                import contextlib
                import io

                with contextlib.redirect_stderr(io.StringIO()):
                    try:
                        _plugins.add_commands(self)
                    except SftError:
                        pass
            else:
                _plugins.add_commands(self)
        finally:
            self._plugin_commands_for = frozenset(name for name, _ in _plugins.pm.list_name_plugin())

    def reset_plugin_commands(self) -> None:
        """Forget the plugin commands, so that the next lookup asks the plugins again."""
        if self._builtin_commands:
            for name in [n for n in self.commands if n not in self._builtin_commands]:
                del self.commands[name]
        self._plugin_commands_loaded = False

    def get_command(self, ctx, cmd_name):
        command = super().get_command(ctx, cmd_name)
        if command is None:
            self._load_plugin_commands(ctx)
            command = super().get_command(ctx, cmd_name)
        return command

    def list_commands(self, ctx):
        self._load_plugin_commands(ctx)
        return super().list_commands(ctx)

    def invoke(self, ctx):
        from sftcore._runtime.held_warnings import held

        try:
            with held(show_on_error=lambda: bool(ctx.obj and ctx.obj.get("debug"))):
                return super().invoke(ctx)
        except SftError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"sft: {exc.label}: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo("sft: interrupted", err=True)
            ctx.exit(130)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except BrokenPipeError:  # `sft ... | head`: the reader is gone; end quietly, as other tools do
            _quiet_stdout()
            ctx.exit(141)
        except Exception as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(
                f"sft: internal error: {type(exc).__name__}: {exc} "
                "(this is a bug; rerun with `sft --debug ...` for the traceback)",
                err=True,
            )
            ctx.exit(1)


def _echo_result(text: str) -> None:
    """A command's result on standard output, or one line saying why it cannot go there (closed, full)."""
    if sys.stdout is None:
        raise SftError("standard output is closed, so the result has nowhere to go; pass --out FILE")
    try:
        click.echo(text, nl=False)
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise SftError(f"cannot write the result to standard output: {exc.strerror or exc}; pass --out FILE") from None


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so that flushing it at exit raises no second BrokenPipeError."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass


CLI_HELP = f"""sftcore: pretrain a backbone on a source task, finetune it on a target task with few
    labels, and report whether that beat training from scratch.

    Start with `sft run`: the embedded shapes demo, which runs on a CPU and downloads nothing.
    Components come from plugins: {_kinds_text("and")}. See `sft list`, `sft list KIND NAME` for one
    component's documentation and options, and `sft plugins`. `sft plugin new NAME` writes a plugin
    package to start from; plugins may add commands too.

    Shell completion: add eval "$(_SFT_COMPLETE=bash_source sft)" to ~/.bashrc, or
    eval "$(_SFT_COMPLETE=zsh_source sft)" to ~/.zshrc; in fish, run
    _SFT_COMPLETE=fish_source sft | source.
    """


@click.group(cls=SftGroup, help=CLI_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.version_option(package_name="sftcore", prog_name="sft")
@click.pass_context
def cli(ctx, debug):
    ctx.obj = {"debug": debug}


def _complete_names(kind: str | None, incomplete: str) -> list[str]:
    """Component names for shell completion. Listing imports no torch; plugin warnings stay quiet."""
    import contextlib
    import io

    from ._plugins.manager import get_registry

    try:
        with contextlib.redirect_stderr(io.StringIO()):
            listing = get_registry().list(kind)
    except SftError:
        return []
    return sorted({c.name for items in listing.values() for c in items if c.name.startswith(incomplete)})


def _complete_kind(ctx, param, incomplete):
    """`sft list <TAB>`: the kinds; a word that starts no kind is a pattern, so complete names."""
    word = incomplete.lower()
    kinds = [k for k in KINDS if k.startswith(word)] or sorted(a for a in ALIASES if a.startswith(word))
    return kinds or _complete_names(None, incomplete)


def _complete_pattern(ctx, param, incomplete):
    """`sft list heads <TAB>`: the names of that kind."""
    return _complete_names(ALIASES.get((ctx.params.get("kind") or "").lower()), incomplete)


def _jsonable(value):
    """``value`` if JSON can hold it as it is, else its repr (a default may be any Python object)."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return repr(value)
    return value


def _show_default(value) -> str:
    """A default as a config would write it: null, true, 0.01, [0.9, 0.999], a bare string."""
    value = _jsonable(value)
    if isinstance(value, str):
        return value if value.strip() == value and value else json.dumps(value)
    return json.dumps(value)


def _component_details(component, as_json: bool) -> None:
    """`sft list KIND NAME`: the component's docstring and options (imports its module, so maybe torch)."""
    options = component.options()
    _, open_ended = component.option_names()
    doc = component.doc()
    if as_json:
        click.echo(
            json.dumps(
                {
                    **component.as_dict(),
                    "doc": doc,
                    "options": [{k: (_jsonable(v) if k == "default" else v) for k, v in o.items()} for o in options],
                },
                indent=2,
            )
        )
        return
    click.echo(f"{component.name} ({component.kind}, {component.plugin})")
    click.echo("")
    click.echo(doc)
    click.echo("")
    if not options:
        click.echo("options: (none)" + ("; it takes any keyword (**kwargs)" if open_ended else ""))
        return
    rows = [("option", "default", "type")] + [
        (o["name"], _show_default(o["default"]) if "default" in o else "required", o.get("type", "")) for o in options
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    click.echo("options:")
    for row in rows:
        click.echo(f"  {row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]}".rstrip())
    if open_ended:
        click.echo("  (and any other keyword: it takes **kwargs)")


LIST_HELP = f"""List the components of each kind, or show one.

    KIND is {_kinds_text()} (the singular works too); without it, every kind is listed. PATTERN is
    a shell wildcard over names: `sft list heads 'lp*'`. A pattern alone searches every kind:
    `sft list 'l2*'`. An exact name after KIND shows that component: its documentation and its
    options with their defaults and types, e.g. `sft list heads lp_ft`.
    """


@cli.command("list", help=LIST_HELP)
@click.argument("kind", required=False, shell_complete=_complete_kind)
@click.argument("pattern", required=False, shell_complete=_complete_pattern)
@click.option("--json", "as_json", is_flag=True, help="Print JSON keyed by kind (one component: its details).")
def list_cmd(kind, pattern, as_json):
    from ._plugins.manager import get_registry
    from ._plugins.registry import suggest

    if kind is not None and kind.lower() not in ALIASES:
        if pattern is None:  # `sft list 'l2*'`: a pattern over every kind
            kind, pattern = None, kind
        else:
            raise SftError(f"unknown kind '{kind}'{suggest(kind.lower(), ALIASES)}; use {_kinds_text()}")
    kind = ALIASES[kind.lower()] if kind else None
    registry = get_registry()
    if kind is not None and pattern is not None and not any(c in pattern for c in WILDCARDS):
        _component_details(registry.get(kind, pattern), as_json)
        return
    listing = registry.list(kind, pattern)
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
    """List the loaded plugins and what they register.

    For each plugin: its distribution and version, the hooks it implements, its components,
    and the error if it failed to load.
    """
    from ._plugins.manager import plugin_infos

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


@cli.group("plugin")
def plugin_group():
    """Start a plugin of your own (new)."""


@plugin_group.command("new")
@click.argument("name")
@click.option(
    "--dir",
    "directory",
    default=".",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder to create the package folder NAME in.",
)
@click.option("--force", is_flag=True, help="Write into an existing, non-empty DIR/NAME (overwriting its files).")
def plugin_new(name, directory, force):
    """Write a plugin package skeleton to DIR/NAME, with its tests.

    NAME is the distribution name (e.g. sft-my-thing; the Python package is sft_my_thing). The
    package registers one example regularizer and one example callback through the sftcore entry
    point, and its tests use sftcore.testing. Install it with `pip install -e DIR/NAME`.
    """
    from ._tools.scaffold import write_plugin

    result = write_plugin(name, directory, force=force)
    click.echo(f"wrote the plugin package {result.package} ({result.name}) to {result.root}:")
    for path in result.files:
        click.echo(f"  {path}")
    click.echo("next steps:")
    for step in result.next_steps:
        click.echo(f"  {step}")


@cli.command("run")
@click.argument("config", required=False, type=click.Path(dir_okay=False))
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY.PATH=VALUE",
    help="Override a config value (YAML syntax), e.g. --set finetune.epochs=5. Repeatable.",
)
@click.option("--out", metavar="DIR", help="Run directory (default runs/<name>-<timestamp>).")
@click.option(
    "--resume", metavar="RUN_DIR", help="Continue an interrupted run from its checkpoints (uses the run's own config)."
)
@click.option(
    "--allow-config-change",
    is_flag=True,
    help="With --resume: continue although config.yaml was edited since the run started (recorded).",
)
@click.option("--force", is_flag=True, help="Replace an earlier run (one sftcore wrote) in the --out directory.")
@click.option(
    "--nproc",
    type=click.IntRange(min=1),
    metavar="N",
    help="Train data-parallel in N processes on this machine (runs torchrun: one process per GPU, "
    "or CPU processes with gloo).",
)
@click.option(
    "--seeds",
    metavar="N",  # checked with the config, so a bad value is one line
    help="Repeat finetune and baseline for N seeds (seed, seed+1, ...); same as --set seeds=N.",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress bars (default: when stderr is a terminal); one line per epoch goes to stderr either way.",
)
@click.option(
    "--no-cache",
    is_flag=True,
    help="Pretrain even if the pretrain cache holds this pretraining; "
    "same as --set pretrain_cache=false (docs/cache.md).",
)
def run_cmd(config, overrides, out, resume, allow_config_change, force, nproc, seeds, progress, no_cache):
    """Run pretrain -> finetune -> baseline; say if transfer helped.

    CONFIG is a YAML file; without it, the embedded shapes demo runs. Prints a results table and
    the verdict, and writes the run directory (config.yaml, metrics.jsonl, summary.json,
    checkpoints/). Ctrl-C or SIGTERM saves the progress and prints the `--resume` command.
    """
    from pathlib import Path

    from ._run.runner import run

    for option, value in (("--out", out), ("--resume", resume)):
        if value is not None and Path(value).exists() and not Path(value).is_dir():
            raise SftError(f"{option} '{value}' is a file; pass a directory path")
    if seeds is not None:
        overrides = (*overrides, f"seeds={seeds}")
    if no_cache:
        overrides = (*overrides, "pretrain_cache=false")
    if nproc is not None and nproc > 1:
        from ._run.launch import launch

        sys.exit(launch(nproc, config, overrides, out, resume, force, progress, allow_config_change))
    run(
        config,
        out=out,
        overrides=overrides,
        progress=progress,
        echo=click.echo,
        resume=resume,
        force=force,
        allow_config_change=allow_config_change,
        epoch_echo=lambda line: click.echo(line, err=True),
    )


def _lr_find_number(option: str, value: str, kind=float):
    """An lr-find option's number, or one line (click's own error would print a usage block)."""
    try:
        return kind(value)
    except ValueError:
        raise SftError(f"{option} must be {'an integer' if kind is int else 'a number'}, got '{value}'") from None


@cli.command("lr-find")
@click.argument("config", required=False, type=click.Path(dir_okay=False))
@click.option(
    "--stage", default="finetune", show_default=True, help="The stage to test: pretrain, finetune or baseline."
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY.PATH=VALUE",
    help="Override a config value (YAML syntax), as for `sft run`. Repeatable.",
)
@click.option("--start-lr", default="1e-7", show_default=True, metavar="LR", help="The first step's lr.")
@click.option("--end-lr", default="10", show_default=True, metavar="LR", help="The last step's lr.")
@click.option("--steps", default="100", show_default=True, metavar="N", help="Optimizer steps (at least 5).")
@click.option(
    "--epoch",
    default="0",
    show_default=True,
    metavar="N",
    help="Test the head strategy's freeze state of this epoch (lp_ft: 0 is the linear probe).",
)
@click.option("--out", metavar="FILE", help="The loss-vs-lr PNG (default lr-find-<stage>.png here).")
@click.option("--force", is_flag=True, help="Overwrite an existing --out FILE.")
@click.option("--json", "as_json", is_flag=True, help="Print the numbers as JSON: lrs, losses, suggestion.")
def lr_find_cmd(config, stage, overrides, start_lr, end_lr, steps, epoch, out, force, as_json):
    """Find a learning rate: the exponential lr range test on a stage.

    Trains a throw-away copy of the stage's real setup (model, few-label data, head strategy, regularizers,
    parameter groups, augmentations, optimizer) for --steps steps with the lr growing geometrically from
    --start-lr to --end-lr, stops when the loss diverges, prints fastai's "valley" suggestion and writes
    the loss-vs-lr PNG. For finetune, the config's pretrain stage is trained first. No run directory is
    written. See docs/lr-find.md.
    """
    from ._tools.lr_find import check_out, find, plot, summary_lines

    numbers = dict(
        start_lr=_lr_find_number("--start-lr", start_lr),
        end_lr=_lr_find_number("--end-lr", end_lr),
        steps=_lr_find_number("--steps", steps, int),
        epoch=_lr_find_number("--epoch", epoch, int),
    )
    target = check_out(out, stage, force)
    say = (lambda line: click.echo(line, err=True)) if as_json else click.echo
    finding = find(
        config,
        stage=stage,
        overrides=overrides,
        echo=say,
        epoch_echo=lambda line: click.echo(line, err=True),
        **numbers,
    )
    skipped = plot(finding, target) if finding.lrs else "no step was taken"
    if as_json:
        click.echo(
            json.dumps(
                {**finding.as_dict(), "plot": None if skipped else str(target), "plot_skipped": skipped}, indent=2
            )
        )
        return
    for line in summary_lines(finding, config):
        click.echo(line)
    click.echo(f"plot: {target}" if skipped is None else f"plot: skipped, {skipped}")


@cli.command("rank")
@click.argument("config", required=False, type=click.Path(dir_okay=False))
@click.option(
    "--candidate",
    "candidates",
    multiple=True,
    metavar="CANDIDATE",
    help="A run directory (its pretrained backbone), a weights file (the config's backbone with those weights), "
    "or a backbone entry in YAML flow syntax, e.g. '{name: timm, model: resnet18, pretrained: true}'. Repeatable.",
)
@click.option("--by", default="logme", show_default=True, metavar="SCORE", help="The score the table is ranked by.")
@click.option("--scores", default=None, metavar="A,B", help="The scores to compute (default: every registered one).")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY.PATH=VALUE",
    help="Override a config value (YAML syntax), as for `sft run`. Repeatable.",
)
@click.option(
    "--seed", default=None, metavar="N", help="Draw the few-label subset with seed N (default: the run's first)."
)
@click.option("--out", metavar="DIR", help="Where rank.json and rank.csv go (default runs/<name>-rank-<timestamp>).")
@click.option("--force", is_flag=True, help="Overwrite rank.json and rank.csv in --out.")
@click.option(
    "--sweep",
    "then_sweep",
    is_flag=True,
    help="Then finetune the --top best candidates with `sft sweep` over the config's seeds (OUT/sweep).",
)
@click.option("--top", default=None, metavar="K", help="How many of the best candidates --sweep finetunes (default 3).")
def rank_cmd(config, candidates, by, scores, overrides, seed, out, force, then_sweep, top):
    """Rank candidate backbones on the target's few labelled images, before training.

    Each candidate's features of the finetune stage's training split (the images `sft run` finetunes on
    for its first seed, prepared as finetuning would see them) are scored by transferability scores
    (LogME by default; LEEP and NCE need the candidate's own source head, else n/a). Prints one table,
    best first, and writes rank.json and rank.csv. A bad candidate is one error line and does not stop
    the others. See docs/ranking.md.
    """
    from ._rank.rank import rank, table

    number = None if seed is None else _lr_find_number("--seed", seed, int)
    if top is not None and not then_sweep:
        raise SftError("--top K says how many candidates --sweep finetunes; add --sweep, or drop --top")
    k = (3 if top is None else _lr_find_number("--top", top, int)) if then_sweep else None
    result = rank(
        config,
        candidates,
        overrides=overrides,
        scores=scores,
        by=by,
        out=out,
        force=force,
        seed=number,
        echo=lambda line: click.echo(line, err=True),
        top=k,
    )
    click.echo(table(result), nl=False)
    click.echo(f"wrote {result['out']}/rank.json and rank.csv", err=True)
    if then_sweep:
        from ._sweep.run import Options, sweep

        click.echo(f"finetuning the top {k} with sft sweep {result['sweep_file']}", err=True)
        sweep(result["sweep_file"], Options(out=os.path.join(result["out"], "sweep")), echo=click.echo)


@cli.group("config")
def config_group():
    """Write a starter config (init) or print one resolved (show)."""


@config_group.command("show")
@click.argument("config", required=False, type=click.Path(dir_okay=False))
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY.PATH=VALUE",
    help="Override a config value (YAML syntax), e.g. --set finetune.epochs=5. Repeatable.",
)
def config_show(config, overrides):
    """Print a config with every default filled in, and check it.

    Every key, component name and option is checked against the registry. Without CONFIG, the
    embedded shapes demo is shown. A mistake prints one line and exits with code 2.
    """
    from sftcore._config import resolve as cfgmod

    from ._plugins.manager import get_registry

    click.echo(cfgmod.dump(cfgmod.resolve(cfgmod.load(config, overrides), get_registry())), nl=False)


@config_group.command("init")
@click.argument("path", default="sft.yaml", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def config_init(path, force):
    """Write the commented starter config to PATH (default sft.yaml).

    It is the embedded shapes demo that `sft run` runs with no config: edit it, then
    `sft run PATH`.
    """

    from sftcore._fileio import storage

    from ._config.resolve import DEFAULT_CONFIG

    target = storage.output_file(path, force, option=None, make_folder=True)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SftError(f"cannot write '{target}': {exc.strerror or exc}") from None
    storage.write_text(target, DEFAULT_CONFIG.read_text())
    click.echo(f"wrote {target}; run it with: sft run {target}")


@cli.command("plot")
@click.argument("run_dir", metavar="RUN_OR_SWEEP_DIR")
@click.option("--out", metavar="DIR", help="Folder for the figures (default RUN_DIR/plots).")
def plot_cmd(run_dir, out):
    """Draw a run's training curves and confusion matrix, or a sweep's gain per cell.

    Writes <stage>-curves.png (loss and accuracy per epoch, train and validation) for every stage,
    finetune-confusion.png with the counts in finetune-confusion.csv, and per-class precision, recall
    and F1 in finetune-per-class.csv. A sweep directory (it holds sweep.json) gets sweep-gain.png: the
    transfer gain per cell with its 95% interval over seeds, each seed a dot, the numbers in
    sweep-gain.csv. Needs matplotlib: pip install 'sftcore[plot]'.
    """
    from ._analysis.plots import plot

    for path in plot(run_dir, out):
        click.echo(str(path))


@cli.command("predict")
@click.argument("run_dir", metavar="RUN_OR_MODEL_FILE")
@click.argument("images", nargs=-1, required=True)
@click.option("--top-k", default=5, show_default=True, help="How many classes to give per image.")
@click.option(
    "--stage",
    default=None,
    help="A run directory's stage: finetune (default; a run without it: baseline, then pretrain), "
    "pretrain, baseline, or e.g. finetune-seed1 for another seed's model.",
)
@click.option(
    "--format",
    "fmt",
    metavar="text|json|csv",
    default=None,
    help="text (default): each image, then its classes; json: a list of {image, top: [{class, "
    "probability}]}; csv: columns image,rank,class,probability, one row per image per rank.",
)
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.option("--out", metavar="FILE", default=None, help="Write to FILE instead of stdout (refused if it exists).")
@click.option("--force", is_flag=True, help="Overwrite an existing --out FILE.")
@click.option(
    "--device",
    type=click.Choice(["cpu", "cuda", "auto"]),
    default="cpu",
    show_default=True,
    help="Where to run the model; auto: cuda when torch sees one, else cpu.",
)
def predict_cmd(run_dir, images, top_k, stage, fmt, as_json, out, force, device):
    """Classify images with a run's trained model (sftcore.load).

    RUN_OR_MODEL_FILE is a run directory or a model file (checkpoints/<stage>.pt, copied anywhere).
    IMAGES are image files, folders (every .jpg, .jpeg, .png, .webp and .gif file in them and their
    subfolders, recursively, sorted by path) and glob patterns that sftcore expands, quoted so the shell
    leaves them alone ('photos/*.jpg', 'photos/**/*.png'). Images are prepared as the run prepared its
    test images and classified in batches on --device. Only the backbone's plugin is needed.
    """

    if top_k < 1:
        raise SftError(f"--top-k must be 1 or more, got {top_k}")
    if as_json and fmt not in (None, "json"):
        raise SftError(f"--json is --format json; drop one of --json and --format {fmt}")
    if fmt not in (None, "text", "json", "csv"):  # checked here, not by click: one line, exit 2
        raise SftError(f"--format must be text, json or csv, not '{fmt}'")
    fmt = "json" if as_json else (fmt or "text")
    from sftcore._fileio import storage

    target = storage.output_file(out, force) if out else None

    from ._inference.load import load
    from ._inference.predict import expand_images, render

    files = expand_images(images)  # before the model: a typo costs no loading
    model = load(run_dir, stage, device)
    text = render(model.predict(files, top_k), fmt)
    if target is None:
        _echo_result(text)
        return
    storage.write_text(target, text)  # atomic: a failed write leaves no half file
    click.echo(f"{len(files)} image(s) classified: {target}", err=True)


@cli.command("export")
@click.argument("run_dir")
@click.option(
    "--format",
    "fmt",
    metavar="torchscript|onnx|safetensors",
    default=None,
    help="torchscript: runs under plain torch.jit.load; onnx: checked with onnxruntime; safetensors: "
    "weights with a JSON sidecar (and a timm state dict for a timm backbone).",
)
@click.option(
    "--stage",
    default=None,
    help="Whose model: finetune (default; a run without it: baseline, then "
    "pretrain), pretrain, baseline, or e.g. finetune-seed1.",
)
@click.option("--out", metavar="FILE", default=None, help="Where to write (default: RUN_DIR/export/<stage>.<ext>).")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
def export_cmd(run_dir, fmt, stage, out, force):
    """Export a run's trained model to use it without sftcore.

    The exported model takes normalised float images of the run's input shape and returns logits;
    the classes, input shape and normalisation go into a JSON sidecar (docs/use-your-model.md).
    """
    from ._inference.export import FORMATS, export

    if fmt is None:  # checked here, not by click: one line, exit 2
        raise SftError(f"--format is required: one of {', '.join(FORMATS)}")
    for path in export(run_dir, fmt, stage=stage, out=out, force=force):
        click.echo(str(path))


@cli.command("compare")
@click.argument("run_dirs", nargs=-1, required=True)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print JSON: differing_keys, one entry per run, and groups (the table's rows and numbers).",
)
@click.option(
    "--reference",
    multiple=True,
    metavar="KEY=VALUE",
    help="The row the others are paired against, by seed, as --set takes keys, e.g. "
    "'finetune.regularizers=[]'; several KEY=VALUE (space-separated or repeated) pick one row.",
)
@click.option("--all", "show_all", is_flag=True, help="Also list the failed and unfinished runs (hidden by default).")
def compare_cmd(run_dirs, as_json, reference, show_all):
    """Compare runs grouped by the config keys they vary, over seeds.

    RUN_DIRS are run directories or sweep directories (their cells). One row per combination of the
    keys (dotted, as --set takes them) in which the runs differ; runs differing only by name or seed
    pool their seeds. Each row: finetune and baseline test accuracy and the transfer gain as mean ± sd
    over seeds, the gain's 95% interval, and with --reference the finetune difference to that row.
    One sweep directory alone is grouped by its grid keys, against its reference.
    """
    from ._analysis.aggregate import aggregate, expand_sweeps, sweep_of, sweep_settings, table
    from ._analysis.compare import compare

    paths, sweep = expand_sweeps(run_dirs), sweep_settings(run_dirs)
    groups = aggregate(paths, reference=list(reference) or sweep["reference"], varied=sweep["varied"])
    if not as_json:
        click.echo(table(groups, show_failed=show_all))
        return
    result = compare([p for p in paths if sweep_of(p) is None or rundir.is_run(p)])
    click.echo(json.dumps({**result, "groups": groups}, indent=2))


def _number(option: str, value, kind=int, low=0):
    """An option's number, or one line (click's own type errors print a usage block)."""
    if value is None:
        return None
    try:
        number = kind(value)
    except ValueError:
        number = None
    if number is None or number < low:
        raise SftError(f"{option} must be a number of {low} or more, not '{value}'")
    return number


@cli.command("sweep")
@click.argument("sweep_file", required=False, type=click.Path(dir_okay=False))
@click.option(
    "--out",
    metavar="DIR",
    help="Sweep directory (default runs/sweeps/<name>-<timestamp>); the "
    "directory of an earlier run of the same sweep continues it.",
)
@click.option(
    "--resume",
    metavar="SWEEP_DIR",
    help="Continue a sweep with its own sweep.yaml: finished cells are "
    "skipped, interrupted ones continue from their checkpoints.",
)
@click.option(
    "--retry-failed", is_flag=True, help="With a sweep directory: run the failed cells again, from the start."
)
@click.option(
    "--jobs",
    metavar="N",
    default="1",
    show_default=True,
    help="Cells at a time (local); each gets cores/N torch threads.",
)
@click.option(
    "--executor",
    metavar="local|ray",
    default="local",
    show_default=True,
    help="local: subprocesses on this machine; ray: one Ray task per cell (pip install 'sftcore[ray]').",
)
@click.option("--address", metavar="HOST:PORT", help="Ray: the cluster to use (default: start a local instance).")
@click.option("--gpus-per-cell", metavar="N", help="Ray: GPUs each cell's task asks for (default 0).")
@click.option("--cpus-per-cell", metavar="N", help="CPUs (torch threads) per cell (default cores/--jobs).")
@click.option(
    "--reference",
    metavar="KEY=VALUE",
    help="The cell(s) the others are compared with, paired by seed, e.g. 'finetune.regularizers=[]'.",
)
@click.option("--dry-run", is_flag=True, help="Print the cells and their overrides; run and write nothing.")
def sweep_cmd(
    sweep_file, out, resume, retry_failed, jobs, executor, address, gpus_per_cell, cpus_per_cell, reference, dry_run
):
    """Run a grid of config overrides x seeds: one run directory per cell (docs/sweeps.md).

    SWEEP_FILE has base: (a config, inline or a path), grid: (--set keys to lists of values) and
    optionally seeds:, name: and reference:. Every cell's config is checked before any cell runs.
    Writes sweep.json, sweep.csv and cells/<cell>/; prints one line per cell and the results table.
    Ctrl-C or SIGTERM stops every cell cleanly; `sft sweep --resume SWEEP_DIR` continues.
    """
    from ._sweep.run import Options, sweep

    opts = Options(
        out=out,
        resume=resume,
        jobs=_number("--jobs", jobs, low=1),
        executor=executor,
        address=address,
        gpus_per_cell=_number("--gpus-per-cell", gpus_per_cell, float) or 0,
        cpus_per_cell=_number("--cpus-per-cell", cpus_per_cell, low=1),
        retry_failed=retry_failed,
        dry_run=dry_run,
        reference=reference,
    )
    sweep(sweep_file, opts, echo=click.echo)


def main(argv=None, prog_name="sft"):
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        cli.main(args=args, prog_name=prog_name, standalone_mode=True)
    except SftError as exc:  # raised outside a command's invoke, or re-raised for --debug
        if "--debug" in args:
            raise
        click.echo(f"sft: {exc.label}: {exc}", err=True)
        sys.exit(exc.exit_code)
