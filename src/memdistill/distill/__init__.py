"""Distillation: the outer loop that learns a memory from a real training split.

Each outer iteration: a freshly initialised network is trained for ``T`` inner steps on
examples recalled from the memory (:mod:`memdistill.engine`), its loss on a batch of
real images is differentiated with respect to the memory, and the memory takes one
optimiser step.

All randomness of iteration ``i`` comes from the stream ``(seed, i)`` (and
``(seed, i, j)`` for its inner unroll ``j > 0`` when ``outer.meta_batch > 1``), so a run
resumed from a checkpoint continues exactly as the uninterrupted run would, with any
number of processes (see :mod:`memdistill.distributed`).

Modules: :mod:`.loop` (the outer loop, :class:`Distiller`), :mod:`.step` (the meta
step and the meta batch), :mod:`.checkpoint` (checkpoints and metrics files),
:mod:`.streams` (random streams).
"""

from .checkpoint import check_resume
from .loop import DistillResult, Distiller, RunState, starting_point
from .step import StepResult
from .streams import iteration_generator, sample_generator, stream

__all__ = ["Distiller", "DistillResult", "RunState", "StepResult", "check_resume", "iteration_generator",
           "sample_generator", "starting_point", "stream"]
