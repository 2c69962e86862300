"""Memory types (a registry), the equal-storage budget, and recall."""

from ._base import MEMORIES, Memory, MemoryReport, solve_slots, stored_float_budget
from .file import MemoryFile, load_memory, save_memory
from .types import BasesMemory, ImagesMemory, create_memory, list_memories, principal_bases, solve_addressing

__all__ = [
    "MEMORIES",
    "Memory",
    "MemoryReport",
    "MemoryFile",
    "load_memory",
    "save_memory",
    "BasesMemory",
    "ImagesMemory",
    "create_memory",
    "list_memories",
    "principal_bases",
    "solve_addressing",
    "solve_slots",
    "stored_float_budget",
]
