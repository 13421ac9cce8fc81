"""Message models: the public names of SPEC §7 plus the internal actor protocol."""

from task_ingress.messages.audit import AuditRecord
from task_ingress.messages.outcomes import Outcome, Run, Task
from task_ingress.messages.peers import PeerCard
from task_ingress.messages.reasons import Action, Reason
from task_ingress.messages.requests import (
           CancelTask,
           CreateTask,
           EnqueueRun,
           IngressContext,
           UpdateTask,
)

__all__ = ["Action", "AuditRecord", "CancelTask", "CreateTask", "EnqueueRun", "IngressContext",
           "Outcome", "PeerCard", "Reason", "Run", "Task", "UpdateTask"]
