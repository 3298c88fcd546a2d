"""`polypseg serve PLATFORM`, and the other commands the installed platforms plug in."""

from __future__ import annotations

import argparse

from polypseg.cli.options import add_model_options


def register(commands: argparse._SubParsersAction) -> None:
    from polypseg.plugins import load_plugins

    plugins = load_plugins()
    serve = commands.add_parser("serve", help="serve a model to an annotation tool").add_subparsers(
        dest="platform", required=True
    )
    for server in plugins.servers.values():  # labelstudio, ...
        serve_cmd = serve.add_parser(server.name, help=server.help)
        add_model_options(serve_cmd)
        server.add_arguments(serve_cmd)
        serve_cmd.set_defaults(run=server.run)
    for command in plugins.commands.values():  # video-tasks, export-video-masks, ...
        parser = commands.add_parser(command.name, help=command.help)
        command.add_arguments(parser)
        parser.set_defaults(run=command.run)
