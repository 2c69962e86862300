"""Dataset specifications, the dataset registry and the functions built on it.

A :class:`DatasetSpec` declares everything about one dataset: its files per split, their
checksums, where they may sit under a data root, its mirrors, and how to parse verified
bytes into an :class:`~memdistill.data.ImageDataset`. :func:`load_dataset`,
:func:`locate_dataset` and :func:`dataset_info` look specs up by name in :data:`DATASETS`.
"""

from __future__ import annotations

import abc
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from .._registry import Registry
from ..errors import ConfigError, DataNotFoundError, IntegrityError, UnknownNameError
from ._base import ImageDataset
from ._custom import is_user_dataset, load_user_dataset, locate_user_dataset
from ._download import DownloadFailed, check_mirrors, fetch_verified
from ._integrity import FileChecksum, as_checksum, read_verified, verify_file
from ._root import ENV_VAR, find_stray, resolve_roots

__all__ = [
    "DATASETS",
    "SPLITS",
    "DatasetInfo",
    "DatasetStatus",
    "DatasetSpec",
    "FileSetSpec",
    "LoadOptions",
    "Located",
    "load_dataset",
    "locate_dataset",
    "dataset_info",
    "list_datasets",
]

logger = logging.getLogger(__name__)

SPLITS = ("train", "test")
DATASETS: Registry["DatasetSpec"] = Registry("dataset")


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset, available without its files.

    Attributes:
        name: registry name.
        num_classes: number of classes.
        image_shape: ``(C, H, W)``.
        classes: class names (empty for Tiny ImageNet, whose names come from its files).
        mean, std: per-channel statistics in ``[0, 1]`` pixel units.
        files: paths relative to a data root in the canonical layout.
        title: human-readable name.
        mirrors: default download mirrors (base URLs).
    """

    name: str
    num_classes: int
    image_shape: tuple[int, int, int]
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    files: tuple[str, ...]
    title: str = ""
    mirrors: tuple[str, ...] = ()


@dataclass(frozen=True)
class DatasetStatus:
    """Whether a dataset's files are present and verified, and where.

    Attributes:
        name: registry name.
        found: all files of the requested splits are present and pass verification.
        path: the folder holding them (or a partial / failing copy), else ``None``.
        searched: every folder looked into, in order.
        problem: one line saying what is missing or which check failed; ``None`` if found.
    """

    name: str
    found: bool
    path: Path | None
    searched: list[Path]
    problem: str | None


@dataclass
class LoadOptions:
    """Options of one load, validated against the spec."""

    checksums: dict[str, FileChecksum]
    mirrors: tuple[str, ...]
    retries: int = 3
    timeout: float = 60.0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Located:
    """Result of searching the roots for a dataset's files."""

    folder: Path | None
    paths: dict[str, Path]
    searched: list[Path]
    missing: list[str]

    @property
    def complete(self) -> bool:
        return self.folder is not None and not self.missing


_COMMON_OPTIONS = {
    "checksums": "mapping file name -> md5 / sha256 / FileChecksum, replacing the declared "
    "checksum of those files (for test fixtures; the official table is the default)",
    "mirrors": "list of base URLs to download from, tried in order",
    "retries": "tries per mirror for transient network errors (default 3)",
    "timeout": "seconds before a stalled download is abandoned (default 60)",
}


