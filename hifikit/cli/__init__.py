"""The ``hifikit`` command line: one module per subcommand noun."""
