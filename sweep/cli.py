"""`medpeft-sweep`: the installed tool's one command, with the launchers as subcommands.

    medpeft-sweep launch [--config SPEC] ...       # python -m sweep.launch
    medpeft-sweep report --name NAME ...           # python -m sweep.report
    medpeft-sweep inspect methods ...              # python -m sweep.inspect
    medpeft-sweep calibrate --config SPEC ...      # python -m sweep.calibrate

Each subcommand takes exactly the options of its module (`medpeft-sweep launch --help`); the `python -m sweep.*`
forms keep working. A `--config` that names no file but a spec shipped with the tool (`paper.yaml`,
`search_spaces/paper.yaml`) runs the shipped one, so an installed tool reaches its specs from any folder.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

# subcommand -> (module whose main(argv) runs it, one line of help)
COMMANDS = {
    "launch": ("sweep.launch", "plan a sweep and run it (or --dry-run, --resume)"),
    "report": ("sweep.report.cli", "the report of a sweep, read from MLflow"),
    "inspect": ("sweep.inspect", "what the registries hold: methods, parameter counts, a dataset"),
    "calibrate": ("sweep.calibrate", "measure a sweep's cost on this machine before spending it"),
}
TAKES_A_SPEC = ("launch", "calibrate")


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    return ("usage: medpeft-sweep {" + ",".join(COMMANDS) + "} [options]\n\n" + __doc__.split("\n\n")[0] + "\n\n"
            + "commands:\n" + "\n".join(lines) + "\n\n`medpeft-sweep COMMAND --help` lists a command's options.\n")


def shipped_spec(value: str) -> str:
    """`value` itself when it is a file; otherwise the shipped spec it names, if there is one (the launcher's own
    error names the missing file when there is not)."""
    from sweep.plan.spec import SPACES_DIR

    if Path(value).is_file():
        return value
    name = Path(value)
    if name.parent in (Path("."), Path("search_spaces")) and (SPACES_DIR / name.name).is_file():
        return str(SPACES_DIR / name.name)
    return value


def with_shipped_specs(argv: list[str]) -> list[str]:
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--config" and i + 1 < len(out):
            out[i + 1] = shipped_spec(out[i + 1])
        elif arg.startswith("--config="):
            out[i] = "--config=" + shipped_spec(arg.removeprefix("--config="))
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), end="")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; the commands are {', '.join(COMMANDS)} "
              "(medpeft-sweep --help)", file=sys.stderr)
        return 2
    if command in TAKES_A_SPEC:
        rest = with_shipped_specs(rest)
    module = importlib.import_module(COMMANDS[command][0])
    return module.main(rest)


if __name__ == "__main__":
    sys.exit(main())
