"""The subcommands of `nnstab`: one module each, exposing add_arguments(parser) and main(args) -> int."""
