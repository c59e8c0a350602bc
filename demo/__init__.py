"""The embedded offline demo: built-in tasks whose production logs it generates, and the run behind ``flywheel demo``.

Each built-in task is a ``demo.logs.DemoTask``; ``TASKS`` maps its name to it. Production code never imports this
package: the pipeline sees only the logs.
"""
from __future__ import annotations

from demo.it_helpdesk import ItHelpdesk
from demo.logs import DemoTask
from demo.support_triage import SupportTriage

TASKS: dict[str, DemoTask] = {task.NAME: task for task in (SupportTriage(), ItHelpdesk())}


def get_task(name: str) -> DemoTask:
    """The built-in task called ``name``; the error names the known tasks."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown demo task {name!r}; known: {', '.join(sorted(TASKS))}") from None
