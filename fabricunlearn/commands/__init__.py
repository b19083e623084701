"""The subcommands besides `run`: one module each, one typed function whose signature and docstring are its CLI."""
