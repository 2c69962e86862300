"""``memdistill datasets``: which datasets are found where, or missing and why, and the
image folders and array files directly under the data roots."""

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
    _print_user_datasets(args.root)
    return 0


def _print_user_datasets(root) -> None:
    """Image folders and array files found directly under the data roots."""
    from ..data import dataset_info, list_datasets, resolve_roots, user_datasets_under

    builtin = {f.split("/")[0] for name in list_datasets() for f in dataset_info(name).files}
    found = user_datasets_under(resolve_roots(root), skip=sorted(builtin))
    if not found:
        return
    rows = [(name, "found" if problem is None else "problem", problem or what) for name, problem, what in found]
    print()
    print("your own data (use the name as --dataset; see README, 'Your own data'):")
    print(table(["dataset", "status", "what / why"], rows))


COMMAND = Command("datasets", "list datasets: found where, or missing and why", add_arguments, cmd_datasets,
                  parents=lambda: [data_options(download=False, user_data=False)])
