"""The task suite: stochastic tasks (a question with a finite answer set, asked in many
phrasings) and the built-in task files beside this module (`*.toml` for the default suite
"all", `large/*.toml` for the group "large").

`answerdist.engine.tasks.task` holds `Task`, `Answer`, `Prompt` and their checks;
`answerdist.engine.tasks.loader` reads task files, the built-in groups and `--tasks` specs. The file
format, placeholders, modes and validation rules are in docs/tasks.md.
"""

from answerdist.engine.tasks.loader import (
    TASK_GROUPS,
    builtin_task_names,
    format_task_list,
    load_task_file,
    load_tasks,
    parse_tasks,
    task_groups,
)
from answerdist.engine.tasks.task import (
    DEFAULT_BASE_FORMAT,
    END_RULES,
    NORMALIZERS,
    Answer,
    Prompt,
    Task,
    check_variants_tokenize,
    normalize_reply,
)

__all__ = [
    "DEFAULT_BASE_FORMAT",
    "END_RULES",
    "NORMALIZERS",
    "Answer",
    "Prompt",
    "TASK_GROUPS",
    "Task",
    "builtin_task_names",
    "check_variants_tokenize",
    "normalize_reply",
    "format_task_list",
    "load_task_file",
    "load_tasks",
    "parse_tasks",
    "task_groups",
]