class DatasetSpec(abc.ABC):
    """Declaration of one dataset; subclasses implement locating, reading, downloading.

    Class attributes to set: ``name``, ``title``, ``num_classes``, ``image_shape``,
    ``classes``, ``mean``, ``std``, ``mirrors``, ``option_defaults`` (dataset-specific
    options and their defaults), ``canonical_folder`` (where files go under a root).
    """

    name: str
    title: str
    num_classes: int
    image_shape: tuple[int, int, int]
    classes: tuple[str, ...] = ()
    mean: tuple[float, ...]
    std: tuple[float, ...]
    mirrors: tuple[str, ...] = ()
    option_defaults: Mapping[str, Any] = {}
    option_help: Mapping[str, str] = {}  # one line per key of option_defaults
    canonical_folder: str = ""

    # ----------------------------------------------------------- declarations
    @abc.abstractmethod
    def checksum_table(self) -> dict[str, FileChecksum]:
        """Declared checksums, keyed by the names ``checksums=`` overrides use."""

    @abc.abstractmethod
    def relative_files(self) -> tuple[str, ...]:
        """Files of the canonical layout, relative to a data root."""

    def info(self) -> DatasetInfo:
        return DatasetInfo(
            name=self.name,
            num_classes=self.num_classes,
            image_shape=self.image_shape,
            classes=tuple(self.classes),
            mean=tuple(self.mean),
            std=tuple(self.std),
            files=self.relative_files(),
            title=self.title,
            mirrors=tuple(self.mirrors),
        )

    # ----------------------------------------------------------------- options
    def checksum_key(self, key: str) -> str:
        """Map a user-given file name onto a key of :meth:`checksum_table`."""
        return key

    def validate_option(self, name: str, value: Any) -> Any:
        """Check a dataset-specific option; return the value to use."""
        return value

    def options(self, options: Mapping[str, Any]) -> LoadOptions:
        helps = {**_COMMON_OPTIONS, **self.option_help}
        unknown = sorted(set(options) - set(helps))
        if unknown:
            raise ConfigError(
                f"unknown option(s) {', '.join(map(repr, unknown))} for dataset "
                f"{self.name!r}; valid options: {', '.join(helps)}\n"
                + "\n".join(f"  {k}: {v}" for k, v in helps.items())
            )
        table = self.checksum_table()
        overrides = options.get("checksums") or {}
        if not isinstance(overrides, Mapping):
            raise ConfigError(f"checksums must be a mapping of file name to checksum, got {overrides!r}")
        for key, value in overrides.items():
            canonical = self.checksum_key(str(key))
            if canonical not in table:
                raise ConfigError(
                    f"checksums: {self.title} has no file {key!r}; valid names: "
                    f"{', '.join(sorted(table))}"
                )
            table[canonical] = as_checksum(value, file=str(key))
        mirrors = check_mirrors(options["mirrors"]) if "mirrors" in options else tuple(self.mirrors)
        retries = options.get("retries", 3)
        if not isinstance(retries, int) or retries < 1:
            raise ConfigError(f"retries must be an integer >= 1, got {retries!r}")
        timeout = options.get("timeout", 60.0)
        if not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ConfigError(f"timeout must be a positive number of seconds, got {timeout!r}")
        extra = {}
        for key, default in self.option_defaults.items():
            extra[key] = self.validate_option(key, options[key]) if key in options else default
        return LoadOptions(table, mirrors, retries, float(timeout), extra)

    # ------------------------------------------------------------------ access
    @abc.abstractmethod
    def locate(self, roots: Sequence[Path], splits: Sequence[str], opts: LoadOptions) -> Located:
        """Find a folder holding every file of ``splits`` (no verification yet)."""

    @abc.abstractmethod
    def verify(self, located: Located, splits: Sequence[str], opts: LoadOptions) -> None:
        """Verify the located files of ``splits``; raise :class:`IntegrityError` if not."""

    @abc.abstractmethod
    def read(self, located: Located, split: str, opts: LoadOptions) -> ImageDataset:
        """Verify, then parse one split."""

    @abc.abstractmethod
    def download(self, root: Path, splits: Sequence[str], opts: LoadOptions) -> None:
        """Fetch what is missing or failing under ``root``; raise :class:`DownloadFailed`."""

    @abc.abstractmethod
    def missing_names(self, splits: Sequence[str]) -> set[str]:
        """File names whose presence elsewhere hints at a wrong layout."""

    def fix_hint(self, root: Path | None = None) -> str:
        where = (root / self.canonical_folder) if root is not None else f"<root>/{self.canonical_folder}"
        return (
            f"To fix: call load_dataset({self.name!r}, ..., download=True) to replace it with "
            f"a verified copy, or delete it and copy a good copy into {where}/."
        )


