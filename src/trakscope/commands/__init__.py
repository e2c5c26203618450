"""One module per ``trakscope`` subcommand: ``HELP``, ``add_arguments(parser)``, ``run(args) -> int``."""
