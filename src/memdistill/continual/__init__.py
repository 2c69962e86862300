"""Continual (class-incremental) learning with distilled memories as the replay store.

>>> from memdistill.continual import create_benchmark, run_comparison, StrategyOptions
>>> bench = create_benchmark("split-mnist", root="/data")
>>> results = run_comparison(bench, ["memories", "random", "finetune"], StrategyOptions(budget_ipc=1))

Benchmarks (:func:`list_benchmarks`) are fixed, seeded task sequences whose task stream
revokes a task's real data once the next task starts; strategies
(:func:`list_strategies`) decide what is kept under the storage budget; the learner
trains a classifier after every task and reports accuracy on all classes seen so far.
"""

from ._learner import (
    ContinualResult,
    LearnerConfig,
    format_table,
    plot_results,
    plot_storage,
    run_comparison,
    run_continual,
    save_results,
)
from .benchmarks import (
    BENCHMARKS,
    MANY_DATASETS,
    Benchmark,
    Task,
    TaskStream,
    create_benchmark,
    list_benchmarks,
    many_benchmark,
    parse_benchmark,
    split_benchmark,
)
from .strategies import (
    ALL_STRATEGIES,
    BUDGET_MODES,
    STRATEGIES,
    Strategy,
    StrategyOptions,
    auto_num_bases,
    create_strategy,
    list_strategies,
)
from .shared import SharedStrategy, save_shared_memory, shared_sizes  # registers "shared"

__all__ = [
    "ALL_STRATEGIES",
    "BENCHMARKS",
    "BUDGET_MODES",
    "MANY_DATASETS",
    "STRATEGIES",
    "Benchmark",
    "ContinualResult",
    "LearnerConfig",
    "SharedStrategy",
    "Strategy",
    "StrategyOptions",
    "Task",
    "TaskStream",
    "auto_num_bases",
    "create_benchmark",
    "create_strategy",
    "format_table",
    "list_benchmarks",
    "list_strategies",
    "many_benchmark",
    "parse_benchmark",
    "plot_results",
    "plot_storage",
    "run_comparison",
    "run_continual",
    "save_results",
    "save_shared_memory",
    "shared_sizes",
    "split_benchmark",
]
