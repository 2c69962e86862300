"""The ``memdistill`` commands, one module each: the command's arguments next to its handler.

Each module declares ``COMMAND`` (a :class:`~._options.Command`); ``memdistill.cli`` lists
them in the order ``memdistill --help`` shows. Options several commands share are declared
once, as argparse parent parsers, in :mod:`._options`; helpers the handlers share (joining
torchrun, tables, the run record's header) live in :mod:`._run`.
"""