class FileSetSpec(DatasetSpec):
    """A dataset made of a fixed list of files per split, each with a checksum.

    Subclasses set ``layouts`` (folders under a root where the files may sit, the first
    is where downloads go) and implement :meth:`split_files` and :meth:`parse`.
    """

    layouts: tuple[str, ...] = ()

    @abc.abstractmethod
    def split_files(self, split: str) -> tuple[str, ...]:
        """Logical file names (checksum keys) needed for ``split``."""

    @abc.abstractmethod
    def parse(
        self, payloads: dict[str, bytes], paths: dict[str, Path], split: str, opts: LoadOptions
    ) -> ImageDataset:
        """Turn verified payloads into a dataset; raise :class:`IntegrityError` on bad content."""

    def candidates(self, logical: str) -> tuple[str, ...]:
        """File names that may hold ``logical`` on disk, preferred first."""
        return (logical,)

    def remote_name(self, logical: str) -> str:
        """Name of ``logical`` on a mirror (also the name a download is saved under)."""
        return self.candidates(logical)[0]

    @property
    def canonical_folder(self) -> str:  # type: ignore[override]
        return self.layouts[0]

    def relative_files(self) -> tuple[str, ...]:
        names = _unique(f for s in SPLITS for f in self.split_files(s))
        folder = self.layouts[0]
        return tuple(f"{folder}/{self.remote_name(n)}" if folder else self.remote_name(n) for n in names)

    def missing_names(self, splits: Sequence[str]) -> set[str]:
        return {c for s in splits for n in self.split_files(s) for c in self.candidates(n)}

    def _folders(self, roots: Sequence[Path]) -> list[Path]:
        return [root / layout if layout else root for root in roots for layout in self.layouts]

    def locate(self, roots: Sequence[Path], splits: Sequence[str], opts: LoadOptions) -> Located:
        names = _unique(f for s in splits for f in self.split_files(s))
        searched: list[Path] = []
        best: tuple[Path, dict[str, Path]] | None = None
        for folder in self._folders(roots):
            searched.append(folder)
            if not folder.is_dir():
                continue
            paths = {}
            for name in names:
                for candidate in self.candidates(name):
                    if (folder / candidate).is_file():
                        paths[name] = folder / candidate
                        break
            if len(paths) == len(names):
                return Located(folder, paths, searched, [])
            if paths and (best is None or len(paths) > len(best[1])):
                best = (folder, paths)
        folder, paths = best if best is not None else (None, {})
        missing = [self.remote_name(n) for n in names if n not in paths]
        return Located(folder, paths, searched, missing)

    def _verified(self, located: Located, names: Sequence[str], opts: LoadOptions) -> dict[str, bytes]:
        hint = self.fix_hint(_root_of(located.folder, self.layouts))
        return {n: read_verified(located.paths[n], opts.checksums[n], hint=hint) for n in names}

    def verify(self, located: Located, splits: Sequence[str], opts: LoadOptions) -> None:
        hint = self.fix_hint(_root_of(located.folder, self.layouts))
        for name in _unique(f for s in splits for f in self.split_files(s)):
            path = located.paths[name]
            verify_file(path, opts.checksums[name], hint=hint)

    def read(self, located: Located, split: str, opts: LoadOptions) -> ImageDataset:
        names = self.split_files(split)
        payloads = self._verified(located, names, opts)
        return self.parse(payloads, {n: located.paths[n] for n in names}, split, opts)

    def download(self, root: Path, splits: Sequence[str], opts: LoadOptions) -> None:
        folder = root / self.layouts[0] if self.layouts[0] else root
        failed: DownloadFailed | None = None
        hint = self.fix_hint(root)
        for name in _unique(f for s in splits for f in self.split_files(s)):
            checksum = opts.checksums[name]
            existing = next((folder / c for c in self.candidates(name) if (folder / c).is_file()), None)
            if existing is not None:
                try:
                    verify_file(existing, checksum, hint=hint)
                    continue
                except IntegrityError as err:
                    logger.warning("%s; fetching a fresh copy", str(err).splitlines()[0])
            remote = self.remote_name(name)
            compressed = remote.endswith(".gz")
            try:
                fetch_verified(
                    remote,
                    opts.mirrors,
                    folder / remote,
                    lambda p, cs=checksum, gz=compressed: verify_file(p, cs, hint=hint, compressed=gz),
                    retries=opts.retries,
                    timeout=opts.timeout,
                )
            except DownloadFailed as err:
                if failed is None:
                    failed = DownloadFailed([])
                failed.files.extend(err.files)
                failed.attempts.extend(err.attempts)
                failed.integrity.extend(err.integrity)
        if failed is not None:
            raise failed


def _unique(items: Any) -> list[str]:
    return list(dict.fromkeys(items))


