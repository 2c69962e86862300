"""``memdistill datasets``: which datasets are found where, or missing and why."""

from __future__ import annotations

import argparse

from ._options import Command, data_options
from ._run import table


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass  # only the shared --root


def cmd_datasets(args: argparse.Namespace) -> int:
    from ..data import dataset_info, list_datasets, locate_dataset

    rows = []
    for name in list_datasets():
        st = locate_dataset(name, root=args.root)
        info = dataset_info(name)
        shape = "x".join(str(s) for s in info.image_shape)
        if st.found:
            rows.append((name, f"{info.num_classes}", shape, "found", str(st.path)))
        else:
            where = ", ".join(str(p) for p in st.searched) or "-"
            rows.append((name, f"{info.num_classes}", shape, "missing", f"{st.problem} (searched: {where})"))
    print(table(["dataset", "classes", "shape", "status", "where / why"], rows))
    return 0


COMMAND = Command("datasets", "list datasets: found where, or missing and why", add_arguments, cmd_datasets,
                  parents=lambda: [data_options(download=False)])
