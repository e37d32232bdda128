"""One module per goalkeeper command; each defines NAME, HELP, add_arguments(parser) and run(args, ctx) -> int."""