def _root_of(folder: Path | None, layouts: Sequence[str]) -> Path | None:
    """The data root a located folder belongs to (undo the layout suffix)."""
    if folder is None:
        return None
    for layout in layouts:
        parts = Path(layout).parts if layout else ()
        if parts and folder.parts[-len(parts):] == parts:
            return Path(*folder.parts[: -len(parts)])
    return folder


# ------------------------------------------------------------------------ messages
def _split_words(splits: Sequence[str]) -> str:
    return f"split {splits[0]!r}" if len(splits) == 1 else "splits " + ", ".join(map(repr, splits))


def _not_found_message(
    spec: DatasetSpec,
    splits: Sequence[str],
    located: Located,
    roots: Sequence[Path],
    failure: DownloadFailed | None = None,
) -> str:
    missing = failure.files if failure is not None else located.missing
    lines = [
        f"{spec.title} ({_split_words(splits)}) is not available: missing "
        f"{', '.join(missing)}.",
        "Searched: " + ", ".join(str(p) for p in located.searched) + ".",
    ]
    if located.folder is not None and located.paths:
        lines.append(f"A partial copy is in {located.folder}.")
    stray = [p for p in find_stray(list(roots), spec.missing_names(splits))
             if located.folder is None or p.parent != located.folder]
    if stray:
        shown = ", ".join(str(p) for p in stray[:4]) + (" ..." if len(stray) > 4 else "")
        lines.append(
            f"Found similar files in the wrong place: {shown}; this loader expects them "
            f"in <root>/{spec.canonical_folder}/."
        )
    if failure is not None:
        lines.append("Download failed; mirrors tried:")
        lines.extend(f"  {a.url}: {a.error}" for a in failure.attempts)
    target = roots[0] / spec.canonical_folder if spec.canonical_folder else roots[0]
    fetch = (
        "check the network connection or pass mirrors=[...] with a reachable copy"
        if failure is not None
        else f"pass download=True (--download on the command line) to fetch them from {', '.join(spec.mirrors)}"
    )
    lines.append(
        f"To fix: {fetch}; or copy the files into {target}/; or set {ENV_VAR} to a folder "
        f"that holds {spec.canonical_folder or 'them'}/ (or pass root=...)."
    )
    return "\n".join(lines)


# ----------------------------------------------------------------------- public API
def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ConfigError(
            f"split must be one of {', '.join(SPLITS)}, got {split!r}; for a validation "
            "split use train_val_split(load_dataset(name, 'train'))"
        )
    return split


def list_datasets() -> list[str]:
    """Registry names of every built-in dataset, sorted (user datasets are named
    ``folder:PATH`` / ``npz:PATH``, see :func:`load_dataset`)."""
    return DATASETS.names()


def _spec(name: str) -> DatasetSpec:
    try:
        return DATASETS.get(name)
    except UnknownNameError as err:
        raise UnknownNameError(f"{err} For your own data use folder:PATH (an image folder) or npz:PATH "
                               "(array files).") from None


def dataset_info(name: str, root: str | Path | None = None, **options: Any) -> DatasetInfo:
    """Static facts about dataset ``name`` (no files needed for a built-in dataset; a
    ``folder:``/``npz:`` dataset is loaded, from its cache when it has one).

    Raises:
        UnknownNameError: ``name`` is not registered; the message lists valid names.
    """
    if is_user_dataset(name):
        ds = load_user_dataset(name, "train", root, **options)
        return DatasetInfo(name=ds.name, num_classes=ds.num_classes, image_shape=ds.image_shape,
                           classes=ds.classes, mean=ds.mean, std=ds.std, files=(), title=ds.name)
    return _spec(name).info()


def locate_dataset(
    name: str, root: str | Path | None = None, *, split: str | None = None, **options: Any
) -> DatasetStatus:
    """Find a dataset's files and verify them, without loading.

    Args:
        name: registry name (case-insensitive).
        root: data folder; default per :func:`resolve_roots`.
        split: check one split only; by default all splits must be present.
        **options: as for :func:`load_dataset` (e.g. ``checksums=`` for fixtures).

    Returns:
        A :class:`DatasetStatus`; never raises for missing or corrupt files. For a
        ``folder:``/``npz:`` dataset only the layout is looked at (no file is read).
    """
    if is_user_dataset(name):
        canonical, path, problem = locate_user_dataset(name, root)
        return DatasetStatus(canonical, problem is None, path, [path], problem)
    spec = _spec(name)
    splits = SPLITS if split is None else (_check_split(split),)
    opts = spec.options(options)
    roots = resolve_roots(root, spec.name)
    located = spec.locate(roots, splits, opts)
    if not located.complete:
        problem = f"missing {', '.join(located.missing)}"
        if located.folder is not None:
            problem += f" (partial copy in {located.folder})"
        return DatasetStatus(spec.name, False, located.folder, located.searched, problem)
    try:
        spec.verify(located, splits, opts)
    except IntegrityError as err:
        return DatasetStatus(spec.name, False, located.folder, located.searched, str(err).splitlines()[0])
    return DatasetStatus(spec.name, True, located.folder, located.searched, None)


def load_dataset(
    name: str,
    split: str = "train",
    root: str | Path | None = None,
    download: bool = False,
    **options: Any,
) -> ImageDataset:
    """Load one split of a dataset as ``uint8`` images ``(N, C, H, W)`` and ``int64`` labels.

    Files are searched in the folders of :func:`resolve_roots` (``root``, else
    ``$MEMDISTILL_DATA``, else ``./data``) in the torchvision layout, and every file is
    verified against its declared checksum before it is parsed.

    User data is named ``folder:PATH`` (an image folder, :mod:`memdistill.data.folder`)
    or ``npz:PATH`` (array files, :mod:`memdistill.data.arrays`), with options after
    ``?`` or as keywords (``size=``, ``channels=``, ``test_fraction=``, ``split_seed=``).
    On first use a manifest of its files is written; later loads verify the files
    against it, and decoded images are cached.

    Args:
        name: ``"mnist"``, ``"fashion-mnist"``, ``"cifar10"``, ``"cifar100"``, ``"svhn"``
            or ``"tiny-imagenet"`` (case-insensitive; see :func:`list_datasets`), or
            ``"folder:PATH"`` / ``"npz:PATH"``.
        split: ``"train"`` or ``"test"`` (Tiny ImageNet's ``"test"`` is its labelled val
            folder).
        root: data folder (downloads go to ``root``, or the first searched folder).
        download: fetch missing or failing files from the mirrors (verified, idempotent).
        **options: ``checksums=`` (override declared checksums, for fixtures),
            ``mirrors=``, ``retries=``, ``timeout=``; per dataset: ``labels="fine"|"coarse"``
            (CIFAR-100), ``expected_classes=``/``expected_per_class=`` (Tiny ImageNet);
            user data: ``skip_bad_images=``, ``rebuild_manifest=``, ``progress=``,
            ``cache_dir=`` and the name's options. ``split="val"`` exists for user data
            with its own ``val`` split.

    Raises:
        UnknownNameError: unknown dataset name.
        ConfigError: bad split or option.
        DataNotFoundError: files missing (and not downloadable); the message names them,
            the folders searched, the mirrors tried and how to supply them.
        IntegrityError: a file failed its checksum or is malformed; names the file; for
            user data also: a file changed since the manifest was written.
        DataError: user data laid out wrongly (one line naming the folder or array).
    """
    if is_user_dataset(name):
        return load_user_dataset(name, split, root, **options)
    spec = _spec(name)
    split = _check_split(split)
    opts = spec.options(options)
    roots = resolve_roots(root, spec.name)
    located = spec.locate(roots, (split,), opts)
    if located.complete:
        try:
            return spec.read(located, split, opts)
        except IntegrityError as err:
            if not download:
                raise
            logger.warning("%s; downloading a fresh copy", str(err).splitlines()[0])
    elif not download:
        raise DataNotFoundError(_not_found_message(spec, (split,), located, roots))
    try:
        spec.download(roots[0], (split,), opts)
    except DownloadFailed as failure:
        message = _not_found_message(spec, (split,), located, roots, failure)
        if failure.integrity:
            # A mirror answered but served data that failed verification: say so first.
            first = str(failure.integrity[0]).splitlines()[0]
            raise IntegrityError(f"downloaded file failed verification: {first}\n{message}") from None
        raise DataNotFoundError(message) from None
    located = spec.locate([roots[0]], (split,), opts)
    if not located.complete:  # pragma: no cover - download() guarantees the files
        raise DataNotFoundError(_not_found_message(spec, (split,), located, roots))
    return spec.read(located, split, opts)

